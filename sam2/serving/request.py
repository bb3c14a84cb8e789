"""A tracking request as the endpoint takes it, checked before any frame is read.

JSON (one V1 `instances` item, or the V2 `request` input)::

    {
      "video": "s3://bucket/videos/cat/" | "https://host/cat.mp4" | {"frames": ["<base64 JPEG>", ...]},
      "objects": [
        {"id": 1, "mask": {"size": [H, W], "counts": "<COCO RLE>"}},
        {"id": 2, "points": [[x, y], ...], "labels": [1, 0, ...]},
        {"id": 3, "box": [x0, y0, x1, y1]}
      ],
      "start_frame": 0, "max_frames": 200,
      "return_object_ids": [1, 3],
      "offload_video_to_cpu": false, "offload_state_to_cpu": false
    }

Prompts are on the page's first frame (`start_frame`): to continue a long video, send the next page
with `start_frame` = the previous page's last frame and that frame's returned masks as the prompts.
Everything wrong with a request raises `RequestError` (a 400 with its message at the endpoint).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam2.serving import rle

VIDEO_SCHEMES = ("s3://", "http://", "https://")


class RequestError(ValueError):
    """A request the endpoint cannot serve; the message names the field at fault."""


@dataclass(frozen=True)
class ObjectPrompt:
    """What the user gave for one object on the page's first frame: a mask, clicks, or a box."""

    obj_id: int
    mask: np.ndarray | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None


@dataclass(frozen=True)
class VideoRef:
    """Where the frames come from: an `s3://` folder or file, an http(s) URL, or uploaded JPEG bytes."""

    uri: str | None = None
    frames: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class TrackRequest:
    """One checked request (see the module docstring)."""

    video: VideoRef
    objects: tuple[ObjectPrompt, ...]
    start_frame: int = 0
    max_frames: int | None = None
    return_object_ids: tuple[int, ...] | None = None
    offload_video_to_cpu: bool = False
    offload_state_to_cpu: bool = False


