"""Helpers the component bodies import at run time (inside the container, or in-process with kfp.local).

Data movement: a step fetches only the videos and parts it reads (`fetch_val_split`, `fetch_videos`), into
its own scratch folder, or, when `SAM2_SHARED_DATA_DIR` names a mounted ReadWriteMany volume, into that
volume's copy of the data set version, staged once and reused by every later step and run
(`dataset_dir`). Each step logs what its store moved (`log_transfers`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sam2.eval.evaluator import EvaluationResult
    from sam2.storage import ObjectStore

SHARED_DATA_ENV = "SAM2_SHARED_DATA_DIR"
"""Mount path of a ReadWriteMany volume holding data set copies (k8s/shared-data-pvc.yaml); unset: none."""
IMAGES, MASKS = "JPEGImages", "Annotations"


def configure(s3_endpoint_url: str = "", mlflow_tracking_uri: str = "") -> None:
    """Apply non-secret settings passed as pipeline parameters; secrets arrive as env vars from Secrets."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if s3_endpoint_url:
        os.environ["S3_ENDPOINT_URL"] = s3_endpoint_url
    # KFP 2.17's MLflow integration injects MLFLOW_RUN_ID with the server holding it: that server stays
    # (sam2.promotion.tracking.injected_run)
    if mlflow_tracking_uri and not os.environ.get("MLFLOW_RUN_ID"):
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri


def work_dir(step: str) -> Path:
    """A fresh local folder for one step's scratch data."""
    root = os.environ.get("SAM2_SCRATCH") or tempfile.gettempdir()
    Path(root).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"sam2-{step}-", dir=root))


def write_pointer(path: str, payload: dict) -> None:
    """Write the artifact file itself: a small JSON naming where the real data lives (S3 URIs)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1, sort_keys=True))


def run_uri(runs_bucket: str, run_id: str) -> str:
    """Where one pipeline run's checkpoints, predictions and reports live."""
    return f"s3://{runs_bucket}/{run_id}"


def dataset_dir(data_uri: str, work: Path) -> Path:
    """Where a step keeps its copy of the data set `data_uri`: `<SAM2_SHARED_DATA_DIR>/<bucket>/<key>` on a
    shared volume (one copy per data set version, reused across steps and runs), else `work`/data."""
    shared = os.environ.get(SHARED_DATA_ENV, "").strip()
    if not shared:
        return work / "data"
    from sam2.storage import parse_s3_uri

    loc = parse_s3_uri(data_uri)
    return Path(shared) / loc.bucket / loc.key.strip("/")


def read_video_list_uri(store: ObjectStore, uri: str, dest: Path) -> list[str]:
    """Download a video list (one name per line) to `dest` and return its names."""
    store.download_file(uri, dest)
    return [line.strip() for line in dest.read_text().splitlines() if line.strip()]


def fetch_videos(
    store: ObjectStore,
    data_uri: str,
    videos: Sequence[str],
    work: Path,
    parts: Sequence[str] = (IMAGES, MASKS),
) -> Path:
    """Stage `parts` of `videos` (and the manifest) of the published data set; returns the data folder.
    Nothing else of the data set is downloaded (see sam2.data.staging)."""
    from sam2.data.staging import stage_videos

    data = dataset_dir(data_uri, work)
    stage_videos(store, data_uri, data, videos, parts)
    return data


def fetch_val_split(
    store: ObjectStore,
    splits: Mapping[str, Any],
    work: Path,
    parts: Sequence[str] = (IMAGES, MASKS),
    shard: tuple[int, int] | None = None,
) -> tuple[Path, Path]:
    """Stage `parts` of the val videos (frames and masks for inference, masks for evaluation) and write
    their list to `work`/val.txt; returns (data folder, list file). The train videos are not fetched.
    `shard` (index, count): only that inference shard's videos (sam2.utils.sharding.round_robin_shard),
    listed and fetched. `splits`: the splits artifact's metadata."""
    val_list = work / "val.txt"
    videos = read_video_list_uri(store, splits["val_list_uri"], val_list)
    if shard is not None:
        from sam2.utils.sharding import round_robin_shard

        videos = round_robin_shard(videos, *shard)
        val_list.write_text("".join(f"{video}\n" for video in videos))
    return fetch_videos(store, splits["uri"], videos, work, parts), val_list


def fetch_report_frames(
    store: ObjectStore, data_uri: str, data: Path, result: EvaluationResult, frames_per_video: int = 2
) -> int:
    """Fetch the frames a report's overlays draw on: the `frames_per_video` worst frames of each scored
    video of `result` (sam2.eval.report.worst_frames), not the val videos' every frame. Returns bytes."""
    from sam2.data.layout import IMAGE_SUFFIXES
    from sam2.data.staging import stage_files
    from sam2.eval.report import worst_frames

    marker = store.read_marker(data_uri)["files"]
    wanted = []
    for video in result.videos.values():
        for worst in worst_frames(video, frames_per_video):
            stem = Path(worst.frame).stem
            wanted += [
                f"{IMAGES}/{video.name}/{stem}{suffix}"
                for suffix in IMAGE_SUFFIXES
                if f"{IMAGES}/{video.name}/{stem}{suffix}" in marker
            ]
    return stage_files(store, data_uri, data, wanted)


def cpu_budget() -> int:
    """CPUs this step may keep busy: the container's CPU quota (cgroup v2 `cpu.max`, v1 `cfs_quota_us`,
    which Kubernetes sets from the CPU limit) capped by the cpuset, at least 1. Kubernetes limits CPU by
    quota, not cpuset, so `os.sched_getaffinity` alone sees the whole node."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's CFS quota, or None when unlimited or unknown."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def log_transfers(store: ObjectStore, step: str) -> dict[str, int]:
    """Log (and return) the bytes and objects `store` downloaded and uploaded during this step."""
    counts = store.counters.snapshot()
    logging.getLogger(step).info(
        "data movement of %s: downloaded %.1f MB in %d objects, uploaded %.1f MB in %d objects",
        step,
        counts["bytes_downloaded"] / 1e6,
        counts["objects_downloaded"],
        counts["bytes_uploaded"] / 1e6,
        counts["objects_uploaded"],
    )
    return counts
