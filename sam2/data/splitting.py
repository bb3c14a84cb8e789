"""Deterministic train/val split of a data set's videos, optionally stratified by object count.

The lists are plain text, one video per line, usable as ``dataset.file_list_txt`` of the training config
and as ``--video_list_file`` of inference and evaluation. The same videos, fraction and seed always give
the same lists (videos are sorted before a seeded shuffle), and no video is in both.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from sam2.data.coco import coco_annotation_path, coco_object_counts
from sam2.data.layout import SAV_ANNOTATION_SUFFIX, DataPrepError
from sam2.data.manifest import load_manifest, mask_object_ids, sav_object_ids
from sam2.utils.atomic_io import atomic_write_text

TRAIN_LIST_NAME = "train.txt"
VAL_LIST_NAME = "val.txt"
VALID_LIST_NAME = "valid_videos.txt"  # validation's list of good videos (sam2.data.validation)


@dataclass
class SplitResult:
    train: list[str]
    val: list[str]
    train_file: Path
    val_file: Path

    def summary(self) -> str:
        return f"{len(self.train)} train / {len(self.val)} val videos -> {self.train_file}, {self.val_file}"


def split_videos(
    videos: list[str], val_fraction: float = 0.2, seed: int = 0, strata: dict[str, int] | None = None
) -> tuple[list[str], list[str]]:
    """Split ``videos`` into sorted (train, val) lists.

    ``round(len(videos) * val_fraction)`` videos go to val (at least one, and at least one stays in train,
    when there are two or more videos and the fraction is positive). With ``strata`` (video -> group, e.g.
    its object count) each group contributes in proportion to its size (largest remainders).

    Raises:
        DataPrepError: ``val_fraction`` outside [0, 1) or duplicate video names.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataPrepError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = sorted(videos)
    if len(set(names)) != len(names):
        raise DataPrepError("duplicate video names in the list to split")
    total_val = round(len(names) * val_fraction)
    if val_fraction > 0 and len(names) >= 2:
        total_val = min(max(total_val, 1), len(names) - 1)
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(strata.get(name, 0) if strata else 0, []).append(name)
    # per-group quotas by largest remainder so that they sum to total_val
    exact = {g: len(members) * total_val / max(1, len(names)) for g, members in groups.items()}
    quota = {g: int(v) for g, v in exact.items()}
    for g in sorted(groups, key=lambda g: (-(exact[g] - quota[g]), g))[: total_val - sum(quota.values())]:
        quota[g] += 1
    rng = random.Random(seed)
    val: list[str] = []
    for g in sorted(groups):
        members = list(groups[g])
        rng.shuffle(members)
        val += members[: quota[g]]
    val_set = set(val)
    return [n for n in names if n not in val_set], sorted(val)


def videos_in_gt_root(gt_root: Path) -> list[str]:
    """Videos annotated under ``gt_root``: PNG mask folders and SA-V ``<video>_manual.json`` files."""
    if not gt_root.is_dir():
        raise DataPrepError(f"--gt_root {gt_root} is not a folder")
    names = {p.name for p in gt_root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    names |= {p.name[: -len(SAV_ANNOTATION_SUFFIX)] for p in gt_root.glob(f"*{SAV_ANNOTATION_SUFFIX}")}
    return sorted(names)


def object_counts(gt_root: Path, videos: list[str]) -> dict[str, int]:
    """Objects per video: from ``manifest.json`` next to ``gt_root`` when present, else from the masks."""
    manifest = load_manifest(gt_root.parent) or {}
    records = manifest.get("videos", {})
    counts = {}
    for video in videos:
        if video in records:
            counts[video] = len(records[video]["object_ids"])
            continue
        sav = gt_root / f"{video}{SAV_ANNOTATION_SUFFIX}"
        if sav.is_file():
            counts[video] = len(sav_object_ids(json.loads(sav.read_text())))
        else:
            ids: set[int] = set()
            for mask in sorted((gt_root / video).glob("*.png")):
                ids |= mask_object_ids(mask)
            counts[video] = len(ids)
    return counts


def read_video_list(path: str | Path, setting: str = "--video_list") -> list[str]:
    """Video names in a list file, one per line (blank lines skipped).

    Raises:
        DataPrepError: the file is missing or unreadable (the message names ``setting`` and the path).
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise DataPrepError(
            f"{setting} {path}: cannot read it ({reason}); pass a text file with one video name per line"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def default_video_list(gt_root: Path) -> Path | None:
    """Validation's ``valid_videos.txt`` when it sits next to the data: in the data set root (where
    ``validate_dataset --report_dir <root>`` and the pipeline put it) or in ``<root>_validation/``
    (``validate_dataset``'s default report folder); None when neither exists."""
    from sam2.data.validation import default_report_dir

    if gt_root.is_file():  # a COCO JSON
        root = gt_root.parent
    else:  # a COCO data set root, or the Annotations/ folder of a video data set
        root = gt_root if coco_annotation_path(gt_root) is not None else gt_root.parent
    for folder in (root, default_report_dir(root)):
        candidate = folder / VALID_LIST_NAME
        if candidate.is_file():
            return candidate
    return None


def split_dataset(
    gt_root: str | Path,
    output_dir: str | Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    stratify: bool = False,
    video_list: str | Path | None = None,
) -> SplitResult:
    """Split the videos annotated under ``gt_root`` and write ``train.txt`` and ``val.txt`` to ``output_dir``.

    ``video_list``: restrict to the videos in this file (e.g. ``valid_videos.txt`` from validation).
    A COCO image data set (``gt_root`` is its root or its COCO JSON) is split by image file name.

    Raises:
        DataPrepError: no videos, or names in ``video_list`` that ``gt_root`` does not hold.
    """
    gt_root = Path(gt_root)
    coco = coco_annotation_path(gt_root)
    coco_counts = coco_object_counts(coco) if coco is not None else None
    videos = sorted(coco_counts) if coco_counts is not None else videos_in_gt_root(gt_root)
    if video_list is not None:
        wanted = read_video_list(video_list)
        unknown = sorted(set(wanted) - set(videos))
        if unknown:
            raise DataPrepError(
                f"{video_list} names videos that {gt_root} does not hold: {', '.join(unknown[:10])}"
            )
        videos = sorted(set(wanted))
    if not videos:
        raise DataPrepError(f"{gt_root}: no annotated videos to split")
    strata = (coco_counts or object_counts(gt_root, videos)) if stratify else None
    train, val = split_videos(videos, val_fraction, seed, strata)
    out = Path(output_dir)
    train_file, val_file = out / TRAIN_LIST_NAME, out / VAL_LIST_NAME
    atomic_write_text(train_file, "".join(f"{v}\n" for v in train))
    atomic_write_text(val_file, "".join(f"{v}\n" for v in val))
    return SplitResult(train, val, train_file, val_file)
