"""An exclusive ``flock`` on a file, waited for up to a timeout: how processes on one machine (or one
shared volume) take turns at a critical section such as staging a data set or promoting a model."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class FileLockTimeout(TimeoutError):
    """Another process held the lock for longer than the caller was willing to wait."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__(f"lock {path} held by another process for more than {timeout_s}s")
        self.path = path
        self.timeout_s = timeout_s


@contextmanager
def exclusive_file_lock(
    path: str | os.PathLike,
    timeout_s: float,
    poll_s: float = 0.05,
    timeout_error: Callable[[Path, float], Exception] = FileLockTimeout,
) -> Iterator[float]:
    """Hold an exclusive ``flock`` on ``path`` (created with its parent folders) for the block; yields the
    seconds waited for it. Polls every ``poll_s`` seconds; once more than ``timeout_s`` seconds have
    passed without getting it, raises ``timeout_error(path, timeout_s)`` (:class:`FileLockTimeout` unless
    the caller names its own error, whose message says what to do). The lock goes with the process, so a
    killed holder never leaves it taken."""
    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(lock_path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - start > timeout_s:
                    raise timeout_error(lock_path, timeout_s) from None
                time.sleep(poll_s)
        try:
            yield time.monotonic() - start
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
