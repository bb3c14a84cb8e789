"""A small deterministic DAVIS-style data set for the embedded ``DATASET=demo`` run and for tests.

Each video shows 1-3 textured shapes over a slowly panning textured background. The shapes move, pass in
front of each other (occlusion, fixed depth order), and in some videos one leaves the frame and comes back,
so a tracker has to handle disappearance and reappearance. Every object is visible in the first frame, as
semi-supervised VOS expects. Masks are palette PNGs (index = object id). The same arguments always give the
same bytes, hence the same manifest version.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sam2.data.layout import ANNOTATIONS_DIR, IMAGES_DIR, STATE_DIR, frame_name, mask_name
from sam2.data.manifest import manifest_from_disk

DEMO_SIZES = ((128, 160), (144, 192), (128, 128), (160, 160))
"""(height, width) of the demo videos, cycled."""


def davis_palette() -> list[int]:
    """The 256-colour VOC/DAVIS palette: bits of the index spread over the R, G, B high bits."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((red, green, blue))
    return palette


@dataclass(frozen=True)
class _Shape:
    kind: str  # "ellipse", "box" or "diamond"
    radius: tuple[float, float]  # half height, half width
    color: np.ndarray
    start: tuple[float, float]  # centre (y, x) at frame 0
    velocity: tuple[float, float]  # pixels per frame
    leaves: bool  # swings out of the frame and back instead of bouncing


def _shape_mask(shape: _Shape, centre: tuple[float, float], height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy = (yy - centre[0]) / shape.radius[0]
    dx = (xx - centre[1]) / shape.radius[1]
    if shape.kind == "ellipse":
        return dy**2 + dx**2 <= 1.0
    if shape.kind == "box":
        return (np.abs(dy) <= 1.0) & (np.abs(dx) <= 1.0)
    return np.abs(dy) + np.abs(dx) <= 1.0


def _centre(shape: _Shape, t: int, num_frames: int, height: int, width: int) -> tuple[float, float]:
    if shape.leaves:
        # out past the right edge around mid-clip, back inside by the end
        phase = np.sin(np.pi * t / max(1, num_frames - 1))
        return shape.start[0], shape.start[1] + phase * (width - shape.start[1] + 2.5 * shape.radius[1])

    def bounce(p0: float, v: float, lo: float, hi: float) -> float:
        span = hi - lo
        pos = (p0 - lo + v * t) % (2 * span)
        return lo + (pos if pos <= span else 2 * span - pos)

    return (
        bounce(shape.start[0], shape.velocity[0], shape.radius[0], height - shape.radius[0]),
        bounce(shape.start[1], shape.velocity[1], shape.radius[1], width - shape.radius[1]),
    )


def _make_shapes(
    rng: np.random.Generator, count: int, height: int, width: int, with_leaver: bool
) -> list[_Shape]:
    shapes = []
    kinds = ("ellipse", "box", "diamond")
    for index in range(count):
        ry, rx = rng.uniform(0.12, 0.2) * height, rng.uniform(0.1, 0.18) * width
        # objects start on alternating sides on similar rows and move towards each other: they cross
        side = index % 2
        start = (
            height * (0.38 + 0.24 * (index // 2) + 0.05 * rng.uniform(-1, 1)),
            width * (0.25 + 0.5 * side) + rng.uniform(-4, 4),
        )
        speed = rng.uniform(3.0, 6.0)
        velocity = (rng.uniform(-1.5, 1.5), speed if side == 0 else -speed)
        color = rng.integers(40, 256, size=3).astype(np.float32)
        shapes.append(
            _Shape(kinds[index % 3], (ry, rx), color, start, velocity, with_leaver and index == count - 1)
        )
    return shapes


def _render_video(rng: np.random.Generator, num_frames: int, height: int, width: int, shapes: list[_Shape]):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(30, 200, size=3).astype(np.float32)
    fx, fy = rng.uniform(0.04, 0.12, size=2)
    for t in range(num_frames):
        pan = 1.5 * t
        pattern = 25 * np.sin((xx + pan) * fx) * np.cos(yy * fy)
        frame = np.clip(base[None, None, :] + pattern[..., None], 0, 255)
        mask = np.zeros((height, width), dtype=np.uint8)
        for obj_id, shape in enumerate(shapes, start=1):  # later shapes are in front
            region = _shape_mask(shape, _centre(shape, t, num_frames, height, width), height, width)
            stripes = 18 * np.sign(np.sin((xx + yy) * 0.5 + obj_id))
            textured = np.clip(shape.color[None, None, :] + stripes[..., None], 0, 255)
            frame = np.where(region[..., None], textured, frame)
            mask[region] = obj_id
        noise = rng.normal(0, 3, size=frame.shape)
        yield np.clip(frame + noise, 0, 255).astype(np.uint8), mask


def generate_demo_dataset(
    output_dir: str | Path,
    num_videos: int = 6,
    num_frames: int = 14,
    seed: int = 0,
    jpeg_quality: int = 90,
) -> Path:
    """Write the demo data set (``JPEGImages/``, ``Annotations/``, ``manifest.json``) to ``output_dir``.

    Videos are named ``demo_000`` ...; video ``i`` has ``1 + i % 3`` objects and, for odd ``i`` with more
    than one object, one object leaves the frame and returns. Existing demo folders in ``output_dir`` are
    replaced; the manifest is written last. Returns ``output_dir``.
    """
    if num_videos < 1 or num_frames < 2:
        raise ValueError(
            f"need at least 1 video and 2 frames, got {num_videos} videos of {num_frames} frames"
        )
    root = Path(output_dir)
    staging = root / STATE_DIR / "demo-partial"
    shutil.rmtree(staging, ignore_errors=True)
    palette = davis_palette()
    for index in range(num_videos):
        rng = np.random.default_rng([seed, index])
        height, width = DEMO_SIZES[index % len(DEMO_SIZES)]
        count = 1 + index % 3
        shapes = _make_shapes(rng, count, height, width, with_leaver=index % 2 == 1 and count > 1)
        name = f"demo_{index:03d}"
        frames_dir = staging / IMAGES_DIR / name
        masks_dir = staging / ANNOTATIONS_DIR / name
        frames_dir.mkdir(parents=True)
        masks_dir.mkdir(parents=True)
        for t, (frame, mask) in enumerate(_render_video(rng, num_frames, height, width, shapes)):
            Image.fromarray(frame).save(frames_dir / frame_name(t), format="JPEG", quality=jpeg_quality)
            mask_image = Image.fromarray(mask, mode="P")
            mask_image.putpalette(palette)
            mask_image.save(masks_dir / mask_name(t), format="PNG")
    for sub in (ANNOTATIONS_DIR, IMAGES_DIR):  # frames last: a frames folder means "complete"
        shutil.rmtree(root / sub, ignore_errors=True)
        (staging / sub).rename(root / sub)
    shutil.rmtree(staging, ignore_errors=True)
    manifest_from_disk(
        root,
        settings={
            "generator": "demo",
            "seed": seed,
            "num_videos": num_videos,
            "num_frames": num_frames,
            "jpeg_quality": jpeg_quality,
        },
    )
    return root
