"""Checks a data set before training so that bad videos are named here, not deep inside a data loader.

Per video: every frame decodes and has the first frame's size; the clip has at least ``num_frames`` frames
(the training sampler's clip length); annotations exist; masks are palette or binary PNGs of the frame
size and name a frame; one video does not mix palette and binary masks; the first frame's mask holds an
object; object ids and checksums agree with ``manifest.json`` when there is one. SA-V JSON annotations are
checked for RLE sizes, per-frame object counts and a non-empty first annotated frame.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from sam2.data.coco import coco_annotation_path, validate_coco_dataset
from sam2.data.layout import (
    ANNOTATIONS_DIR,
    IMAGES_DIR,
    SAV_ANNOTATION_SUFFIX,
    DataPrepError,
    list_frames,
    list_videos,
)
from sam2.data.manifest import IMAGE_DECODE_ERRORS, combined_digest, load_manifest, sav_object_ids
from sam2.data.rle import check_rle, check_sav_annotation, read_json_document
from sam2.data.rules import frames_without_masks, missing_masks_problem
from sam2.data.validation_report import ValidationReport
from sam2.utils.atomic_io import atomic_write_text

logger = logging.getLogger(__name__)

REPORT_NAME = "validation_report.json"
VALID_LIST_NAME = "valid_videos.txt"


def default_report_dir(root: str | Path) -> Path:
    """Where ``validate_dataset`` writes its report without ``--report_dir``: ``<root>_validation/`` beside
    the data set, so that the user's data folder is left as it was (split_dataset looks there too)."""
    root = Path(root)
    return root.parent / f"{root.name}_validation"


class DatasetValidationError(DataPrepError):
    """The data set has bad videos and the policy is to fail; the message lists each and why."""


def _check_frames(
    video_dir: Path, frames: list[Path], problems: list[str]
) -> tuple[tuple[int, int] | None, str]:
    """Decode every frame; returns the first frame's size and the frames digest (manifest style)."""
    size: tuple[int, int] | None = None
    digests = []
    for path in frames:
        data = path.read_bytes()
        digests.append((path.name, hashlib.sha256(data).hexdigest()))
        try:
            with Image.open(path) as image:
                image.load()
                frame_size = image.size
        except IMAGE_DECODE_ERRORS as err:
            problems.append(f"frame {path.name} does not decode ({err})")
            continue
        if size is None:
            size = frame_size
        elif frame_size != size:
            problems.append(
                f"frame {path.name} is {frame_size[0]}x{frame_size[1]}, the first frame is {size[0]}x{size[1]}"
            )
    return size, combined_digest(digests)


def _mask_kind(image: Image.Image, values: np.ndarray) -> str | None:
    """``"palette"``, ``"binary"`` or None (not an accepted mask)."""
    if image.mode == "P":
        return "palette"
    if image.mode == "1":
        return "binary"
    if image.mode == "L" and np.isin(np.unique(values), (0, 1, 255)).all():
        return "binary"
    return None


def _check_png_masks(
    masks: list[Path],
    frame_names: set[str],
    first_frame: str,
    size: tuple[int, int] | None,
    problems: list[str],
    notes: list[str],
) -> set[int]:
    kinds: set[str] = set()
    ids_first: set[int] | None = None
    ids_all: set[int] = set()
    for mask in masks:
        if mask.stem not in frame_names:
            problems.append(f"mask {mask.name} matches no frame ({mask.stem}.jpg is missing)")
        try:
            with Image.open(mask) as image:
                values = np.asarray(image)
                kind = _mask_kind(image, values)
                mode, mask_size = image.mode, image.size
        except IMAGE_DECODE_ERRORS as err:
            problems.append(f"mask {mask.name} does not decode ({err})")
            continue
        if kind is None:
            problems.append(
                f"mask {mask.name} has mode {mode}"
                + (" with values other than 0/1/255" if mode == "L" else "")
                + "; expected a palette PNG (pixel = object id) or a binary PNG"
            )
            continue
        kinds.add(kind)
        if size is not None and mask_size != size:
            problems.append(
                f"mask {mask.name} is {mask_size[0]}x{mask_size[1]} but the frames are {size[0]}x{size[1]}"
            )
        if kind == "binary":
            ids = {1} if values.any() else set()
        else:
            ids = {int(v) for v in np.unique(values)} - {0}
        if mask.stem == first_frame:
            ids_first = ids
        ids_all |= ids
    if len(kinds) > 1:
        problems.append("mixes palette and binary masks; object ids are ambiguous")
    if ids_first is None:
        problems.append(
            f"no mask for the first frame ({first_frame}.png); semi-supervised training needs one"
        )
    elif not ids_first:
        problems.append(f"the first frame's mask ({first_frame}.png) holds no object")
    else:
        later = sorted(ids_all - ids_first)
        if later:
            notes.append(f"objects {later} appear only after the first frame")
    return ids_all


