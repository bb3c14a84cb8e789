"""Training logs: a log file per rank and TensorBoard scalars from rank 0.

Only messages go to the files; the environment is never written (it holds credentials).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s rank%(rank)s %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def add_rank_log_file(log_dir: str | os.PathLike, rank: int) -> logging.Handler:
    """Send INFO+ records of every logger to `log_dir/log_rank<rank>.txt`; returns the handler so the
    caller can remove it (`logging.getLogger().removeHandler(h); h.close()`)."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(log_dir) / f"log_rank{rank}.txt", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.addFilter(_RankFilter(rank))
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def make_tensorboard_logger(log_dir: str, flush_secs: int = 120, should_log: bool = True):
    """A TensorBoard SummaryWriter, or None when `should_log` is False (non-zero ranks never write)."""
    if not should_log:
        return None
    from torch.utils.tensorboard import SummaryWriter

    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=log_dir, flush_secs=flush_secs)
