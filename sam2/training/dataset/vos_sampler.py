"""Samplers: which frames of a video form a clip, and which objects are tracked through it."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sam2.training.dataset.errors import DatasetError, SamplingError
from sam2.training.dataset.vos_raw_dataset import VOSFrame, VOSVideo
from sam2.training.dataset.vos_segment_loader import LazySegments

# Clip starts tried per video before giving up on finding an object in the clip's first frame.
MAX_START_TRIES = 100


@dataclass
class SampledFramesAndObjects:
    frames: list[VOSFrame]
    object_ids: list[int]


class VOSSampler:
    def __init__(self, sort_frames: bool = True):
        # EvalSampler: list frames by frame id (True) or in the raw data set's order (False).
        self.sort_frames = sort_frames

    def sample(self, video: VOSVideo, segment_loader, epoch: int | None = None) -> SampledFramesAndObjects:
        raise NotImplementedError


def short_clip_message(video_name: str, num_available: int, num_frames: int) -> str:
    return (
        f"video {video_name!r} has {num_available} usable frame(s) but the sampler needs num_frames="
        f"{num_frames} (scratch.num_frames); drop the video (list it in excluded_videos_list_txt, or let "
        "`python -m sam2.tools.validate_dataset` exclude it) or lower scratch.num_frames"
    )


def visible_object_ids(segment_loader, frame_idx: int) -> list[int]:
    """Objects with a non-empty mask on the frame."""
    segments = segment_loader.load(frame_idx)
    if isinstance(segments, LazySegments):
        # SA-1B keeps only masks of positive area, so every listed object is visible.
        return list(segments.keys())
    return [obj_id for obj_id, seg in segments.items() if seg is not None and bool(seg.any())]


class RandomUniformSampler(VOSSampler):
    """A random window of `num_frames` consecutive (listed) frames, time-reversed with
    `reverse_time_prob`, and up to `max_num_objects` objects drawn among those visible in its first frame.
    """

    def __init__(self, num_frames: int, max_num_objects: int, reverse_time_prob: float = 0.0):
        super().__init__()
        if num_frames < 1 or max_num_objects < 1:
            raise DatasetError(
                f"RandomUniformSampler needs num_frames >= 1 and max_num_objects >= 1, got "
                f"{num_frames} and {max_num_objects}"
            )
        if not 0.0 <= reverse_time_prob <= 1.0:
            raise DatasetError(f"reverse_time_prob must lie in [0, 1], got {reverse_time_prob}")
        self.num_frames = num_frames
        self.max_num_objects = max_num_objects
        self.reverse_time_prob = reverse_time_prob

    def sample(self, video: VOSVideo, segment_loader, epoch: int | None = None) -> SampledFramesAndObjects:
        """Raises DatasetError for a clip shorter than num_frames, SamplingError when no tried window
        shows an object in its first frame."""
        num_starts = len(video.frames) - self.num_frames + 1
        if num_starts < 1:
            raise DatasetError(short_clip_message(video.video_name, len(video.frames), self.num_frames))
        starts = list(range(num_starts))
        random.shuffle(starts)
        for start in starts[:MAX_START_TRIES]:
            frames = video.frames[start : start + self.num_frames]
            if random.random() < self.reverse_time_prob:
                frames = frames[::-1]
            visible = visible_object_ids(segment_loader, frames[0].frame_idx)
            if visible:
                chosen = random.sample(visible, min(len(visible), self.max_num_objects))
                return SampledFramesAndObjects(frames=list(frames), object_ids=chosen)
        raise SamplingError(
            f"video {video.video_name!r}: no object is visible in the first frame of "
            f"{min(num_starts, MAX_START_TRIES)} sampled clip(s) of {self.num_frames} frames"
        )


class EvalSampler(VOSSampler):
    """Every frame and every object of the first frame: the whole video, as evaluation sees it."""

    def sample(self, video: VOSVideo, segment_loader, epoch: int | None = None) -> SampledFramesAndObjects:
        frames = sorted(video.frames, key=lambda f: f.frame_idx) if self.sort_frames else list(video.frames)
        if not frames:
            raise DatasetError(f"video {video.video_name!r} lists no frames")
        object_ids = sorted(segment_loader.load(frames[0].frame_idx).keys())
        if not object_ids:
            raise DatasetError(
                f"video {video.video_name!r}: the first frame (id {frames[0].frame_idx}) holds no object; "
                "evaluation prompts with first-frame masks, so annotate it or exclude the video"
            )
        return SampledFramesAndObjects(frames=frames, object_ids=object_ids)