def _frames_missing_masks(frames: list[Path], masks: list[Path]) -> list[int]:
    """Frame ids (integer file names) without a mask; frames not named by an integer are not counted."""
    frame_ids = [int(f.stem) for f in frames if f.stem.isdigit()]
    return frames_without_masks(frame_ids, {int(m.stem) for m in masks if m.stem.isdigit()})


def _rle_area(rle: dict) -> int:
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    return int(
        mask_utils.area(
            {"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
        )
    )


def _check_sav_json(path: Path, size: tuple[int, int] | None, problems: list[str]) -> set[int]:
    try:
        annotation = check_sav_annotation(read_json_document(path), path.name, check_rles=False)
    except DataPrepError as err:
        problems.append(str(err).replace(f"{path}", path.name))
        return set()
    masklet = annotation["masklet"]
    if not masklet:
        problems.append(f"{path.name} has no 'masklet' frames")
        return set()
    ids = set(sav_object_ids(annotation))
    for index, frame_rles in enumerate(masklet):
        if frame_rles is None or None in frame_rles:
            problems.append(f"{path.name}: annotated frame {index} leaves an object unannotated (null)")
            break
        if len(frame_rles) != len(ids):
            problems.append(
                f"{path.name}: annotated frame {index} has {len(frame_rles)} objects, expected {len(ids)}"
            )
            break
        bad_size = [
            r.get("size")
            for r in frame_rles
            if size is not None and isinstance(r, dict) and r.get("size") != [size[1], size[0]]
        ]
        if bad_size:
            problems.append(
                f"{path.name}: annotated frame {index} has RLE size {bad_size[0]}, frames are {size[0]}x{size[1]}"
            )
            break
        try:  # before pycocotools reads them (sam2.data.rle)
            for obj, rle in enumerate(frame_rles):
                check_rle(rle, f"{path.name}: annotated frame {index}, object {obj}")
        except DataPrepError as err:
            problems.append(str(err))
            break
    if not problems and not any(_rle_area(r) for r in masklet[0]):
        problems.append(f"{path.name}: the first annotated frame holds no object")
    return ids


def check_video(root: Path, video: str, num_frames: int, record: dict | None) -> tuple[list[str], list[str]]:
    """Problems and warnings of one video (empty problems: the video is good)."""
    problems: list[str] = []
    notes: list[str] = []
    video_dir = root / IMAGES_DIR / video
    if not video_dir.is_dir():
        return [f"listed in manifest.json but {IMAGES_DIR}/{video} is missing; re-run extract_frames"], notes
    frames = list_frames(video_dir)
    if not frames:
        return [f"no JPEG frames in {IMAGES_DIR}/{video}"], notes
    if len(frames) < num_frames:
        problems.append(f"only {len(frames)} frames; the training sampler needs num_frames={num_frames}")
    size, frames_digest = _check_frames(video_dir, frames, problems)

    sav_path = root / ANNOTATIONS_DIR / f"{video}{SAV_ANNOTATION_SUFFIX}"
    png_dir = root / ANNOTATIONS_DIR / video
    masks = sorted(png_dir.glob("*.png")) if png_dir.is_dir() else []
    if sav_path.is_file():
        ids = _check_sav_json(sav_path, size, problems)
    elif masks:
        ids = _check_png_masks(masks, {f.stem for f in frames}, frames[0].stem, size, problems, notes)
        missing = _frames_missing_masks(frames, masks)
        if missing:
            problems.append(missing_masks_problem(missing))
    else:
        problems.append(
            f"missing annotations: expected PNG masks in {ANNOTATIONS_DIR}/{video}/ or {ANNOTATIONS_DIR}/{video}{SAV_ANNOTATION_SUFFIX}"
        )
        ids = set()
    if record is not None:
        if record.get("frames_sha256") != frames_digest:
            problems.append(
                "frames differ from manifest.json (changed after extraction); re-run extract_frames"
            )
        if (masks or sav_path.is_file()) and sorted(ids) != sorted(record.get("object_ids", [])):
            problems.append(
                f"object ids {sorted(ids)} in the masks differ from manifest.json's {record.get('object_ids')}; "
                "re-run extract_frames"
            )
    return problems, notes


def validate_dataset(root: str | Path, num_frames: int = 8, workers: int | None = None) -> ValidationReport:
    """Check every video under ``root/JPEGImages`` (and the manifest's videos) and report per video.

    A COCO image data set (``root/annotations.coco.json``) is checked per image instead, see
    :func:`sam2.data.coco.validate_coco_dataset` (``num_frames`` does not apply).

    Raises:
        DataPrepError: ``root`` holds no videos at all.
    """
    root = Path(root)
    if coco_annotation_path(root) is not None:
        return validate_coco_dataset(root, workers=workers)
    manifest = load_manifest(root)
    records = (manifest or {}).get("videos", {})
    videos = sorted(set(list_videos(root)) | set(records))
    if not videos:
        raise DataPrepError(
            f"{root}: no videos under {IMAGES_DIR}/ and no manifest.json; run extract_frames first"
        )
    report = ValidationReport(root=str(root), num_frames=num_frames)
    with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
        results = pool.map(lambda v: check_video(root, v, num_frames, records.get(v)), videos)
        for video, (problems, notes) in tqdm(
            zip(videos, results, strict=True), total=len(videos), desc="validate", unit="video", disable=None
        ):
            if problems:
                report.bad[video] = problems
            else:
                report.good.append(video)
            if notes:
                report.warnings[video] = notes
    return report


def _bad_videos_line(report: ValidationReport, limit: int = 5) -> str:
    """``"2 of 6 videos are bad: a (first problem), b (first problem)"``, on one line."""
    named = [f"{video}: {problems[0]}" for video, problems in sorted(report.bad.items())[:limit]]
    more = f"; and {len(report.bad) - limit} more" if len(report.bad) > limit else ""
    total = len(report.good) + len(report.bad)
    return f"{len(report.bad)} of {total} videos are bad ({'; '.join(named)}{more})"


def write_report(report: ValidationReport, output_dir: str | Path, on_bad: str = "exclude") -> Path:
    """Write ``validation_report.json`` and ``valid_videos.txt`` (the good videos, a ``file_list_txt``).

    ``on_bad``: ``"exclude"`` keeps going without the bad videos; ``"fail"`` raises when any is bad.
    Returns the path of the valid-video list.

    Raises:
        DatasetValidationError: ``on_bad == "fail"`` and some video is bad (message: the summary).
        ValueError: an unknown ``on_bad``.
    """
    if on_bad not in ("exclude", "fail"):
        raise ValueError(f"on_bad must be 'exclude' or 'fail', got {on_bad!r}")
    out = Path(output_dir)
    atomic_write_text(out / REPORT_NAME, json.dumps(report.to_dict() | {"policy": on_bad}, indent=1) + "\n")
    if on_bad == "fail" and not report.ok:
        raise DatasetValidationError(
            f"{report.root}: {_bad_videos_line(report)}; report: {out / REPORT_NAME}; fix them, or use "
            "on_bad=exclude to train without them"
        )
    if not report.good:
        raise DatasetValidationError(
            f"{report.root}: no good video is left to train on: {_bad_videos_line(report)}; "
            f"report: {out / REPORT_NAME}"
        )
    valid = out / VALID_LIST_NAME
    atomic_write_text(valid, "".join(f"{v}\n" for v in report.good))
    if report.bad:
        logger.warning("%d bad videos excluded: %s", len(report.bad), ", ".join(sorted(report.bad)))
    return valid