def parse_request(body: Any, max_upload_frames: int = 2000) -> TrackRequest:
    """Check one request and turn it into a `TrackRequest`. Raises RequestError naming the field."""
    if not isinstance(body, Mapping):
        raise RequestError(f"a request is a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise RequestError(f"unknown request field(s) {unknown}; known: {sorted(_FIELDS)}")
    if "video" not in body:
        raise RequestError("'video' is missing: give an s3:// URI, an http(s) URL, or {'frames': [...]}")
    video = _video(body["video"], max_upload_frames)
    objects = body.get("objects")
    if not objects:
        raise RequestError(
            "no prompt: 'objects' must list at least one object with a 'mask' (COCO RLE), "
            "'points' + 'labels', or a 'box'"
        )
    if not isinstance(objects, Sequence) or isinstance(objects, (str, bytes)):
        raise RequestError("'objects' is a list of {'id': ..., 'mask' | 'points' | 'box': ...}")
    prompts = tuple(_object(i, o) for i, o in enumerate(objects))
    ids = [p.obj_id for p in prompts]
    if len(set(ids)) != len(ids):
        raise RequestError(f"object ids repeat in 'objects': {ids}; give each object once")
    sizes = {p.mask.shape for p in prompts if p.mask is not None}
    if len(sizes) > 1:
        raise RequestError(f"the objects' masks differ in size: {sorted(sizes)}")
    wanted = body.get("return_object_ids")
    if wanted is not None:
        if not isinstance(wanted, list) or not all(_is_int(i) for i in wanted):
            raise RequestError("'return_object_ids' is a list of object ids")
        missing = sorted(set(wanted) - set(ids))
        if missing:
            raise RequestError(
                f"unknown object id(s) {missing} in 'return_object_ids'; the request prompts {sorted(ids)}"
            )
        wanted = tuple(int(i) for i in wanted)
    start = body.get("start_frame", 0)
    if not _is_int(start) or start < 0:
        raise RequestError(f"'start_frame' must be an integer >= 0, got {start!r}")
    max_frames = body.get("max_frames")
    if max_frames is not None and (not _is_int(max_frames) or max_frames < 1):
        raise RequestError(f"'max_frames' must be an integer >= 1, got {max_frames!r}")
    flags = {}
    for name in ("offload_video_to_cpu", "offload_state_to_cpu"):
        value = body.get(name, False)
        if not isinstance(value, bool):
            raise RequestError(f"'{name}' must be true or false, got {value!r}")
        flags[name] = value
    return TrackRequest(
        video=video,
        objects=prompts,
        start_frame=int(start),
        max_frames=None if max_frames is None else int(max_frames),
        return_object_ids=wanted,
        **flags,
    )


_FIELDS = {
    "video",
    "objects",
    "start_frame",
    "max_frames",
    "return_object_ids",
    "offload_video_to_cpu",
    "offload_state_to_cpu",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _video(value: Any, max_upload_frames: int) -> VideoRef:
    if isinstance(value, str):
        if not value.startswith(VIDEO_SCHEMES):
            raise RequestError(
                f"'video' {value!r} is not an s3:// URI or an http(s) URL; local paths are not served"
            )
        return VideoRef(uri=value)
    if isinstance(value, Mapping) and set(value) == {"frames"}:
        frames = value["frames"]
        if not isinstance(frames, list) or not frames:
            raise RequestError("'video.frames' is a non-empty list of base64-encoded JPEG frames")
        if len(frames) > max_upload_frames:
            raise RequestError(
                f"'video.frames' holds {len(frames)} frames, more than this server takes in one request "
                f"({max_upload_frames}); send the video in pages, or as an s3:// URI"
            )
        decoded = []
        for i, text in enumerate(frames):
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise RequestError(f"'video.frames[{i}]' is not base64") from None
            if not data.startswith(b"\xff\xd8"):
                raise RequestError(f"'video.frames[{i}]' is not a JPEG (no JPEG start marker)")
            decoded.append(data)
        return VideoRef(frames=tuple(decoded))
    raise RequestError("'video' is an s3:// URI, an http(s) URL, or {'frames': [<base64 JPEG>, ...]}")


def _object(index: int, value: Any) -> ObjectPrompt:
    where = f"objects[{index}]"
    if not isinstance(value, Mapping):
        raise RequestError(f"'{where}' is an object {{'id': ..., 'mask' | 'points' | 'box': ...}}")
    obj_id = value.get("id")
    if not _is_int(obj_id) or obj_id < 1:
        raise RequestError(f"'{where}.id' must be an integer >= 1, got {obj_id!r}")
    kinds = [k for k in ("mask", "points", "box") if value.get(k) is not None]
    if not kinds:
        raise RequestError(f"no prompt for object {obj_id} ('{where}'): give 'mask', 'points' or 'box'")
    if "mask" in kinds and len(kinds) > 1:
        raise RequestError(f"object {obj_id}: give a 'mask' alone, or 'points' and/or a 'box'")
    if "mask" in kinds:
        try:
            mask = rle.decode(value["mask"])
        except ValueError as exc:
            raise RequestError(f"'{where}.mask': {exc}") from None
        return ObjectPrompt(obj_id, mask=mask)
    points = labels = box = None
    if "points" in kinds:
        points = _array(value["points"], f"{where}.points", (-1, 2))
        raw_labels = value.get("labels")
        if raw_labels is None:
            raise RequestError(
                f"'{where}.labels' is missing: one label per point (1 foreground, 0 background)"
            )
        labels = _array(raw_labels, f"{where}.labels", (-1,)).astype(np.int32)
        if len(labels) != len(points):
            raise RequestError(f"'{where}': {len(points)} points but {len(labels)} labels")
        if not np.isin(labels, (0, 1)).all():
            raise RequestError(f"'{where}.labels' are 1 (foreground) or 0 (background)")
    if "box" in kinds:
        box = _array(value["box"], f"{where}.box", (4,))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise RequestError(f"'{where}.box' is [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
    return ObjectPrompt(obj_id, points=points, labels=labels, box=box)


def _array(value: Any, where: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError(f"'{where}' must hold numbers") from None
    if shape[0] == -1:
        if array.size == 0 or (len(shape) == 2 and (array.ndim != 2 or array.shape[1] != shape[1])):
            raise RequestError(f"'{where}' must be a non-empty list of [x, y]" if len(shape) == 2 else where)
        if len(shape) == 1 and array.ndim != 1:
            raise RequestError(f"'{where}' must be a flat list")
    elif array.shape != shape:
        raise RequestError(f"'{where}' must have shape {list(shape)}, got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise RequestError(f"'{where}' holds a non-finite number")
    return array
