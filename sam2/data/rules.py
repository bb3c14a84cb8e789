"""Rules a video must meet for the training data set to draw clips from it, shared by validation and the
training segment loaders so that what validation passes, training accepts.

With palette PNG annotations (DAVIS/MOSE) the training data set reads the mask of every frame a clip
draws (``target_segments_available=True``, the default), and a clip may start at any frame: so every
frame needs its mask, not only the first.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable


def frames_without_masks(frame_ids: Iterable[int], mask_frame_ids: Collection[int]) -> list[int]:
    """Frame ids a training clip can draw that have no mask, in order."""
    return [frame_id for frame_id in frame_ids if frame_id not in mask_frame_ids]


def missing_masks_problem(missing: list[int], limit: int = 5) -> str:
    """The one-line problem for frames without a mask, naming the first few."""
    shown = ", ".join(f"{frame_id:05d}.png" for frame_id in missing[:limit])
    more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
    return (
        f"{len(missing)} frame(s) have no mask ({shown}{more}); the training data set reads the mask of every "
        "frame a clip draws: annotate them, or exclude the video"
    )
