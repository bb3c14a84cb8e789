"""Synthetic training data for the tests: DAVIS-style folders, SA-V JSON, SA-1B images.

Objects are solid coloured rectangles on a dark background and the masks mark exactly those pixels, so a
test can check that a transform moved image and mask together by looking at the image under the mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# Colour of object k (1-based) in the frames.
OBJECT_COLOURS = {1: (230, 30, 30), 2: (30, 230, 30), 3: (30, 30, 230), 4: (230, 230, 30)}
PALETTE = [0, 0, 0] + [c for k in sorted(OBJECT_COLOURS) for c in OBJECT_COLOURS[k]] + [0] * 3 * 251


def label_map(height: int, width: int, frame: int, num_objects: int, appear: dict[int, int] | None = None):
    """uint8 [H, W]: object k is a rectangle drifting right by one pixel per frame; `appear` gives the
    first frame at which an object is present."""
    labels = np.zeros((height, width), np.uint8)
    for k in range(1, num_objects + 1):
        if appear and frame < appear.get(k, 0):
            continue
        y0 = 2 + (k - 1) * (height // (num_objects + 1))
        x0 = 2 + (k - 1) * 3 + frame
        labels[y0 : y0 + height // (num_objects + 2), x0 : x0 + width // 4] = k
    return labels


def render(labels: np.ndarray) -> Image.Image:
    image = np.full((*labels.shape, 3), 20, np.uint8)
    for k, colour in OBJECT_COLOURS.items():
        image[labels == k] = colour
    return Image.fromarray(image)


def write_palette_png(labels: np.ndarray, path: Path) -> None:
    png = Image.fromarray(labels, mode="P")
    png.putpalette(PALETTE)
    png.save(path)


def make_davis(
    root: Path,
    videos: dict[str, int],
    num_objects: int = 2,
    size: tuple[int, int] = (48, 64),
    appear: dict[int, int] | None = None,
) -> tuple[Path, Path]:
    """`root/JPEGImages/<video>/<%05d>.jpg` + `root/Annotations/<video>/<%05d>.png` for {video: frames}."""
    img_root, gt_root = root / "JPEGImages", root / "Annotations"
    for video, num_frames in videos.items():
        (img_root / video).mkdir(parents=True)
        (gt_root / video).mkdir(parents=True)
        for t in range(num_frames):
            labels = label_map(*size, t, num_objects, appear)
            render(labels).save(img_root / video / f"{t:05d}.jpg", quality=95)
            write_palette_png(labels, gt_root / video / f"{t:05d}.png")
    return img_root, gt_root


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def make_sav(
    root: Path, videos: dict[str, int], ann_every: int, num_objects: int = 2, size=(48, 64)
) -> tuple[Path, Path]:
    """SA-V layout: `root/JPEGImages_24fps/<video>/<%05d>.jpg` and `root/sav_train/<video>_manual.json`
    whose masklet holds every `ann_every`-th frame."""
    img_root, gt_root = root / "JPEGImages_24fps", root / "sav_train"
    gt_root.mkdir(parents=True)
    for video, num_frames in videos.items():
        (img_root / video).mkdir(parents=True)
        masklet = []
        for t in range(num_frames):
            labels = label_map(*size, t, num_objects)
            render(labels).save(img_root / video / f"{t:05d}.jpg", quality=95)
            if t % ann_every == 0:
                masklet.append([encode(labels == k) for k in range(1, num_objects + 1)])
        payload = {"video_id": video, "masklet": masklet, "masklet_num": num_objects}
        (gt_root / f"{video}_manual.json").write_text(json.dumps(payload))
    return img_root, gt_root


def make_sa1b(root: Path, names: list[str], num_objects: int = 3, size=(48, 64)) -> tuple[Path, Path]:
    """SA-1B layout: `root/images/<name>.jpg` with `root/annotations/<name>.json`."""
    img_root, gt_root = root / "images", root / "annotations"
    img_root.mkdir(parents=True)
    gt_root.mkdir(parents=True)
    for name in names:
        labels = label_map(*size, 0, num_objects)
        render(labels).save(img_root / f"{name}.jpg", quality=95)
        anns = [
            {
                "id": k,
                "segmentation": encode(labels == k),
                "area": int((labels == k).sum()),
                "stability_score": 0.95,
            }
            for k in range(1, num_objects + 1)
        ]
        anns.append({"id": 99, "segmentation": encode(np.ones(size, bool)), "area": size[0] * size[1]})
        (gt_root / f"{name}.json").write_text(
            json.dumps({"image": {"file_name": f"{name}.jpg"}, "annotations": anns})
        )
    return img_root, gt_root
