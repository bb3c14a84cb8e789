"""SHA-256 of a file, read in chunks: the one checksum data manifests, object storage, inference markers
and staged sources agree on."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

CHUNK_BYTES = 1 << 20
"""Bytes read at a time: large files are never held in memory whole."""


def sha256_of_file(path: str | os.PathLike, on_chunk: Callable[[int], object] | None = None) -> str:
    """Hex SHA-256 of the bytes of ``path``; ``on_chunk(n)`` is called after each chunk of ``n`` bytes
    (a progress bar's ``update``). Raises ``OSError`` when the file cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return digest.hexdigest()
