"""Fetch only the videos a step reads from a published data set, once per folder, checked against the
manifest.

A published data set (``s3://<bucket>/datasets/<name>/<version>/``, see :mod:`sam2.storage`) holds
``manifest.json`` with one record per video (frame count, sizes, and the SHA-256 digests of its frames
and annotations) and a ``_SUCCESS`` marker listing every file with its size and SHA-256. Steps differ in
what they read: training the train videos' frames and masks, inference the val videos' frames and masks,
evaluation the val videos' masks only. :func:`stage_videos` fetches exactly that:

- before any download the marker's file digests of every asked-for video are combined as the manifest
  does and compared with its record, so a published set whose files and manifest disagree (a frame
  missing, one replaced) fails naming the video;
- each downloaded file is checked against the marker's SHA-256 (by :meth:`ObjectStore.sync_to_local`);
- a video part that was fetched and checked gets a stamp (``.staged/<part>/<video>`` holding its manifest
  digest), so a rerun, a restarted pod or another step on a shared volume skips it without reading it
  again, and an interrupted staging resumes with the videos not yet stamped (partly fetched ones keep
  their finished files);
- the whole staging holds an exclusive lock on ``<dest>/.staging.lock`` (``flock``; on NFS the kernel maps
  it to a POSIX lock the server enforces), so the processes of one node, or every node on a shared
  ReadWriteMany volume, fetch each byte once: the first to take the lock downloads, the others wait on it
  and then find the stamps.

A pipeline step asks through :func:`fetch_val_split` / :func:`fetch_videos`, which stage into the step's
scratch folder or, when a ReadWriteMany volume is mounted (``SAM2_SHARED_DATA_DIR``), into that volume's
copy of the data set version (:func:`dataset_dir`), staged once and reused by every later step and run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sam2.data.layout import (
    ANNOTATIONS_DIR,
    IMAGES_DIR,
    MANIFEST_NAME,
    SAV_ANNOTATION_SUFFIX,
    shared_dataset_dir,
)
from sam2.data.manifest import combined_digest
from sam2.utils.atomic_io import atomic_write_text
from sam2.utils.file_lock import exclusive_file_lock

if TYPE_CHECKING:
    from sam2.contracts import DataSplits
    from sam2.storage import ObjectStore

logger = logging.getLogger(__name__)

STAMP_DIR = ".staged"
LOCK_NAME = ".staging.lock"
PARTS = (IMAGES_DIR, ANNOTATIONS_DIR)
_FRAME_SUFFIXES = (".jpg", ".jpeg")


class StagingError(RuntimeError):
    """The data set cannot provide what was asked: a video it does not hold, files that disagree with
    its manifest, or a lock not obtained in time. The message names the data set and the videos."""


# Room kept free beyond what is staged: the file system's own slack, and what the step writes next to it.
ROOM_SLACK = 0.1


def _binary_size(num: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if num >= scale:
            return f"{num / scale:.1f} {unit}"
    return f"{num / 2**10:.1f} KiB"


def check_room(dest: Path, need_bytes: int, data_uri: str) -> None:
    """Fail before downloading when `dest`'s file system lacks `need_bytes` (+10%) free, instead of filling
    the pod's disk until the kubelet evicts it (or the node's other pods). Sizes come from the data set's
    marker. Raises StagingError naming the folder, the sizes and the settings that give a step more room."""
    free = shutil.disk_usage(dest).free
    want = int(need_bytes * (1 + ROOM_SLACK))
    if want > free:
        raise StagingError(
            f"{dest} has {_binary_size(free)} free, staging from {data_uri} needs {_binary_size(want)} "
            "(its files plus 10%): give the step more disk (compile the pipeline with SAM2_STEP_SCRATCH=<size>, "
            "docs/cluster-operations.md has each step's need) or stage on the shared claim (SAM2_SHARED_DATA_PVC)"
        )


@dataclass(frozen=True)
class StagingResult:
    """What one :func:`stage_videos` call did."""

    dest: Path
    videos: tuple[str, ...]
    parts: tuple[str, ...]
    fetched: int
    """Video parts (e.g. one video's frames) downloaded by this call."""
    reused: int
    """Video parts found stamped (staged before, by this or another process)."""
    files_downloaded: int
    bytes_downloaded: int
    seconds: float
    waited_s: float
    """Seconds spent waiting for another process's staging lock."""


def _part_files(files: dict[str, dict], part: str, video: str, annotation_format: str | None) -> list[str]:
    """The marker entries that make up one part of one video, in the order the manifest digests them.
    `annotation_format` None (no manifest): PNG masks and an SA-V JSON, whichever is published."""
    if part == IMAGES_DIR:
        suffixes: tuple[str, ...] = _FRAME_SUFFIXES
        folder = f"{IMAGES_DIR}/{video}/"
    else:
        suffixes = (".png",)
        folder = f"{ANNOTATIONS_DIR}/{video}/"
    names = []
    if part == IMAGES_DIR or annotation_format in ("png", None):
        names = [
            rel
            for rel in files
            if rel.startswith(folder)
            and "/" not in rel[len(folder) :]
            and (rel.lower() if part == IMAGES_DIR else rel).endswith(suffixes)
        ]
    sav = f"{ANNOTATIONS_DIR}/{video}{SAV_ANNOTATION_SUFFIX}"
    if part == ANNOTATIONS_DIR and annotation_format in ("sav_json", None) and sav in files:
        names.append(sav)
    return sorted(names, key=lambda rel: rel.rsplit("/", 1)[1])


def _names(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" … ({len(items) - limit} more)" if len(items) > limit else "")


def _expected_digest(record: dict, part: str) -> str:
    return record["frames_sha256"] if part == IMAGES_DIR else record["annotations_sha256"]


def selection_bytes(
    marker: dict, manifest: dict | None, videos: Collection[str], parts: Sequence[str] = PARTS
) -> int:
    """Bytes that staging ``parts`` of ``videos`` (plus the manifest) puts on disk, from the marker's sizes:
    what a node's scratch volume must hold for its data."""
    files = marker["files"]
    total = files.get(MANIFEST_NAME, {}).get("size", 0)
    records = (manifest or {}).get("videos", {})
    for video in videos:
        for part in parts:
            fmt = records[video]["annotation_format"] if video in records else None
            total += sum(files[rel]["size"] for rel in _part_files(files, part, video, fmt))
    return total


def _staging_lock_timeout(what: str) -> Callable[[Path, float], StagingError]:
    """The error for a staging lock another process held for longer than ``lock_timeout_s``."""
    return lambda path, timeout_s: StagingError(
        f"{what}: another process has held the staging lock {path} for over {timeout_s:.0f}s; "
        "is a stuck staging still running? (delete the lock file only if none is)"
    )


def stage_videos(
    store: ObjectStore,
    data_uri: str,
    dest: str | Path,
    videos: Collection[str],
    parts: Sequence[str] = PARTS,
    lock_timeout_s: float = 6 * 3600.0,
) -> StagingResult:
    """Make ``dest`` hold ``parts`` (``JPEGImages``, ``Annotations``) of ``videos`` and ``manifest.json`` from
    the published data set ``data_uri``; nothing else of the set is downloaded.

    Safe to call from several processes on one folder at once (one downloads, the others wait) and to
    call again after an interruption (stamped videos are skipped, the rest resume).

    Raises:
        StagingError: a video the manifest does not list, a part whose published files disagree with the
            manifest's digest, or the lock not obtained within ``lock_timeout_s``.
        sam2.storage.StorageError: the transfers themselves failed (unreachable, integrity, unpublished).
    """
    start = time.perf_counter()
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    wanted = sorted(set(videos))
    before = store.counters.snapshot()
    with exclusive_file_lock(
        root / LOCK_NAME, lock_timeout_s, poll_s=0.2, timeout_error=_staging_lock_timeout(data_uri)
    ) as waited:
        marker = store.read_marker(data_uri)
        files = marker["files"]
        records: dict[str, dict] | None = None
        if MANIFEST_NAME in files:
            store.sync_to_local(data_uri, root, include=[MANIFEST_NAME], marker=marker)
            records = json.loads((root / MANIFEST_NAME).read_text()).get("videos", {})
            unknown = [video for video in wanted if video not in records]
            if unknown:
                raise StagingError(
                    f"{data_uri}: {len(unknown)} video(s) asked for are not in its {MANIFEST_NAME}: "
                    f"{_names(unknown)}; check the video list"
                )
        else:
            logger.warning(
                "%s has no %s: staged files are checked against the marker only", data_uri, MANIFEST_NAME
            )
        todo: list[tuple[str, str, str, list[str]]] = []  # (part, video, digest, files)
        problems: list[str] = []
        reused = 0
        for video in wanted:
            fmt = records[video]["annotation_format"] if records is not None else None
            for part in parts:
                names = _part_files(files, part, video, fmt)
                digest = combined_digest([(rel.rsplit("/", 1)[1], files[rel]["sha256"]) for rel in names])
                if records is not None and digest != _expected_digest(records[video], part):
                    problems.append(f"{part}/{video} ({len(names)} files published)")
                    continue
                if records is None and not names and part == IMAGES_DIR:
                    problems.append(f"{part}/{video} (no frames published)")
                    continue
                stamp = root / STAMP_DIR / part / video
                if stamp.is_file() and stamp.read_text() == digest:
                    reused += 1
                else:
                    todo.append((part, video, digest, names))
        if problems:
            raise StagingError(
                f"{data_uri}: the published files of {len(problems)} video part(s) do not match "
                + (f"the digests in its {MANIFEST_NAME}" if records is not None else "the video list")
                + f": {_names(problems)}; re-run extract-frames (or fix the video list)"
            )
        if todo:
            include = [rel for *_, names in todo for rel in names]
            check_room(root, sum(int(files[rel].get("size", 0)) for rel in include), data_uri)
            store.sync_to_local(data_uri, root, include=include, marker=marker)
            for part, video, digest, _ in todo:
                stamp = root / STAMP_DIR / part / video
                stamp.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(stamp, digest)
    after = store.counters.snapshot()
    result = StagingResult(
        dest=root,
        videos=tuple(wanted),
        parts=tuple(parts),
        fetched=len(todo),
        reused=reused,
        files_downloaded=after["objects_downloaded"] - before["objects_downloaded"],
        bytes_downloaded=after["bytes_downloaded"] - before["bytes_downloaded"],
        seconds=time.perf_counter() - start,
        waited_s=waited,
    )
    logger.info(
        "staged %s of %d videos from %s in %s: %d parts fetched (%d files, %.1f MB), %d already there%s",
        "+".join(parts),
        len(wanted),
        data_uri,
        root,
        result.fetched,
        result.files_downloaded,
        result.bytes_downloaded / 1e6,
        result.reused,
        f", waited {waited:.1f}s for another process" if waited > 0.5 else "",
    )
    return result


def stage_files(store: ObjectStore, data_uri: str, dest: str | Path, paths: Collection[str]) -> int:
    """Fetch single files of the data set (e.g. the few frames a report draws on), checked against the
    marker; returns the bytes downloaded."""
    before = store.counters.snapshot()["bytes_downloaded"]
    if paths:
        store.sync_to_local(data_uri, dest, include=list(paths))
    return store.counters.snapshot()["bytes_downloaded"] - before


# -- what a pipeline step fetches ---------------------------------------------------------------------


def dataset_dir(data_uri: str, work: Path, env: Mapping[str, str] | None = None) -> Path:
    """Where a step keeps its copy of the data set `data_uri`: the shared volume's copy when one is
    mounted (sam2.data.layout.shared_dataset_dir), else `work`/data."""
    return shared_dataset_dir(data_uri, env) or work / "data"


def read_video_list_uri(store: ObjectStore, uri: str, dest: Path) -> list[str]:
    """Download a video list (one name per line) to `dest` and return its names."""
    store.download_file(uri, dest)
    return [line.strip() for line in dest.read_text().splitlines() if line.strip()]


def fetch_videos(
    store: ObjectStore,
    data_uri: str,
    videos: Sequence[str],
    work: Path,
    parts: Sequence[str] = PARTS,
) -> Path:
    """Stage `parts` of `videos` (and the manifest) of the published data set into `dataset_dir`; returns
    that folder. Nothing else of the data set is downloaded."""
    data = dataset_dir(data_uri, work)
    stage_videos(store, data_uri, data, videos, parts)
    return data


def fetch_val_split(
    store: ObjectStore,
    splits: DataSplits,
    work: Path,
    parts: Sequence[str] = PARTS,
    shard: tuple[int, int] | None = None,
) -> tuple[Path, Path]:
    """Stage `parts` of the val videos (frames and masks for inference, masks for evaluation) and write
    their list to `work`/val.txt; returns (data folder, list file). The train videos are not fetched.
    `shard` (index, count): only that inference shard's videos (sam2.utils.sharding.round_robin_shard),
    listed and fetched."""
    val_list = work / "val.txt"
    videos = read_video_list_uri(store, splits.val_list_uri, val_list)
    if shard is not None:
        from sam2.utils.sharding import round_robin_shard

        videos = round_robin_shard(videos, *shard)
        val_list.write_text("".join(f"{video}\n" for video in videos))
    return fetch_videos(store, splits.uri, videos, work, parts), val_list
