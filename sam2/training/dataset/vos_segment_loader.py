"""Per-video mask readers: each turns one frame id into {object_id: mask} for one annotation format.

Formats: palette PNGs (DAVIS/MOSE, pixel value = object id), one PNG folder per object, SA-V masklet JSON
(COCO RLE, annotated every `ann_every` frames) and SA-1B image JSON (COCO RLE, decoded lazily).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from sam2.data.layout import DataPrepError
from sam2.data.rle import check_rle, check_sav_annotation, read_json_document
from sam2.data.rules import frames_without_masks, missing_masks_problem
from sam2.training.dataset.errors import DatasetError

logger = logging.getLogger(__name__)


def _index_pngs_by_frame_id(folder: str) -> dict[int, str]:
    """Map int(frame id) -> PNG file name, whatever the zero padding ("00005.png" or "00000005.png")."""
    by_id: dict[int, str] = {}
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext.lower() != ".png" or name.startswith("."):
            continue
        try:
            by_id[int(stem)] = name
        except ValueError as err:
            raise DatasetError(
                f"mask file {os.path.join(folder, name)!r} is not named by an integer frame id "
                "(expected e.g. 00012.png); rename it or remove it"
            ) from err
    return by_id


def _read_png(path: str) -> np.ndarray:
    try:
        with PILImage.open(path) as img:
            return np.array(img)
    except (OSError, SyntaxError, ValueError, EOFError, PILImage.DecompressionBombError) as err:
        raise DatasetError(f"cannot read mask {path!r} ({err}); re-export or exclude the video") from err


class PalettisedPNGSegmentLoader:
    """Masks stored as one palette PNG per frame where pixel value k > 0 is object k."""

    def __init__(self, video_png_root: str):
        self.video_png_root = video_png_root
        if not os.path.isdir(video_png_root):
            raise DatasetError(
                f"annotation folder {video_png_root!r} does not exist; every video in img_folder needs "
                "a folder of the same name in gt_folder (or list the video in excluded_videos_list_txt)"
            )
        self.frame_id_to_png_filename = _index_pngs_by_frame_id(video_png_root)

    def load(self, frame_id: int) -> dict[int, torch.Tensor]:
        """{object id: bool [H, W]} for every object present on the frame; raises if the PNG is missing."""
        name = self.frame_id_to_png_filename.get(frame_id)
        if name is None:  # the rule validation applies too (sam2.data.rules)
            missing = frames_without_masks([frame_id], self.frame_id_to_png_filename)
            raise DatasetError(
                f"no mask for frame {frame_id} in {self.video_png_root!r}: {missing_masks_problem(missing)} (or set "
                "target_segments_available=False when only the first frame is annotated)"
            )
        labels = _read_png(os.path.join(self.video_png_root, name))
        if labels.ndim != 2:
            raise DatasetError(
                f"mask {os.path.join(self.video_png_root, name)!r} has shape {labels.shape}; expected a "
                "single-channel palette PNG whose pixel values are object ids"
            )
        object_ids = np.unique(labels)
        return {int(k): torch.from_numpy(labels == k) for k in object_ids if k != 0}


class MultiplePNGSegmentLoader:
    """Masks stored as `<video>/<object folder>/<frame>.png`, one binary PNG per object and frame.

    Object ids are the folder's integer name + 1 (0 stays background). A frame without a PNG for an
    object means the object is absent there (empty mask). With `single_object_mode` the root is one
    object's folder.
    """

    def __init__(self, video_png_root: str, single_object_mode: bool = False):
        self.video_png_root = video_png_root
        self.single_object_mode = single_object_mode
        if not os.path.isdir(video_png_root):
            raise DatasetError(f"annotation folder {video_png_root!r} does not exist")
        if single_object_mode:
            folders = [video_png_root]
        else:
            folders = sorted(
                os.path.join(video_png_root, d)
                for d in os.listdir(video_png_root)
                if os.path.isdir(os.path.join(video_png_root, d))
            )
        self._objects: dict[int, dict[int, str]] = {}
        for folder in folders:
            name = os.path.basename(os.path.normpath(folder))
            try:
                obj_id = int(name) + 1
            except ValueError as err:
                raise DatasetError(
                    f"object folder {folder!r} is not named by an integer object index; with "
                    "is_palette=False each object's masks live in <gt_folder>/<video>/<int>/"
                ) from err
            self._objects[obj_id] = {
                fid: os.path.join(folder, fname) for fid, fname in _index_pngs_by_frame_id(folder).items()
            }
        any_png = next((p for pngs in self._objects.values() for p in pngs.values()), None)
        if any_png is None:
            raise DatasetError(f"no object mask PNGs under {video_png_root!r}")
        self.H, self.W = _read_png(any_png).shape[:2]

    def load(self, frame_id: int) -> dict[int, torch.Tensor]:
        segments = {}
        for obj_id, pngs in self._objects.items():
            path = pngs.get(frame_id)
            if path is None:
                segments[obj_id] = torch.zeros(self.H, self.W, dtype=torch.bool)
            else:
                mask = _read_png(path)
                if mask.ndim == 3:
                    mask = mask[..., 0]
                segments[obj_id] = torch.from_numpy(mask > 0)
        return segments


def _decode_rles(rles: list[dict]) -> torch.Tensor:
    """uint8/bool stack [N, H, W] from COCO RLE dicts (counts as str or bytes)."""
    return torch.from_numpy(mask_utils.decode(rles)).permute(2, 0, 1).to(torch.bool)


class JSONSegmentLoader:
    """SA-V masklets: `masklet[k][o]` is the RLE of object o on the k-th annotated frame.

    Annotated frames are frame ids 0, ann_every, 2*ann_every, ... of the extracted frames. When the JSON
    states its annotation fps, `ann_every` is derived as frames_fps // fps.
    """

    def __init__(
        self,
        video_json_path: str,
        ann_every: int = 1,
        frames_fps: int = 24,
        valid_obj_ids: Iterable[int] | None = None,
    ):
        self.video_json_path = video_json_path
        self.ann_every = ann_every
        self.valid_obj_ids = None if valid_obj_ids is None else set(valid_obj_ids)
        if not os.path.isfile(video_json_path):
            raise DatasetError(
                f"annotation {video_json_path!r} does not exist; SA-V videos need <gt_folder>/<video>_manual.json"
            )
        try:  # the shape checked here, each RLE when it is decoded (sam2.data.rle: shared with validation)
            data = read_json_document(video_json_path)
            if isinstance(data, list):
                data = {"masklet": data}
            elif isinstance(data, dict) and "masklet" not in data and "masks" in data:
                data = {**data, "masklet": data["masks"]}
            check_sav_annotation(data, video_json_path, check_rles=False)
        except DataPrepError as err:
            raise DatasetError(f"annotation {err}") from None
        self.frame_annots = data["masklet"]
        if "fps" in data:
            fps = data["fps"][0] if isinstance(data["fps"], list) and data["fps"] else data["fps"]
            if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not math.isfinite(fps):
                raise DatasetError(f"{video_json_path!r}: annotation fps {fps!r:.40} is not a number")
            fps = int(fps)
            if fps <= 0 or frames_fps % fps:
                raise DatasetError(
                    f"{video_json_path!r}: annotation fps {fps} does not divide frames_fps={frames_fps}"
                )
            self.ann_every = frames_fps // fps

    def annotated_frame_ids(self) -> list[int]:
        """Frame ids whose annotation is complete (no object left as null)."""
        return [
            k * self.ann_every
            for k, annot in enumerate(self.frame_annots)
            if annot is not None and all(rle is not None for rle in annot)
        ]

    def load(self, frame_id: int, obj_ids: Iterable[int] | None = None) -> dict[int, torch.Tensor | None]:
        """{object index: bool [H, W] or None when unannotated} for the wanted objects on an annotated frame."""
        k, rest = divmod(frame_id, self.ann_every)
        if rest or k >= len(self.frame_annots) or self.frame_annots[k] is None:
            raise DatasetError(
                f"{self.video_json_path!r} holds no annotation for frame {frame_id} (annotations every "
                f"{self.ann_every} frames, {len(self.frame_annots)} annotated); check ann_every"
            )
        rles = self.frame_annots[k]
        wanted = set(range(len(rles)))
        if self.valid_obj_ids is not None:
            wanted &= self.valid_obj_ids
        if obj_ids is not None:
            wanted &= set(obj_ids)
        wanted_sorted = sorted(wanted)
        present = [o for o in wanted_sorted if rles[o] is not None]
        for o in present:
            try:
                check_rle(rles[o], f"{self.video_json_path}: annotated frame {k}, object {o}")
            except DataPrepError as err:
                raise DatasetError(str(err)) from None
        decoded = _decode_rles([rles[o] for o in present]) if present else None
        segments: dict[int, torch.Tensor | None] = dict.fromkeys(wanted_sorted)
        for i, o in enumerate(present):
            segments[o] = decoded[i]
        return segments


class LazySegments:
    """A mapping of object id -> mask that decodes an RLE only when the mask is first read."""

    def __init__(self) -> None:
        self.segments: dict[int, dict] = {}
        self.cache: dict[int, torch.Tensor] = {}

    def __setitem__(self, key: int, rle: dict) -> None:
        self.segments[key] = rle

    def __getitem__(self, key: int) -> torch.Tensor:
        if key not in self.cache:
            self.cache[key] = _decode_rles([self.segments[key]])[0]
        return self.cache[key]

    def __contains__(self, key: object) -> bool:
        return key in self.segments

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self) -> Iterator[int]:
        return iter(self.segments)

    def get(self, key: int, default=None):
        return self[key] if key in self.segments else default

    def keys(self):
        return self.segments.keys()


class SA1BSegmentLoader:
    """SA-1B image annotations: every kept mask is one object, the same on each (repeated) frame.

    Masks covering at least `mask_area_frac_thresh` of the image, or with a stability score below
    `uncertain_iou`, are dropped (the defaults keep everything).
    """

    def __init__(
        self,
        video_mask_path: str,
        mask_area_frac_thresh: float = 1.1,
        video_frame_path: str | None = None,
        uncertain_iou: float = -1,
    ):
        try:
            with open(video_mask_path) as f:
                annotations = json.load(f)["annotations"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise DatasetError(
                f"cannot read SA-1B annotations {video_mask_path!r} ({err!r}); expected a JSON object "
                "with an 'annotations' list of {'segmentation': RLE, 'area': ...}"
            ) from err
        image_area = None
        if mask_area_frac_thresh <= 1.0:
            if video_frame_path is None:
                raise DatasetError("SA1BSegmentLoader: mask_area_frac_thresh <= 1 needs video_frame_path")
            with PILImage.open(video_frame_path) as img:
                image_area = img.width * img.height
        self.segments = LazySegments()
        for ann in annotations:
            if not ann.get("area", 0) > 0:
                continue
            stability = ann.get("uncertain_iou", ann.get("stability_score"))
            if stability is not None and stability < uncertain_iou:
                continue
            if image_area is not None and ann["area"] / image_area >= mask_area_frac_thresh:
                continue
            self.segments[len(self.segments)] = ann["segmentation"]
        logger.debug("%s: kept %d of %d masks", video_mask_path, len(self.segments), len(annotations))

    def load(self, frame_idx: int) -> LazySegments:
        return self.segments
