"""Joint image/mask transforms: geometry moves frame and masks together, per clip or per frame."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from sam2.training.dataset import transforms as T
from sam2.training.utils.data_utils import Frame, Object, VideoDatapoint

H, W = 48, 64
RED = (230, 30, 30)


def make_clip(num_frames: int = 3, box=(6, 20, 8, 30), moving: bool = False) -> VideoDatapoint:
    """Frames with a red box (y0, y1, x0, x1) on grey, off-centre so flips and moves are visible."""
    frames = []
    for t in range(num_frames):
        y0, y1, x0, x1 = box
        shift = t if moving else 0
        image = np.full((H, W, 3), 90, np.uint8)
        image[y0:y1, x0 + shift : x1 + shift] = RED
        mask = torch.zeros(H, W, dtype=torch.uint8)
        mask[y0:y1, x0 + shift : x1 + shift] = 1
        frames.append(Frame(data=Image.fromarray(image), objects=[Object(1, t, mask)]))
    return VideoDatapoint(frames=frames, video_id=0, size=(H, W))


def as_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1) if isinstance(image, Image.Image) else image


def red_region(image) -> torch.Tensor:
    img = as_tensor(image).int()
    return (img[0] > 160) & (img[1] < 100) & (img[2] < 100)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a & b).sum() / (a | b).sum().clamp(min=1)).item()


def assert_aligned(datapoint: VideoDatapoint, min_iou: float = 0.8) -> None:
    for frame in datapoint.frames:
        mask = frame.objects[0].segment
        assert mask.dtype == torch.uint8 and set(mask.unique().tolist()) <= {0, 1}
        assert tuple(mask.shape) == tuple(as_tensor(frame.data).shape[-2:])
        assert iou(mask.bool(), red_region(frame.data)) >= min_iou


def frames_equal(datapoint: VideoDatapoint) -> bool:
    first = datapoint.frames[0]
    return all(
        torch.equal(as_tensor(f.data), as_tensor(first.data))
        and torch.equal(f.objects[0].segment, first.objects[0].segment)
        for f in datapoint.frames[1:]
    )


def test_flip_moves_image_and_mask_together():
    random.seed(0)
    clip = make_clip(moving=True)
    originals = [f.objects[0].segment.clone() for f in clip.frames]
    T.RandomHorizontalFlip(consistent_transform=True, p=1.0)(clip)
    for frame, original in zip(clip.frames, originals, strict=True):
        assert torch.equal(frame.objects[0].segment, original.flip(-1))
    assert_aligned(clip, min_iou=1.0)


@pytest.mark.parametrize("consistent", [True, False])
def test_flip_consistency_across_the_clip(consistent):
    random.seed(1)
    mixed_clips = 0
    for _ in range(30):
        clip = make_clip(num_frames=6)
        T.RandomHorizontalFlip(consistent_transform=consistent, p=0.5)(clip)
        assert_aligned(clip, min_iou=1.0)
        flipped = {bool(f.objects[0].segment[:, W - 25].any()) for f in clip.frames}
        mixed_clips += len(flipped) > 1
    assert (mixed_clips == 0) if consistent else (mixed_clips > 10)


def test_affine_consistent_applies_one_motion_to_every_frame():
    random.seed(2)
    clip = make_clip(num_frames=3)
    original_mask = clip.frames[0].objects[0].segment.clone()
    T.RandomAffine(degrees=30, shear=15, consistent_transform=True, image_interpolation="bilinear")(clip)
    assert frames_equal(clip)  # identical inputs, one shared motion
    assert not torch.equal(clip.frames[0].objects[0].segment, original_mask)
    assert_aligned(clip, min_iou=0.75)


def test_affine_per_frame_draws_differ():
    random.seed(3)
    clip = make_clip(num_frames=3)
    T.RandomAffine(degrees=30, consistent_transform=False, translate=[0.1, 0.1], scale=[0.8, 1.2])(clip)
    assert not frames_equal(clip)
    assert_aligned(clip, min_iou=0.75)


def test_affine_leaves_clip_untouched_when_first_frame_object_vanishes():
    clip = make_clip(box=(0, 3, 0, 3))  # a tiny object in the corner
    before = [np.array(f.data).copy() for f in clip.frames]
    out = T.RandomAffine(degrees=0, consistent_transform=True, scale=[0.01, 0.01], num_tentatives=2)(clip)
    assert out is clip
    for frame, image in zip(clip.frames, before, strict=True):
        assert np.array_equal(np.array(frame.data), image)
        assert frame.objects[0].segment.sum() == 9


def test_resize_square_and_shorter_side():
    clip = make_clip()
    T.RandomResizeAPI(sizes=32, square=True, consistent_transform=True)(clip)
    for frame in clip.frames:
        assert frame.data.size == (32, 32)
    assert_aligned(clip, min_iou=0.85)

    clip = make_clip()
    T.RandomResizeAPI(sizes=[24], consistent_transform=True)(clip)
    assert all(f.data.size == (32, 24) for f in clip.frames)  # (W, H), aspect kept
    clip = make_clip()
    T.RandomResizeAPI(sizes=[40], consistent_transform=True, max_size=48)(clip)
    assert all(f.data.size == (48, 36) for f in clip.frames)  # longer side capped
    assert_aligned(clip, min_iou=0.85)


def test_resize_per_frame_sizes_can_differ():
    random.seed(4)
    clip = make_clip(num_frames=8)
    T.RandomResizeAPI(sizes=[16, 32], square=True, consistent_transform=False)(clip)
    assert {f.data.size for f in clip.frames} == {(16, 16), (32, 32)}
    assert_aligned(clip, min_iou=0.7)


@pytest.mark.parametrize("consistent", [True, False])
def test_color_jitter_changes_only_the_image(consistent):
    random.seed(5)
    clip = make_clip(num_frames=4)
    image_before = np.array(clip.frames[0].data).copy()
    masks_before = [f.objects[0].segment.clone() for f in clip.frames]
    T.ColorJitter(consistent_transform=consistent, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1)(
        clip
    )
    assert not np.array_equal(np.array(clip.frames[0].data), image_before)
    assert all(torch.equal(f.objects[0].segment, m) for f, m in zip(clip.frames, masks_before, strict=True))
    assert frames_equal(clip) is consistent


def test_grayscale_and_to_tensor_normalize():
    clip = make_clip(num_frames=2)
    T.RandomGrayscale(consistent_transform=True, p=1.0)(clip)
    pixels = as_tensor(clip.frames[0].data)
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])
    T.ComposeAPI([T.ToTensorAPI(), T.NormalizeAPI(mean=[0.5] * 3, std=[0.25] * 3)])(clip)
    data = clip.frames[0].data
    assert data.dtype == torch.float32 and data.shape == (3, H, W)
    assert torch.allclose(data[0, 0, 0], torch.tensor((90 / 255 - 0.5) / 0.25), atol=1e-2)


def test_normalize_before_to_tensor_is_a_clear_error():
    with pytest.raises(TypeError, match="put ToTensorAPI before it"):
        T.NormalizeAPI(mean=[0.5] * 3, std=[0.5] * 3)(make_clip())


@pytest.mark.parametrize("use_random_hflip", [False, True])
def test_mosaic_tiles_image_and_keeps_mask_in_one_cell(use_random_hflip):
    random.seed(6)
    clip = make_clip(num_frames=3)
    T.RandomMosaicVideoAPI(prob=1.0, grid_h=2, grid_w=2, use_random_hflip=use_random_hflip)(clip)
    assert frames_equal(clip)
    mask = clip.frames[0].objects[0].segment.bool()
    red = red_region(clip.frames[0].data)
    cells = [(slice(0, H // 2), slice(0, W // 2)), (slice(0, H // 2), slice(W // 2, W))]
    cells += [(slice(H // 2, H), slice(0, W // 2)), (slice(H // 2, H), slice(W // 2, W))]
    with_mask = [c for c in cells if mask[c].any()]
    assert len(with_mask) == 1  # the target sits in one cell ...
    assert all(red[c].sum() > 20 for c in cells)  # ... among look-alike copies in every cell
    assert iou(mask[with_mask[0]], red[with_mask[0]]) > 0.6
    assert mask.sum() < red.sum() / 2
