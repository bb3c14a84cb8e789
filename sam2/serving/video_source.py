"""Stage the requested page of a video's frames as a local folder of `<index>.jpg` files.

Only the page (`start_frame` .. `start_frame + max_frames - 1`) is fetched: from an `s3://` folder of
JPEG frames (the pipeline's `JPEGImages/<video>/` layout) only those objects are downloaded; a video file
(an `s3://` object or an http(s) URL) is decoded up to the page's end, and its page frames are written as
JPEG (quality 95) as the pipeline's extract step turns videos into frames; uploaded frames are written
as they came. The predictor then reads the folder exactly as `vos_inference` reads a data set video.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sam2.serving.request import RequestError, VideoRef
from sam2.utils.misc import JPEG_SUFFIXES, VIDEO_FILE_SUFFIXES

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95
DOWNLOAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedPage:
    """A page of frames on local disk: `folder/00000.jpg` is frame `start_frame` of the video."""

    folder: Path
    start_frame: int
    num_frames: int
    total_frames: int | None  # None when a video file's length is not known without decoding it all


def stage_page(
    video: VideoRef,
    start_frame: int,
    max_frames: int,
    folder: Path,
    max_download_bytes: int,
) -> StagedPage:
    """Write frames [start_frame, start_frame + max_frames) of `video` into `folder` (an empty folder).

    Raises RequestError for a video that cannot be read (missing, not JPEG frames or a video file, too
    large, or shorter than `start_frame`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if video.frames:
        total = len(video.frames)
        _check_start(start_frame, total, "the uploaded frames")
        page = video.frames[start_frame : start_frame + max_frames]
        for i, data in enumerate(page):
            (folder / f"{i:05d}.jpg").write_bytes(data)
        return StagedPage(folder, start_frame, len(page), total)
    uri = str(video.uri)
    if uri.startswith("s3://"):
        return _stage_s3(uri, start_frame, max_frames, folder, max_download_bytes)
    return _stage_url(uri, start_frame, max_frames, folder, max_download_bytes)


def _check_start(start_frame: int, total: int, what: str) -> None:
    if start_frame >= total:
        raise RequestError(f"'start_frame' {start_frame} is past the end of {what} ({total} frames)")


def _stage_s3(uri: str, start_frame: int, max_frames: int, folder: Path, max_bytes: int) -> StagedPage:
    from sam2.storage import ObjectStore, StorageError

    store = ObjectStore()
    try:
        if uri.endswith(VIDEO_FILE_SUFFIXES):
            local = folder.parent / ("source" + Path(uri).suffix)
            listing = store.list_objects(uri.rsplit("/", 1)[0])
            size = listing.get(uri.rsplit("/", 1)[1])
            if size is None:
                raise RequestError(f"unreadable video: {uri} does not exist")
            if size > max_bytes:
                raise RequestError(f"video {uri} is {size} bytes, more than this server takes ({max_bytes})")
            store.download_file(uri, local)
            return _decode_page(local, uri, start_frame, max_frames, folder)
        listing = store.list_objects(uri)
    except StorageError as exc:
        raise RequestError(f"unreadable video: {uri}: {exc}") from None
    frames = sorted(
        (name for name in listing if "/" not in name and name.endswith(JPEG_SUFFIXES)),
        key=lambda n: (int(os.path.splitext(n)[0]) if os.path.splitext(n)[0].isdigit() else -1, n),
    )
    if not frames:
        raise RequestError(
            f"unreadable video: {uri} holds no <index>.jpg frames (give a folder of JPEG frames or a video file)"
        )
    bad = [n for n in frames if not os.path.splitext(n)[0].isdigit()]
    if bad:
        raise RequestError(
            f"unreadable video: frames in {uri} must be named by index (e.g. 00000.jpg): {bad[:3]}"
        )
    _check_start(start_frame, len(frames), uri)
    page = frames[start_frame : start_frame + max_frames]
    if sum(listing[n] for n in page) > max_bytes:
        raise RequestError(f"the page of {uri} is larger than this server takes ({max_bytes} bytes)")
    base = uri.rstrip("/")
    try:
        for i, name in enumerate(page):
            store.download_file(f"{base}/{name}", folder / f"{i:05d}.jpg")
    except StorageError as exc:
        raise RequestError(f"unreadable video: {uri}: {exc}") from None
    return StagedPage(folder, start_frame, len(page), len(frames))


def _stage_url(uri: str, start_frame: int, max_frames: int, folder: Path, max_bytes: int) -> StagedPage:
    local = folder.parent / "source.video"
    try:
        with urllib.request.urlopen(uri, timeout=30) as response, open(local, "wb") as out:
            size = 0
            while chunk := response.read(DOWNLOAD_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise RequestError(f"video {uri} is larger than this server takes ({max_bytes} bytes)")
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if isinstance(exc, RequestError):
            raise
        raise RequestError(f"unreadable video: {uri}: {exc}") from None
    return _decode_page(local, uri, start_frame, max_frames, folder)


def _decode_page(path: Path, source: str, start_frame: int, max_frames: int, folder: Path) -> StagedPage:
    """Decode frames up to the page's end; frames before the page are decoded and dropped."""
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise RequestError(f"unreadable video: {source} is not a video FFmpeg can decode ({exc})") from None
    written = 0
    with container:
        if not container.streams.video:
            raise RequestError(f"unreadable video: {source} has no video stream")
        stream = container.streams.video[0]
        declared = int(stream.frames or 0) or None
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index < start_frame:
                    continue
                if written == max_frames:
                    break
                frame.to_image().save(folder / f"{written:05d}.jpg", quality=JPEG_QUALITY)
                written += 1
        except av.FFmpegError as exc:
            raise RequestError(
                f"unreadable video: {source}: decoding failed at frame {index + 1} ({exc})"
            ) from None
    if written == 0:
        raise RequestError(f"'start_frame' {start_frame} is past the end of {source} ({index + 1} frames)")
    total = declared if declared else (start_frame + written if written < max_frames else None)
    return StagedPage(folder, start_frame, written, total)
