"""Typed training samples and the batch the model consumes.

A data set yields one `VideoDatapoint` per clip (PIL images or tensors, per-object uint8 masks);
`collate_fn` stacks several of them into a `BatchedVideoDatapoint` laid out time-first, the order in which
SAM 2 training steps through frames. Plain dataclasses stand in for upstream's tensordict tensorclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image as PILImage


@dataclass
class Object:
    """One object's mask on one frame; `frame_index` is the frame id in the source video."""

    object_id: int
    frame_index: int
    segment: torch.Tensor | None  # uint8 [H, W] through the transforms; None when absent


@dataclass
class Frame:
    data: PILImage.Image | torch.Tensor
    objects: list[Object]


@dataclass
class VideoDatapoint:
    """A sampled clip (or an image seen as a one-frame clip) with its objects; `size` is the original (H, W)."""

    frames: list[Frame]
    video_id: int
    size: tuple[int, int]


def _move(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _move(getattr(value, f.name), fn) for f in dataclasses.fields(value)}
        )
    return value


@dataclass
class BatchedVideoMetaData:
    """Per-object bookkeeping of a batch.

    unique_objects_identifier: int64 [T, O, 3] holding (video_id, object_id, frame_id) of each object.
    frame_orig_size: int64 [T, O, 2] holding the original (H, W) of the frame each object lives on.
    """

    unique_objects_identifier: torch.Tensor
    frame_orig_size: torch.Tensor

    def to(self, *args, **kwargs) -> BatchedVideoMetaData:
        return _move(self, lambda t: t.to(*args, **kwargs))

    def pin_memory(self) -> BatchedVideoMetaData:
        return _move(self, torch.Tensor.pin_memory)


@dataclass
class BatchedVideoDatapoint:
    """A batch of B clips of T frames with O objects in all (objects of every clip, concatenated).

    img_batch: float32 [T, B, C, H, W] normalised frames.
    obj_to_frame_idx: int32 [T, O, 2] holding (frame index t, video index b) of each object's image.
    masks: bool [T, O, H, W] ground-truth masks.
    metadata: see `BatchedVideoMetaData`.
    dict_key: name of the data set (or mix) the batch came from, used to route losses and logs.
    """

    img_batch: torch.Tensor
    obj_to_frame_idx: torch.Tensor
    masks: torch.Tensor
    metadata: BatchedVideoMetaData
    dict_key: str

    @property
    def batch_size(self) -> torch.Size:
        """Leading (time) dimension, as tensorclass' `batch_size` is upstream."""
        return self.img_batch.shape[:1]

    @property
    def num_frames(self) -> int:
        return self.img_batch.shape[0]

    @property
    def num_videos(self) -> int:
        return self.img_batch.shape[1]

    @property
    def flat_obj_to_img_idx(self) -> torch.Tensor:
        """int [T, O]: index of each object's image in `flat_img_batch` (video-major order)."""
        frame_idx, video_idx = self.obj_to_frame_idx.unbind(dim=-1)
        return video_idx * self.num_frames + frame_idx

    @property
    def flat_img_batch(self) -> torch.Tensor:
        """float [B*T, C, H, W]: all frames of video 0, then all frames of video 1, ..."""
        return self.img_batch.transpose(0, 1).flatten(0, 1)

    def to(self, *args, **kwargs) -> BatchedVideoDatapoint:
        """A copy with every tensor moved/cast by `Tensor.to(*args, **kwargs)` (e.g. device, non_blocking)."""
        return _move(self, lambda t: t.to(*args, **kwargs))

    def pin_memory(self) -> BatchedVideoDatapoint:
        """A copy in page-locked memory; DataLoader(pin_memory=True) calls this on each batch."""
        return _move(self, torch.Tensor.pin_memory)


def collate_fn(batch: Sequence[VideoDatapoint], dict_key: str) -> BatchedVideoDatapoint:
    """Stack transformed clips (tensor frames of one size, same frame count) into a time-first batch.

    Raises ValueError when clips differ in frame count or a clip's frames hold different numbers of
    objects (keep `always_target=True` in VOSDataset so every sampled object has a mask on every frame).
    """
    if not batch:
        raise ValueError("collate_fn got an empty batch")
    num_frames = len(batch[0].frames)
    for video in batch:
        if len(video.frames) != num_frames:
            raise ValueError(
                f"cannot batch clips of {num_frames} and {len(video.frames)} frames (video_id "
                f"{video.video_id}); every data set in one batch must sample the same number of frames"
            )
        if not all(isinstance(frame.data, torch.Tensor) for frame in video.frames):
            raise ValueError(
                f"video_id {video.video_id}: frames are still images, not tensors; end the transforms "
                "with ToTensorAPI (and NormalizeAPI)"
            )
    img_batch = torch.stack([torch.stack([f.data for f in video.frames]) for video in batch], dim=1)

    masks: list[list[torch.Tensor]] = [[] for _ in range(num_frames)]
    where: list[list[tuple[int, int]]] = [[] for _ in range(num_frames)]
    identifiers: list[list[tuple[int, int, int]]] = [[] for _ in range(num_frames)]
    orig_sizes: list[list[tuple[int, int]]] = [[] for _ in range(num_frames)]
    for b, video in enumerate(batch):
        counts = {len(frame.objects) for frame in video.frames}
        if len(counts) != 1:
            raise ValueError(
                f"video_id {video.video_id}: frames hold different numbers of objects {sorted(counts)}; "
                "set always_target=True in VOSDataset so each sampled object has a (possibly empty) mask"
            )
        for t, frame in enumerate(video.frames):
            for obj in frame.objects:
                if obj.segment is None:
                    raise ValueError(
                        f"video_id {video.video_id}, object {obj.object_id}, frame {obj.frame_index}: no mask"
                    )
                masks[t].append(obj.segment.to(torch.bool))
                where[t].append((t, b))
                identifiers[t].append((video.video_id, obj.object_id, obj.frame_index))
                orig_sizes[t].append(tuple(video.size))

    if not masks[0]:
        raise ValueError("collate_fn: the batch holds no objects; every clip needs at least one")
    return BatchedVideoDatapoint(
        img_batch=img_batch,
        obj_to_frame_idx=torch.tensor(where, dtype=torch.int32),
        masks=torch.stack([torch.stack(step) for step in masks]),
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.tensor(identifiers, dtype=torch.long),
            frame_orig_size=torch.tensor(orig_sizes, dtype=torch.long),
        ),
        dict_key=dict_key,
    )
