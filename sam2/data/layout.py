"""Names of the on-disk data set layout, shared by extraction, validation, splitting and the demo set,
and where a data set version lives on the optional shared volume."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

IMAGES_DIR = "JPEGImages"
ANNOTATIONS_DIR = "Annotations"
MANIFEST_NAME = "manifest.json"
STATE_DIR = ".sam2_prep"
"""Book-keeping of an extraction run: per-video records and partial (unfinished) videos."""

SAV_ANNOTATION_SUFFIX = "_manual.json"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

SHARED_DATA_ENV = "SAM2_SHARED_DATA_DIR"
"""Mount path of a ReadWriteMany volume holding data set copies (k8s/shared-data-pvc.yaml); unset: none."""
SHARED_DATA_MOUNT = "/shared-data"
"""Where the pipeline's steps and the training job's pods mount that volume (SHARED_DATA_ENV's value)."""


def shared_dataset_dir(data_uri: str, env: Mapping[str, str] | None = None) -> Path | None:
    """The shared volume's copy of the data set `data_uri` (``s3://<bucket>/<key>``):
    ``<SAM2_SHARED_DATA_DIR>/<bucket>/<key>``, one per data set version, reused across steps, nodes and
    runs; None when no shared volume is mounted (`env`, default os.environ, lacks SHARED_DATA_ENV)."""
    shared = (os.environ if env is None else env).get(SHARED_DATA_ENV, "").strip()
    if not shared:
        return None
    from sam2.storage import parse_s3_uri

    loc = parse_s3_uri(data_uri)
    return Path(shared) / loc.bucket / loc.key.strip("/")


class DataPrepError(ValueError):
    """Bad input to a data preparation step; the message names the file or video and what to do."""


def frame_name(index: int) -> str:
    """File name of frame ``index`` (0-based): ``00000.jpg``."""
    return f"{index:05d}.jpg"


def mask_name(index: int) -> str:
    """File name of the mask of frame ``index``: ``00000.png``."""
    return f"{index:05d}.png"


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in ARCHIVE_SUFFIXES)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def list_videos(root: Path) -> list[str]:
    """Names of the finished videos under ``root/JPEGImages`` (hidden folders skipped), sorted."""
    images = root / IMAGES_DIR
    if not images.is_dir():
        return []
    return sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_frames(video_dir: Path) -> list[Path]:
    """The JPEG frames of one video folder in name order."""
    return sorted(p for p in video_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
