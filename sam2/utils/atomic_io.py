"""Atomic file writes: other processes see the old file or the whole new one, never half of it.

The data goes to a temporary name in the destination folder (so the final rename stays on one file
system) and is renamed over the destination with ``os.replace`` only after it is complete. If writing
fails, the temporary file is removed and the destination is left as it was. Like ``tempfile.mkstemp``,
the new file is readable by its owner only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal


@contextmanager
def atomic_path(path: str | os.PathLike, temp_suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` whose file replaces ``path`` when the block ends without an
    exception; for writers that want a file name rather than a stream (a compiler's output path).

    Parent folders are created. An exception raised in the block removes the temporary file and leaves
    ``path`` untouched. ``temp_suffix`` ends the temporary name (``.part`` for downloads, so they are told
    apart from other temporaries; a writer that picks its format from the extension needs that one).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=temp_suffix, dir=target.parent)
    os.close(handle)
    try:
        yield Path(temp_name)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(
    path: str | os.PathLike, mode: Literal["w", "wb"] = "wb", temp_suffix: str = ".tmp"
) -> Iterator[IO[Any]]:
    """Open a stream whose content replaces ``path`` when the block ends without an exception.

    Same guarantees as :func:`atomic_path`: parent folders are created, and an exception raised in the
    block (a failed check included) removes the temporary file and leaves ``path`` untouched.
    """
    with atomic_path(path, temp_suffix) as temp, open(temp, mode) as stream:
        yield stream


def atomic_write_bytes(path: str | os.PathLike, data: bytes, temp_suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", temp_suffix) as stream:
        stream.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, in the default text encoding (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as stream:
        stream.write(text)
