"""Joint image/mask augmentation of a VideoDatapoint.

Every transform takes and returns a VideoDatapoint (`t(datapoint, epoch=...)`). Geometric transforms move
each object's mask with its frame (nearest-neighbour or thresholded resampling, so masks stay binary);
photometric ones touch the image only. `consistent_transform=True` draws one set of random parameters for
the whole clip (the camera moves, not each frame), False draws them per frame. Randomness comes from
Python's `random`, which DataLoader seeds per worker.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image as PILImage
from torchvision.transforms import InterpolationMode

from sam2.training.utils.data_utils import VideoDatapoint

logger = logging.getLogger(__name__)


def _draw(consistent: bool, num_frames: int, draw: Callable[[], Any]) -> list[Any]:
    """One random parameter per frame: the same for all frames when consistent."""
    if consistent:
        value = draw()
        return [value] * num_frames
    return [draw() for _ in range(num_frames)]


def _image_hw(image: PILImage.Image | torch.Tensor) -> tuple[int, int]:
    if isinstance(image, PILImage.Image):
        return image.height, image.width
    return tuple(image.shape[-2:])


def _mask_to_pil(mask: torch.Tensor) -> PILImage.Image:
    """uint8 {0, 1} [H, W] -> PIL "L" {0, 255}; PIL's C kernels resample masks far faster than torch's
    float grid sampling on the CPU of a loader worker."""
    return PILImage.fromarray(mask.to(torch.uint8).mul(255).numpy(), mode="L")


def _mask_from_pil(image: PILImage.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image) >= 128).to(torch.uint8)


def _resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """uint8 [H, W] -> uint8 [h, w]: (area-weighted when shrinking) bilinear, thresholded at one half."""
    resized = _mask_to_pil(mask).resize((int(size[1]), int(size[0])), PILImage.Resampling.BILINEAR)
    return _mask_from_pil(resized)


def _affine_mask(mask: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    moved = F.affine(_mask_to_pil(mask), **params, interpolation=InterpolationMode.NEAREST, fill=0)
    return _mask_from_pil(moved)


def hflip(datapoint: VideoDatapoint, index: int) -> VideoDatapoint:
    frame = datapoint.frames[index]
    frame.data = F.horizontal_flip(frame.data)
    for obj in frame.objects:
        if obj.segment is not None:
            obj.segment = obj.segment.flip(-1)
    return datapoint


def get_size_with_aspect_ratio(image_hw: tuple[int, int], size: int, max_size: int | None = None):
    """(h, w) with the shorter side `size` (shrunk so the longer side stays <= max_size), aspect kept."""
    h, w = image_hw
    short, long = min(h, w), max(h, w)
    if max_size is not None and long / short * size > max_size:
        size = max_size * short / long
    if h <= w:
        return int(round(size)), int(round(size * w / h))
    return int(round(size * h / w)), int(round(size))


def resize(
    datapoint: VideoDatapoint, index: int, size, max_size: int | None = None, square: bool = False
) -> VideoDatapoint:
    """Resize frame `index` and its masks. `size`: shorter side (int), (w, h) pair, or square side."""
    frame = datapoint.frames[index]
    if square:
        out_hw = (int(size), int(size))
    elif isinstance(size, Sequence):
        out_hw = (int(size[1]), int(size[0]))
    else:
        out_hw = get_size_with_aspect_ratio(_image_hw(frame.data), size, max_size)
    frame.data = F.resize(frame.data, list(out_hw), interpolation=InterpolationMode.BILINEAR, antialias=True)
    for obj in frame.objects:
        if obj.segment is not None:
            obj.segment = _resize_mask(obj.segment, out_hw)
    return datapoint


class RandomHorizontalFlip:
    def __init__(self, consistent_transform: bool, p: float = 0.5):
        self.p = p
        self.consistent_transform = consistent_transform

    def __call__(self, datapoint: VideoDatapoint, **kwargs) -> VideoDatapoint:
        flips = _draw(self.consistent_transform, len(datapoint.frames), lambda: random.random() < self.p)
        for i, flip in enumerate(flips):
            if flip:
                hflip(datapoint, i)
        return datapoint


class RandomResizeAPI:
    """Resize to a size drawn from `sizes` (shorter side, or the side of a square with square=True)."""

    def __init__(
        self,
        sizes: int | Sequence[int],
        consistent_transform: bool,
        max_size: int | None = None,
        square: bool = False,
    ):
        self.sizes = [sizes] if isinstance(sizes, int) else list(sizes)
        if not self.sizes:
            raise ValueError("RandomResizeAPI: sizes is empty")
        self.max_size = max_size
        self.square = square
        self.consistent_transform = consistent_transform

    def __call__(self, datapoint: VideoDatapoint, **kwargs) -> VideoDatapoint:
        sizes = _draw(self.consistent_transform, len(datapoint.frames), lambda: random.choice(self.sizes))
        for i, size in enumerate(sizes):
            resize(datapoint, i, size, self.max_size, square=self.square)
        return datapoint


class ToTensorAPI:
    """PIL frames -> float32 [3, H, W] tensors in [0, 1]."""

    def __call__(self, datapoint: VideoDatapoint, **kwargs) -> VideoDatapoint:
        for frame in datapoint.frames:
            if isinstance(frame.data, PILImage.Image):
                frame.data = F.pil_to_tensor(frame.data).to(torch.float32).div_(255.0)
        return datapoint


class NormalizeAPI:
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, datapoint: VideoDatapoint, **kwargs) -> VideoDatapoint:
        for frame in datapoint.frames:
            if not (isinstance(frame.data, torch.Tensor) and frame.data.is_floating_point()):
                raise TypeError("NormalizeAPI needs float tensor frames: put ToTensorAPI before it")
            frame.data = F.normalize(frame.data, mean=self.mean, std=self.std)
        return datapoint


class ComposeAPI:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, datapoint: VideoDatapoint, **kwargs) -> VideoDatapoint:
        for transform in self.transforms:
            datapoint = transform(datapoint, **kwargs)
        return datapoint

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"


class RandomGrayscale:
    def __init__(self, consistent_transform: bool, p: float = 0.5):
        self.p = p
        self.consistent_transform = consistent_transform

    def __call__(self, datapoint: VideoDatapoint, **kwargs) -> VideoDatapoint:
        picks = _draw(self.consistent_transform, len(datapoint.frames), lambda: random.random() < self.p)
        for frame, gray in zip(datapoint.frames, picks, strict=True):
            if gray:
                frame.data = F.rgb_to_grayscale(frame.data, num_output_channels=3)
        return datapoint


def _factor_range(value, name: str, center: float) -> list[float] | None:
    """A jitter strength v -> [center - v, center + v] (clipped at 0 for multiplicative factors)."""
    if value is None:
        return None
    if isinstance(value, Sequence):
        if len(value) != 2:
            raise ValueError(f"ColorJitter {name}: give one number or a [min, max] pair, got {value}")
        return [float(value[0]), float(value[1])]
    low = -float(value) if center == 0.0 else max(0.0, center - float(value))
    return [low, center + float(value)]


class ColorJitter:
    """Brightness, contrast, saturation and hue changes in a random order (None skips one)."""

    def __init__(
        self,
        consistent_transform: bool,
        brightness: float | Sequence[float] | None,
        contrast: float | Sequence[float] | None = None,
        saturation: float | Sequence[float] | None = None,
        hue: float | Sequence[float] | None = None,
    ):
        self.consistent_transform = consistent_transform
        self.brightness = _factor_range(brightness, "brightness", 1.0)
        self.contrast = _factor_range(contrast, "contrast", 1.0)
        self.saturation = _factor_range(saturation, "saturation", 1.0)
        self.hue = _factor_range(hue, "hue", 0.0)
        self._ops = [
            (self.brightness, F.adjust_brightness),
            (self.contrast, F.adjust_contrast),
            (self.saturation, F.adjust_saturation),
            (self.hue, F.adjust_hue),
        ]

    def _draw_params(self) -> list[tuple[Callable, float]]:
        order = list(range(len(self._ops)))
        random.shuffle(order)
        return [
            (self._ops[i][1], random.uniform(*self._ops[i][0])) for i in order if self._ops[i][0] is not None
        ]

    def __call__(self, datapoint: VideoDatapoint, **kwargs) -> VideoDatapoint:
        params = _draw(self.consistent_transform, len(datapoint.frames), self._draw_params)
        for frame, ops in zip(datapoint.frames, params, strict=True):
            for adjust, factor in ops:
                frame.data = adjust(frame.data, factor)
        return datapoint


_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


class RandomAffine:
    """Random rotation / translation / scale / shear of frames and masks together.

    If an object's mask on the first frame would leave the image, the draw is retried (`num_tentatives`)
    and the clip is finally left untouched, since the first frame must show every tracked object.
    """

    def __init__(
        self,
        degrees: float | Sequence[float],
        consistent_transform: bool,
        scale: Sequence[float] | None = None,
        translate: Sequence[float] | None = None,
        shear: float | Sequence[float] | None = None,
        image_mean: Sequence[int] = (123, 116, 103),
        log_warning: bool = True,
        num_tentatives: int = 1,
        image_interpolation: str = "bicubic",
    ):
        self.degrees = list(degrees) if isinstance(degrees, Sequence) else [-degrees, degrees]
        self.scale = scale
        self.translate = translate
        if shear is None or isinstance(shear, Sequence):
            self.shear = None if shear is None else list(shear)
        else:
            self.shear = [-shear, shear] if shear else None
        if self.shear is not None and len(self.shear) not in (2, 4):
            raise ValueError(f"RandomAffine shear: one number, [min, max] or 4 numbers, got {shear}")
        self.fill_img = list(image_mean)
        self.consistent_transform = consistent_transform
        self.log_warning = log_warning
        self.num_tentatives = num_tentatives
        if image_interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"RandomAffine image_interpolation must be one of {sorted(_INTERPOLATIONS)}, got "
                f"{image_interpolation!r}"
            )
        self.image_interpolation = _INTERPOLATIONS[image_interpolation]

    def _draw_params(self, height: int, width: int) -> dict[str, Any]:
        angle = random.uniform(*self.degrees)
        if self.translate is not None:
            tx = round(random.uniform(-1, 1) * self.translate[0] * width)
            ty = round(random.uniform(-1, 1) * self.translate[1] * height)
        else:
            tx = ty = 0
        scale = random.uniform(*self.scale) if self.scale is not None else 1.0
        shear_x = shear_y = 0.0
        if self.shear is not None:
            shear_x = random.uniform(self.shear[0], self.shear[1])
            if len(self.shear) == 4:
                shear_y = random.uniform(self.shear[2], self.shear[3])
        return {"angle": angle, "translate": [tx, ty], "scale": scale, "shear": [shear_x, shear_y]}

    def __call__(self, datapoint: VideoDatapoint, **kwargs) -> VideoDatapoint:
        for _ in range(self.num_tentatives):
            transformed = self.transform_datapoint(datapoint)
            if transformed is not None:
                return transformed
        if self.log_warning:
            logger.warning(
                "RandomAffine skipped: a first-frame mask vanished in %d tentative(s)", self.num_tentatives
            )
        return datapoint

    def transform_datapoint(self, datapoint: VideoDatapoint) -> VideoDatapoint | None:
        """Transformed datapoint, or None (input untouched) when a first-frame mask would vanish."""
        height, width = _image_hw(datapoint.frames[0].data)
        params = _draw(
            self.consistent_transform, len(datapoint.frames), lambda: self._draw_params(height, width)
        )
        new_masks = []
        for index, (frame, p) in enumerate(zip(datapoint.frames, params, strict=True)):
            masks = []
            for obj in frame.objects:
                if obj.segment is None:
                    masks.append(None)
                    continue
                moved = _affine_mask(obj.segment, p)
                if index == 0 and not moved.any():
                    return None
                masks.append(moved)
            new_masks.append(masks)
        for frame, p, masks in zip(datapoint.frames, params, new_masks, strict=True):
            fill = self.fill_img
            if isinstance(frame.data, torch.Tensor) and frame.data.is_floating_point():
                fill = [v / 255.0 for v in fill]
            frame.data = F.affine(frame.data, **p, interpolation=self.image_interpolation, fill=fill)
            for obj, mask in zip(frame.objects, masks, strict=True):
                obj.segment = mask
        return datapoint


def random_mosaic_frame(
    datapoint: VideoDatapoint,
    index: int,
    grid_h: int,
    grid_w: int,
    target_grid_y: int,
    target_grid_x: int,
    should_hflip: torch.Tensor,
) -> VideoDatapoint:
    """Tile a shrunken copy of the frame over a grid_h x grid_w grid; masks stay in the target cell only,
    so the model must tell the target from its look-alike copies."""
    frame = datapoint.frames[index]
    was_pil = isinstance(frame.data, PILImage.Image)
    image = F.pil_to_tensor(frame.data) if was_pil else frame.data
    height, width = image.shape[-2:]

    def cell(gy: int, gx: int) -> tuple[int, int, int, int]:
        return (
            gy * height // grid_h,
            (gy + 1) * height // grid_h,
            gx * width // grid_w,
            (gx + 1) * width // grid_w,
        )

    mosaic = torch.zeros_like(image)
    shrunk: dict[tuple[int, int], torch.Tensor] = {}
    for gy in range(grid_h):
        for gx in range(grid_w):
            y0, y1, x0, x1 = cell(gy, gx)
            if (y1 - y0, x1 - x0) not in shrunk:
                shrunk[(y1 - y0, x1 - x0)] = F.resize(
                    image, [y1 - y0, x1 - x0], interpolation=InterpolationMode.BILINEAR, antialias=True
                )
            tile = shrunk[(y1 - y0, x1 - x0)]
            mosaic[..., y0:y1, x0:x1] = tile.flip(-1) if should_hflip[gy, gx] else tile
    frame.data = F.to_pil_image(mosaic) if was_pil else mosaic

    y0, y1, x0, x1 = cell(target_grid_y, target_grid_x)
    for obj in frame.objects:
        if obj.segment is None:
            continue
        small = _resize_mask(obj.segment, (y1 - y0, x1 - x0))
        if should_hflip[target_grid_y, target_grid_x]:
            small = small.flip(-1)
        placed = torch.zeros_like(obj.segment)
        placed[y0:y1, x0:x1] = small
        obj.segment = placed
    return datapoint


class RandomMosaicVideoAPI:
    """With probability `prob`, turn every frame of the clip into the same grid mosaic (see above)."""

    def __init__(self, prob: float = 0.15, grid_h: int = 2, grid_w: int = 2, use_random_hflip: bool = False):
        self.prob = prob
        self.grid_h = grid_h
        self.grid_w = grid_w
        self.use_random_hflip = use_random_hflip

    def __call__(self, datapoint: VideoDatapoint, **kwargs) -> VideoDatapoint:
        if random.random() >= self.prob:
            return datapoint
        target_y = random.randrange(self.grid_h)
        target_x = random.randrange(self.grid_w)
        should_hflip = torch.tensor(
            [
                [self.use_random_hflip and random.random() < 0.5 for _ in range(self.grid_w)]
                for _ in range(self.grid_h)
            ]
        )
        for i in range(len(datapoint.frames)):
            random_mosaic_frame(datapoint, i, self.grid_h, self.grid_w, target_y, target_x, should_hflip)
        return datapoint
