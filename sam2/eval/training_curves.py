"""Learning curves read back from a run's TensorBoard logs: train loss per epoch and per logged step,
val J&F per epoch.

The trainer writes `train_epoch/<loss>` (mean over the epoch) and `val/J&F` (in percent) with the epoch
as step, and `train/<loss>` every logging period with the optimizer step; the report plots them and the
registry logs them as MLflow metrics with the same steps.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

TRAIN_LOSS_TAG = "train_epoch/core_loss"
VAL_JF_TAG = "val/J&F"
TRAIN_STEP_LOSS_TAG = "train/core_loss"
CURVE_TAGS = {"train_loss": TRAIN_LOSS_TAG, "train_loss_per_step": TRAIN_STEP_LOSS_TAG, "val_J&F": VAL_JF_TAG}

Curves = dict[str, list[tuple[int, float]]]


def read_training_curves(log_dir: str | os.PathLike) -> Curves:
    """{"train_loss": [(epoch, loss)], "train_loss_per_step": [(step, loss)], "val_J&F": [(epoch, J&F)]}
    from every event file under `log_dir`.

    A curve the logs do not hold is an empty list; a step logged twice (a resumed run) keeps the value
    written last. A missing folder gives empty curves (the run logged nothing), with a warning.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    root = Path(log_dir)
    values: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in CURVE_TAGS}
    files = (
        sorted(p for p in root.rglob("*") if p.is_file() and "tfevents" in p.name) if root.is_dir() else []
    )
    if not files:
        logger.warning("no TensorBoard event files under %s: the report has no training curves", root)
    wanted = {tag: name for name, tag in CURVE_TAGS.items()}
    for path in files:
        for event in EventFileLoader(str(path)).Load():
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                name = wanted.get(value.tag)
                if name is None:
                    continue
                number = _scalar(value)
                if number is None:
                    continue
                previous = values[name].get(event.step)
                if previous is None or event.wall_time >= previous[0]:
                    values[name][event.step] = (event.wall_time, number)
    return {name: [(step, v) for step, (_, v) in sorted(points.items())] for name, points in values.items()}


def _scalar(value) -> float | None:
    """The number in a summary value: `simple_value` (old writers) or a scalar tensor (torch's writer)."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor"):
        from tensorboard.util import tensor_util

        array = tensor_util.make_ndarray(value.tensor)
        if array.size == 1:
            return float(array.reshape(()))
    return None
