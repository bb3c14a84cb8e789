"""The data set manifest: one record per video, and the version derived from it.

The version is the first 16 hex digits of the SHA-256 of the manifest's canonical JSON (everything but
the version itself). Records hold no path, time or host name, so the same input extracted with the same
settings gives the same version anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sam2.data.layout import (
    ANNOTATIONS_DIR,
    IMAGES_DIR,
    MANIFEST_NAME,
    SAV_ANNOTATION_SUFFIX,
    STATE_DIR,
    DataPrepError,
    list_frames,
)
from sam2.data.rle import check_sav_annotation, read_json_document
from sam2.utils.atomic_io import atomic_write_text
from sam2.utils.file_hashing import sha256_of_file

MANIFEST_FORMAT = 1

IMAGE_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
"""What PIL raises for a damaged or hostile image file (a truncated IHDR chunk is a ValueError)."""


@dataclass(frozen=True)
class VideoRecord:
    """What the manifest says about one video.

    ``annotation_format`` is ``"png"`` (palette/binary PNG per annotated frame), ``"sav_json"`` (an SA-V
    ``_manual.json``) or ``"none"``. The two digests are SHA-256 over the ordered (file name, file SHA-256)
    pairs of the frames and of the annotation files.
    """

    num_frames: int
    width: int
    height: int
    object_ids: list[int]
    annotation_format: str
    num_annotated_frames: int
    frames_sha256: str
    annotations_sha256: str

    @classmethod
    def from_dict(cls, data: dict) -> VideoRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def combined_digest(named_digests: list[tuple[str, str]]) -> str:
    """One SHA-256 over ordered (name, file digest) pairs."""
    digest = hashlib.sha256()
    for name, file_digest in named_digests:
        digest.update(f"{name}:{file_digest}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def open_mask(mask_path: Path) -> Iterator[Image.Image]:
    """The mask PNG, opened lazily (its header read), in a mode that holds object ids (palette, grey or
    binary).

    Raises:
        DataPrepError: naming the file, for another mode (e.g. RGB) or a file PIL cannot read, also when
            the pixels fail to decode inside the `with` block (a truncated file).
    """
    try:
        with Image.open(mask_path) as image:
            if image.mode not in ("P", "L", "1"):
                raise DataPrepError(
                    f"{mask_path}: mask has mode {image.mode}; expected a palette (P) or binary (L/1) PNG "
                    "whose pixel values are object ids"
                )
            yield image
    except DataPrepError:
        raise
    except IMAGE_DECODE_ERRORS as err:
        raise DataPrepError(f"{mask_path}: not a readable PNG mask ({err})") from err


def mask_object_ids(mask_path: Path) -> set[int]:
    """Object ids in one mask PNG, background 0 excluded.

    Palette (``P``) and grey (``L``) masks hold ids as pixel values; a binary mask (mode ``1``, or ``L``
    with only 0 and 255) holds the single object 1.

    Raises:
        DataPrepError: an undecodable file or another image mode (e.g. RGB), naming the file.
    """
    with open_mask(mask_path) as image:
        mode = image.mode
        values = np.asarray(image)
    counts = np.bincount(values.reshape(-1).astype(np.int64), minlength=256)
    present = {int(i) for i in np.flatnonzero(counts) if i != 0}
    if mode == "1" or (mode == "L" and present <= {255}):
        return {1} if present else set()
    return present


def sav_object_ids(annotation: dict) -> list[int]:
    """Object ids of an SA-V masklet JSON (``masklet_id``, else ``0..masklet_num-1``)."""
    if annotation.get("masklet_id") is not None:
        return sorted(int(i) for i in annotation["masklet_id"])
    return list(range(int(annotation.get("masklet_num", 0))))


def scan_video(
    root: Path,
    video: str,
    frames_dir: Path | None = None,
    annotations: Path | None = None,
    frame_digests: Mapping[str, str] | None = None,
) -> VideoRecord:
    """Build a video's record from the files on disk.

    ``frames_dir`` and ``annotations`` default to the final locations under ``root``; extraction passes
    its partial folders instead. ``annotations`` is a folder of PNGs or an SA-V JSON file.
    ``frame_digests`` (file name -> SHA-256) are the digests of frames just written, which are then not
    read back; they must name exactly the frames in the folder.
    """
    frames_dir = frames_dir or root / IMAGES_DIR / video
    frames = list_frames(frames_dir)
    if not frames:
        raise DataPrepError(f"video {video!r}: no JPEG frames in {frames_dir}")
    try:
        with Image.open(frames[0]) as first:
            width, height = first.size
    except IMAGE_DECODE_ERRORS:  # an unreadable frame: validation reports the video
        width = height = 0
    if frame_digests is None:
        named = [(p.name, sha256_of_file(p)) for p in frames]
    elif set(frame_digests) == {p.name for p in frames}:
        named = [(p.name, frame_digests[p.name]) for p in frames]
    else:
        raise ValueError(f"video {video!r}: the digests given do not name the frames in {frames_dir}")
    frames_digest = combined_digest(named)

    if annotations is None:
        sav = root / ANNOTATIONS_DIR / f"{video}{SAV_ANNOTATION_SUFFIX}"
        annotations = sav if sav.is_file() else root / ANNOTATIONS_DIR / video
    object_ids: set[int] = set()
    if annotations.is_file():
        data = annotations.read_bytes()
        try:
            sav_json = check_sav_annotation(read_json_document(annotations), annotations, check_rles=False)
        except DataPrepError as err:
            raise DataPrepError(f"video {video!r}: {err}") from None
        object_ids = set(sav_object_ids(sav_json))
        fmt, num_annotated = "sav_json", len(sav_json.get("masklet", []))
        ann_digest = combined_digest([(annotations.name, hashlib.sha256(data).hexdigest())])
    elif annotations.is_dir():
        masks = sorted(annotations.glob("*.png"))
        for mask in masks:
            try:
                object_ids |= mask_object_ids(mask)
            except DataPrepError:  # an unreadable or RGB mask: validation reports and excludes the video
                continue
        fmt, num_annotated = "png", len(masks)
        ann_digest = combined_digest([(p.name, sha256_of_file(p)) for p in masks])
    else:
        fmt, num_annotated, ann_digest = "none", 0, combined_digest([])
    return VideoRecord(
        num_frames=len(frames),
        width=width,
        height=height,
        object_ids=sorted(object_ids),
        annotation_format=fmt,
        num_annotated_frames=num_annotated,
        frames_sha256=frames_digest,
        annotations_sha256=ann_digest,
    )


def _canonical(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def build_manifest(records: dict[str, VideoRecord], settings: dict) -> dict:
    """The manifest dict for ``records`` made with extraction ``settings``, its ``version`` included."""
    body = {
        "format": MANIFEST_FORMAT,
        "settings": settings,
        "num_videos": len(records),
        "num_frames": sum(r.num_frames for r in records.values()),
        "videos": {name: asdict(records[name]) for name in sorted(records)},
    }
    return {"version": hashlib.sha256(_canonical(body)).hexdigest()[:16], **body}


def dataset_version(manifest: dict) -> str:
    """Recompute the version of a manifest (equal to ``manifest["version"]`` unless it was edited)."""
    body = {k: v for k, v in manifest.items() if k != "version"}
    return hashlib.sha256(_canonical(body)).hexdigest()[:16]


def write_manifest(root: Path, manifest: dict) -> Path:
    path = root / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def load_manifest(root: Path) -> dict | None:
    """The manifest of the data set at ``root``, or None when it has none.

    Raises:
        DataPrepError: manifest.json is not readable JSON or not a manifest's shape (naming the file).
    """
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    manifest = read_json_document(path)
    videos = manifest.get("videos", {}) if isinstance(manifest, dict) else None
    if not isinstance(videos, dict) or not all(isinstance(r, dict) for r in videos.values()):
        raise DataPrepError(
            f"{path} is not a data set manifest (a dict whose 'videos' maps names to records); re-run "
            "extract_frames, or remove it to validate the folder as it is"
        )
    ids = [r.get("object_ids", []) for r in videos.values()]
    if not all(isinstance(i, list) and all(isinstance(v, int) for v in i) for i in ids):
        raise DataPrepError(
            f"{path}: a video's 'object_ids' is not a list of integers; re-run extract_frames"
        )
    return manifest


def record_path(root: Path, video: str) -> Path:
    """Where extraction keeps a finished video's record (with the settings that made it)."""
    return root / STATE_DIR / "records" / f"{video}.json"


def write_record(root: Path, video: str, record: VideoRecord, settings: dict) -> None:
    atomic_write_text(
        record_path(root, video), json.dumps({"settings": settings, "record": asdict(record)}, sort_keys=True)
    )


def read_record(root: Path, video: str, settings: dict) -> VideoRecord | None:
    """The stored record of ``video`` when it was made with the same ``settings``, else None."""
    path = record_path(root, video)
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("settings") != settings:
        return None
    return VideoRecord.from_dict(stored["record"])


def manifest_from_disk(root: Path, settings: dict | None = None) -> dict:
    """Scan every finished video under ``root`` and write a fresh manifest; returns it.

    Used by the demo generator and for folders laid out by hand.
    """
    from sam2.data.layout import list_videos

    records = {video: scan_video(root, video) for video in list_videos(root)}
    manifest = build_manifest(records, settings or {})
    write_manifest(root, manifest)
    return manifest
