"""Names of the on-disk data set layout, shared by extraction, validation, splitting and the demo set."""

from __future__ import annotations

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
