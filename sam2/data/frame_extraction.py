"""Turn raw sources into the data set layout: videos to JPEG frames, DAVIS/MOSE folders and archives
normalised, SA-V videos with their ``_manual.json``.

Speed: videos are decoded by FFmpeg (PyAV) with its own frame threads, and frames are JPEG-encoded with
simplejpeg on a shared thread pool (it releases the GIL), as many videos at a time as there are workers.
BT.601 4:2:0 frames, the common H.264 case, are encoded straight from their Y/Cb/Cr planes; FFmpeg's RGB
conversion held the GIL long enough to keep two encoder threads at 1.6 of 2 cores.

Safety and resumption: each video is written to ``<output>/.sam2_prep/partial/<video>/``, its record is
stored, and then it is renamed into ``JPEGImages/<video>`` (annotations first, frames last: a frames folder
is the commit). A rerun skips videos whose record matches the settings, so a second run does no work and
a killed run restarts where it stopped. The manifest is written last, atomically.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np
import simplejpeg
from PIL import Image
from tqdm import tqdm

from sam2.data.archives import unpack_archive
from sam2.data.coco import extract_coco_dataset, find_coco_file
from sam2.data.layout import (
    ANNOTATIONS_DIR,
    IMAGE_SUFFIXES,
    IMAGES_DIR,
    SAV_ANNOTATION_SUFFIX,
    STATE_DIR,
    DataPrepError,
    frame_name,
    is_archive,
    is_video,
    mask_name,
)
from sam2.data.manifest import (
    IMAGE_DECODE_ERRORS,
    VideoRecord,
    build_manifest,
    open_mask,
    read_record,
    scan_video,
    write_manifest,
    write_record,
)

logger = logging.getLogger(__name__)

DEFAULT_JPEG_QUALITY = 90
"""libjpeg quality of extracted frames (1-100, Pillow's scale; 90 keeps artefacts well below annotation noise)."""


@dataclass(frozen=True)
class ExtractionSettings:
    """Settings that change the extracted bytes (and so the data set version).

    Args:
        fps: keep about this many frames per second of video time; None keeps every frame.
        jpeg_quality: libjpeg quality of frames encoded from videos (copied JPEG frames are kept as is).
    """

    fps: float | None = None
    jpeg_quality: int = DEFAULT_JPEG_QUALITY

    def __post_init__(self) -> None:
        if self.fps is not None and self.fps <= 0:
            raise DataPrepError(f"--fps must be positive, got {self.fps}")
        if not 1 <= self.jpeg_quality <= 100:
            raise DataPrepError(f"--quality must be in 1..100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class VideoSource:
    """One video to produce: a video file or a folder of frames, plus its annotations (if any)."""

    name: str
    media: Path
    annotations: Path | None = None

    @property
    def is_video_file(self) -> bool:
        return self.media.is_file()


@dataclass
class ExtractionResult:
    """What :func:`extract_dataset` did. ``output`` is the local root or the ``s3://`` URI."""

    output: str
    version: str
    num_videos: int
    num_frames: int
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dropped: dict[str, str] = field(default_factory=dict)
    """Source folders that hold no video to extract, by name, with the reason (e.g. an empty folder)."""

    def summary(self) -> str:
        lines = [
            f"{self.num_videos} videos, {self.num_frames} frames -> {self.output} (version {self.version}); "
            f"{len(self.extracted)} extracted, {len(self.skipped)} already done, {self.seconds:.1f}s"
        ]
        lines += [f"  dropped {name}: {reason}" for name, reason in sorted(self.dropped.items())]
        return "\n".join(lines)


# ---- decoding one video ---------------------------------------------------------------------------


def _describe_streams(container: av.container.InputContainer) -> str:
    kinds = [f"#{s.index} {s.type or 'unknown'}" for s in container.streams]
    return ", ".join(kinds) or "none"


_BT601_COLORSPACES = frozenset({2, 5, 6})
"""FFmpeg ``AVColorSpace`` values a JPEG decoder reads right: unspecified, BT.470BG and SMPTE 170M (BT.601)."""


def _to_full_range(plane: np.ndarray, low: int, high: int, scale: int, offset: int) -> np.ndarray:
    """Video ("limited", ``low..high``) to JFIF (0..255) levels: ``((v - low) * scale + offset) >> 8``.

    Fixed point in uint16 (scale/256 approximates 255/219 for luma, 255/224 for chroma; at most one level
    from exact rounding): 2.7x faster than a lookup table, and numpy drops the GIL in each step.
    """
    out = np.clip(plane, low, high).astype(np.uint16)
    out -= low
    out *= scale
    out += offset
    out >>= 8
    return out.astype(np.uint8)


def _plane(frame: av.VideoFrame, index: int, height: int, width: int) -> np.ndarray:
    """One plane of ``frame`` as a (height, width) view, without FFmpeg's line padding."""
    plane = frame.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height, :width]


def _jfif_planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The frame's own Y, Cb, Cr planes in JFIF's full range, when JPEG can store them as they are.

    That is 8-bit 4:2:0 in BT.601 (or untagged, which FFmpeg also reads as BT.601), the common case of
    H.264 files. Encoding them directly skips the YUV->RGB conversion and libjpeg's RGB->YCbCr and chroma
    subsampling, and keeps the source's chroma samples. Other frames (BT.709 tags, 4:2:2, 10-bit) return
    None and go through RGB, so that their colours stay those FFmpeg decodes.
    """
    name = frame.format.name
    if name not in ("yuv420p", "yuvj420p") or frame.colorspace not in _BT601_COLORSPACES:
        return None
    height, width = frame.height, frame.width
    chroma = ((height + 1) // 2, (width + 1) // 2)
    y = _plane(frame, 0, height, width)
    cb, cr = _plane(frame, 1, *chroma), _plane(frame, 2, *chroma)
    if name == "yuvj420p" or frame.color_range == 2:  # AVCOL_RANGE_JPEG: already full range
        return np.ascontiguousarray(y), np.ascontiguousarray(cb), np.ascontiguousarray(cr)
    return (
        _to_full_range(y, 16, 235, 298, 132),
        _to_full_range(cb, 16, 240, 291, 255),
        _to_full_range(cr, 16, 240, 291, 255),
    )


def upright_quarter_turns(frame: av.VideoFrame, video: Path) -> int:
    """Counter-clockwise quarter turns (``np.rot90``'s ``k``) that show ``frame`` upright.

    Phones store portrait video as landscape pixels plus a display matrix (ISO/IEC 14496-12 ``tkhd``),
    which players and the ``ffmpeg`` command line apply; frames saved without it are sideways, and so
    disagree with annotations drawn on the video as it plays.

    Raises:
        DataPrepError: the matrix mirrors the picture or turns it by other than a multiple of 90 degrees.
    """
    side_data = frame.side_data.get("DISPLAYMATRIX")
    if side_data is None:
        return 0
    # a, b, c, d of the row-major 3x3 matrix, 16.16 fixed point in native byte order
    a, b, _, c, d = (float(v) / 65536 for v in np.frombuffer(bytes(side_data), dtype=np.int32)[:5])
    if a * d - b * c <= 0:
        raise DataPrepError(
            f"{video}: its display matrix mirrors the picture, which extraction does not apply. Re-encode it "
            "upright first, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4` (ffmpeg applies the matrix)"
        )
    degrees = -math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    turns = round(degrees / 90)
    if abs(degrees - 90 * turns) > 1.0:
        raise DataPrepError(
            f"{video}: its display matrix turns the picture by {degrees:.1f} degrees; only multiples of 90 "
            "are supported. Re-encode it upright first, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`"
        )
    return turns % 4


def _encode_jpeg(frame: av.VideoFrame, dest: Path, quality: int, quarter_turns: int = 0) -> str:
    """One frame, turned by ``quarter_turns`` (see :func:`upright_quarter_turns`), to a baseline JPEG
    (4:2:0, the same libjpeg-turbo quality scale as Pillow's); returns the file's SHA-256, taken from the
    bytes in memory so that the manifest need not read them back.

    simplejpeg rather than Pillow: Pillow keeps the GIL while it encodes, so encoder threads ran one at a
    time (0.95x on 2 threads); simplejpeg releases it and skips Pillow's image object (1.4x faster alone).
    """
    planes = _jfif_planes(frame)
    if planes is not None:
        if quarter_turns:
            planes = tuple(np.ascontiguousarray(np.rot90(p, quarter_turns)) for p in planes)
        data = simplejpeg.encode_jpeg_yuv_planes(*planes, quality=quality)
    else:
        rgb = frame.to_ndarray(format="rgb24")
        if quarter_turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, quarter_turns))
        data = simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB", colorsubsampling="420")
    dest.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def decode_video_to_frames(
    video: Path,
    frames_dir: Path,
    settings: ExtractionSettings,
    encode: ThreadPoolExecutor,
    max_pending: int = 8,
) -> dict[str, str]:
    """Decode ``video`` into ``frames_dir/00000.jpg ...`` (every frame, or resampled to ``settings.fps``),
    upright as players show it (see :func:`upright_quarter_turns`).

    JPEG encoding runs on ``encode``; at most ``max_pending`` frames wait in memory. Returns the SHA-256
    of each frame file written, by file name.

    Raises:
        DataPrepError: the file is not a video FFmpeg can decode, has no video stream (unknown codec),
            is truncated (fewer frames than its header declares, or a decode error), or has no frame.
    """
    try:
        container = av.open(str(video))
    except av.FFmpegError as err:
        raise DataPrepError(
            f"{video}: cannot open as a video ({err}); the file may be truncated, empty or not a video"
        ) from None
    with container:
        if not container.streams.video:
            raise DataPrepError(
                f"{video}: no video stream FFmpeg can decode (streams: {_describe_streams(container)}); the "
                "codec is unsupported or the file holds no video. Re-encode it, e.g. "
                "`ffmpeg -i IN -c:v libx264 OUT.mp4`"
            )
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = stream.frames
        declared_s = _declared_duration_s(container, stream)
        first_time: float | None = None
        last_time: float | None = None
        pending: deque[tuple[str, Future[str]]] = deque()
        digests: dict[str, str] = {}
        decoded = kept = 0
        last_bucket = -1
        quarter_turns = 0
        try:
            for frame in container.decode(stream):
                decoded += 1
                if frame.time is not None:
                    first_time = frame.time if first_time is None else min(first_time, frame.time)
                    last_time = frame.time if last_time is None else max(last_time, frame.time)
                if decoded == 1:
                    quarter_turns = upright_quarter_turns(frame, video)
                if settings.fps is not None:
                    seconds = (
                        frame.time
                        if frame.time is not None
                        else (decoded - 1) / float(stream.average_rate or 25)
                    )
                    bucket = int(seconds * settings.fps + 1e-6)
                    if bucket <= last_bucket:
                        continue
                    last_bucket = bucket
                name = frame_name(kept)
                pending.append(
                    (
                        name,
                        encode.submit(
                            _encode_jpeg, frame, frames_dir / name, settings.jpeg_quality, quarter_turns
                        ),
                    )
                )
                kept += 1
                while len(pending) >= max_pending:
                    name, fut = pending.popleft()
                    digests[name] = fut.result()
        except av.FFmpegError as err:
            raise DataPrepError(
                f"{video}: decoding failed after {decoded} frames ({err}); the file is truncated or corrupt"
            ) from None
        finally:
            for name, fut in pending:
                digests[name] = fut.result()
    if decoded == 0:
        raise DataPrepError(f"{video}: the video stream decodes to 0 frames; nothing to extract")
    if declared and decoded < declared:
        raise DataPrepError(
            f"{video}: only {decoded} of the {declared} frames its header declares could be decoded; the file is "
            "truncated. Re-download or re-encode it"
        )
    if declared_s is not None and first_time is not None and last_time is not None:
        period = 1.0 / float(stream.average_rate) if stream.average_rate else 0.0
        decoded_s = last_time - first_time + period
        if declared_s - decoded_s > max(1.0, 0.1 * declared_s, 3 * period):
            raise DataPrepError(
                f"{video}: frames end at {decoded_s:.2f} s but the container declares {declared_s:.2f} s; the "
                "file is truncated. Re-download or re-encode it"
            )
    return digests


def _declared_duration_s(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """The video's duration as its container declares it (the stream's, else the file's), in seconds;
    None when neither is stated. A Matroska/WebM file states no frame count, only this."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


# ---- copying a folder of frames ------------------------------------------------------------------


def _frame_numbering(names: list[str]) -> dict[str, int]:
    """Map frame stems to frame numbers: numeric stems keep their number, others are numbered in order."""
    if names and all(re.fullmatch(r"\d+", n) for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(sorted(names))}


def copy_frame_folder(
    source: VideoSource, frames_dir: Path, masks_dir: Path | None, settings: ExtractionSettings
) -> int:
    """Copy (JPEG) or convert (PNG) frames to ``%05d.jpg`` and masks to the matching ``%05d.png``.

    Raises:
        DataPrepError: no frames, an unreadable PNG frame or mask, a mask mode that holds no object ids,
            or a mask whose name matches no frame (each named by its source file).
    """
    frames = {p.stem: p for p in sorted(source.media.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not frames:
        raise DataPrepError(f"video {source.name!r}: no frames (.jpg/.png) in {source.media}")
    numbering = _frame_numbering(list(frames))
    for stem, path in frames.items():
        dest = frames_dir / frame_name(numbering[stem])
        if path.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(path, dest)
        else:
            try:
                with Image.open(path) as image:
                    image.convert("RGB").save(dest, format="JPEG", quality=settings.jpeg_quality)
            except IMAGE_DECODE_ERRORS as err:  # PIL's errors for truncated or non-image files
                # Kept as it is: validation reports the video (on_bad=exclude drops it, fail stops).
                logger.warning(
                    "video %r: frame %s cannot be decoded (%s); validation will report it",
                    source.name,
                    path,
                    err,
                )
                shutil.copyfile(path, dest)
    if masks_dir is not None and source.annotations is not None:
        masks_dir.mkdir(parents=True)
        for mask in sorted(source.annotations.glob("*.png")):
            if mask.stem not in numbering:
                raise DataPrepError(
                    f"video {source.name!r}: mask {mask} has no frame of the same name in {source.media}"
                )
            try:
                with open_mask(mask):  # the header only
                    pass
            except DataPrepError as err:  # copied as it is: validation reports and excludes the video
                logger.warning("video %r: %s; validation will report it", source.name, err)
            shutil.copyfile(mask, masks_dir / mask_name(numbering[mask.stem]))
    return len(frames)


# ---- finding the videos of a source -------------------------------------------------------------


def find_images_root(root: Path, max_depth: int = 3) -> Path | None:
    """The folder that holds ``JPEGImages`` (DAVIS/MOSE), searched breadth first up to ``max_depth`` levels
    below ``root`` (hidden folders skipped); None when there is none."""
    level = [root]
    for _ in range(max_depth + 1):
        for folder in level:
            if (folder / IMAGES_DIR).is_dir():
                return folder
        level = [c for f in level for c in sorted(f.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    return None


def _video_folders(parent: Path, dropped: dict[str, str] | None = None) -> dict[str, Path]:
    """Sub-folders that directly hold frames or masks; a resolution level (DAVIS ``480p``) is descended.

    Sibling folders that hold no image (an empty video folder) are put in ``dropped`` with the reason.
    """
    children = {c.name: c for c in sorted(parent.iterdir()) if c.is_dir() and not c.name.startswith(".")}
    has_files = {
        n: c for n, c in children.items() if any(p.suffix.lower() in IMAGE_SUFFIXES for p in c.iterdir())
    }
    if has_files or not children:
        if dropped is not None:
            for name in sorted(set(children) - set(has_files)):
                dropped[name] = f"{children[name]} holds no frame (.jpg/.png); nothing to extract"
        return has_files
    preferred = children.get("480p") or next(iter(children.values()))
    logger.info("descending into %s (resolution level)", preferred)
    return _video_folders(preferred, dropped)


def discover_sources(root: Path, dropped: dict[str, str] | None = None) -> list[VideoSource]:
    """The videos of a local folder or file: a DAVIS/MOSE tree, SA-V videos with JSON, or plain videos.

    ``dropped`` receives the video folders left out (e.g. empty ones) with the reason.

    Raises:
        DataPrepError: nothing usable found, or two videos with the same name.
    """
    if root.is_file():
        if not is_video(root):
            raise DataPrepError(
                f"{root}: unsupported input; expected a video ({', '.join(s for s in ('.mp4', '.mov', '.mkv', '.webm', '.avi'))}), "
                "an archive (.tar, .tar.gz, .zip) or a folder"
            )
        sav = root.with_name(root.stem + SAV_ANNOTATION_SUFFIX)
        return [VideoSource(root.stem, root, sav if sav.is_file() else None)]
    if not root.is_dir():
        raise DataPrepError(f"{root}: no such file or folder")

    davis_root = find_images_root(root)
    if davis_root is not None:
        frames = _video_folders(davis_root / IMAGES_DIR, dropped)
        masks = (
            _video_folders(davis_root / ANNOTATIONS_DIR) if (davis_root / ANNOTATIONS_DIR).is_dir() else {}
        )
        if not frames:
            raise DataPrepError(f"{davis_root / IMAGES_DIR}: no video folders with frames")
        return [VideoSource(name, path, masks.get(name)) for name, path in sorted(frames.items())]

    sources: dict[str, VideoSource] = {}
    for path in sorted(root.rglob("*")):
        if not (path.is_file() and is_video(path)) or any(
            part.startswith(".") for part in path.relative_to(root).parts
        ):
            continue
        if path.stem in sources:
            raise DataPrepError(
                f"two videos are both named {path.stem!r}: {sources[path.stem].media} and {path}; rename one"
            )
        sav = path.with_name(path.stem + SAV_ANNOTATION_SUFFIX)
        sources[path.stem] = VideoSource(path.stem, path, sav if sav.is_file() else None)
    if not sources:
        raise DataPrepError(
            f"{root}: found neither a {IMAGES_DIR}/ folder (DAVIS/MOSE layout) nor videos "
            "(.mp4, .mov, .mkv, .webm, .avi)"
        )
    return list(sources.values())


# ---- producing one video --------------------------------------------------------------------------


def _final_annotation_path(out_root: Path, source: VideoSource) -> Path | None:
    if source.annotations is None:
        return None
    if source.annotations.is_file():
        return out_root / ANNOTATIONS_DIR / f"{source.name}{SAV_ANNOTATION_SUFFIX}"
    return out_root / ANNOTATIONS_DIR / source.name


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def produce_video(
    source: VideoSource,
    out_root: Path,
    settings: ExtractionSettings,
    encode: ThreadPoolExecutor,
    max_pending: int = 8,
) -> tuple[VideoRecord, bool]:
    """Write one video into ``out_root`` unless a matching finished copy is there.

    Returns its record and whether any work was done.
    """
    settings_dict = asdict(settings)
    final_frames = out_root / IMAGES_DIR / source.name
    final_ann = _final_annotation_path(out_root, source)
    record = read_record(out_root, source.name, settings_dict)
    if record is not None and final_frames.is_dir() and (final_ann is None or final_ann.exists()):
        return record, False

    partial = out_root / STATE_DIR / "partial" / source.name
    shutil.rmtree(partial, ignore_errors=True)
    frames_dir = partial / IMAGES_DIR
    frames_dir.mkdir(parents=True)
    _remove(final_frames)  # an unrecorded or outdated copy from an earlier run
    partial_ann: Path | None = None
    frame_digests = None  # copied frames are hashed from disk
    if source.is_video_file:
        frame_digests = decode_video_to_frames(source.media, frames_dir, settings, encode, max_pending)
        if source.annotations is not None:
            partial_ann = partial / source.annotations.name
            shutil.copyfile(source.annotations, partial_ann)
    else:
        partial_ann = partial / ANNOTATIONS_DIR if source.annotations is not None else None
        copy_frame_folder(source, frames_dir, partial_ann, settings)
    record = scan_video(
        out_root,
        source.name,
        frames_dir=frames_dir,
        annotations=partial_ann or partial / "none",
        frame_digests=frame_digests,
    )
    write_record(out_root, source.name, record, settings_dict)
    if final_ann is not None and partial_ann is not None:
        final_ann.parent.mkdir(parents=True, exist_ok=True)
        _remove(final_ann)
        partial_ann.rename(final_ann)
    final_frames.parent.mkdir(parents=True, exist_ok=True)
    frames_dir.rename(final_frames)  # the commit point
    shutil.rmtree(partial, ignore_errors=True)
    return record, True


# ---- the whole step ----------------------------------------------------------------------------------


def _default_work_dir(output: str) -> Path:
    import hashlib

    return Path(tempfile.gettempdir()) / "sam2-extract" / hashlib.sha256(output.encode()).hexdigest()[:12]


def _resolve_input(source: str, work_dir: Path, store_factory: Callable) -> Path:
    """A local path for ``source``: downloads ``s3://`` inputs and unpacks archives under ``work_dir``."""
    from sam2.storage import is_s3_uri, parse_s3_uri

    if is_s3_uri(source):
        loc = parse_s3_uri(source)
        store = store_factory()
        local_name = Path(loc.key.rstrip("/")).name or loc.bucket
        if is_video(Path(local_name)) or is_archive(Path(local_name)):
            local = work_dir / "input" / local_name
            unpacked_before = is_archive(local) and _unpack_target(local, work_dir).is_dir()
            if not local.is_file() and not unpacked_before:  # a rerun after the unpack needs no download
                store.download_file(source, local)
        else:
            local = work_dir / "input" / "folder"
            store.sync_to_local(source, local, require_marker=False)
    else:
        local = Path(source).expanduser()
        if not local.exists():
            raise DataPrepError(f"input {source} does not exist")
    if is_archive(local) and (local.is_file() or _unpack_target(local, work_dir).is_dir()):
        unpacked = unpack_archive(local, _unpack_target(local, work_dir))
        if is_s3_uri(source):  # our own download: extraction reads only the unpacked tree, free its disk now
            local.unlink(missing_ok=True)
        return unpacked
    return local


def _unpack_target(archive: Path, work_dir: Path) -> Path:
    return work_dir / "unpacked" / archive.name.split(".")[0]


def extract_dataset(
    source: str | Path,
    output: str | Path,
    *,
    fps: float | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    workers: int | None = None,
    work_dir: str | Path | None = None,
) -> ExtractionResult:
    """Produce the data set layout and ``manifest.json`` from ``source`` into ``output``.

    ``source``: a video, a folder (DAVIS/MOSE tree, SA-V videos with ``_manual.json``, plain videos, or a
    COCO export: one COCO JSON and its images, see :mod:`sam2.data.coco`), an archive of one, or an
    ``s3://`` URI of any of them. ``output``: a local folder, or an ``s3://`` prefix
    (prepared under ``work_dir`` and published with a ``_SUCCESS`` marker; credentials from the
    environment, see :mod:`sam2.storage`).

    Raises:
        DataPrepError: bad input, naming the file or video; finished videos stay, nothing half-written
            is visible under ``JPEGImages/`` or ``Annotations/``.
    """
    from sam2.storage import ObjectStore, is_s3_uri

    start = time.perf_counter()
    settings = ExtractionSettings(fps=fps, jpeg_quality=jpeg_quality)
    workers = max(1, workers or os.cpu_count() or 1)
    output_str = str(output)
    work = Path(work_dir) if work_dir else _default_work_dir(output_str)
    stores: list[ObjectStore] = []

    def store_factory() -> ObjectStore:
        if not stores:
            stores.append(ObjectStore(workers=max(4, workers)))
        return stores[0]

    local_input = _resolve_input(str(source), work, store_factory)
    out_root = work / "output" if is_s3_uri(output_str) else Path(output_str)
    out_root.mkdir(parents=True, exist_ok=True)
    maybe_coco = local_input.suffix == ".json" or (
        local_input.is_dir() and find_images_root(local_input) is None
    )
    coco_file = find_coco_file(local_input) if maybe_coco else None
    if coco_file is not None:  # an image data set (COCO JSON + images), laid out by sam2.data.coco
        coco = extract_coco_dataset(coco_file, out_root)
        if is_s3_uri(output_str):
            store_factory().upload_folder(out_root, output_str, exclude=(STATE_DIR,))
        n = coco.num_images
        return ExtractionResult(output_str, coco.version, n, n, seconds=time.perf_counter() - start)
    dropped: dict[str, str] = {}
    sources = discover_sources(local_input, dropped)
    logger.info("%d videos found in %s", len(sources), source)
    for name, reason in sorted(dropped.items()):
        logger.warning("video %r dropped: %s", name, reason)

    records: dict[str, VideoRecord] = {}
    extracted: list[str] = []
    skipped: list[str] = []
    video_workers = min(len(sources), max(1, workers))
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="jpeg") as encode,
        ThreadPoolExecutor(video_workers, thread_name_prefix="video") as videos,
        tqdm(total=len(sources), unit="video", desc="extract frames", disable=None) as bar,
    ):
        futures = {
            videos.submit(produce_video, s, out_root, settings, encode, 2 * workers): s for s in sources
        }
        errors: list[DataPrepError] = []
        for fut, src in futures.items():
            try:
                record, worked = fut.result()
            except DataPrepError as err:
                errors.append(err)
                bar.update(1)
                continue
            records[src.name] = record
            (extracted if worked else skipped).append(src.name)
            bar.update(1)
    if errors:
        detail = "\n  ".join(str(e) for e in errors)
        raise DataPrepError(
            f"{len(errors)} of {len(sources)} videos could not be extracted (the others are done and will be "
            f"skipped on a rerun):\n  {detail}"
        )
    shutil.rmtree(out_root / STATE_DIR / "partial", ignore_errors=True)
    manifest = build_manifest(records, asdict(settings))
    write_manifest(out_root, manifest)
    if is_s3_uri(output_str):
        store_factory().upload_folder(out_root, output_str, exclude=(STATE_DIR,))
    return ExtractionResult(
        output=output_str,
        version=manifest["version"],
        num_videos=manifest["num_videos"],
        num_frames=manifest["num_frames"],
        extracted=sorted(extracted),
        skipped=sorted(skipped),
        seconds=time.perf_counter() - start,
        dropped=dropped,
    )
