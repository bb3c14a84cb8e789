"""The plumbing every component body shares at run time (inside the container, or in-process with
kfp.local): settings from pipeline parameters, a scratch folder, the artifact pointer file, the run folder,
and a log line of what the step's store moved. What a step fetches, and where, is sam2.data.staging's.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sam2.utils.cli_errors import install_excepthook

if TYPE_CHECKING:
    from sam2.storage import ObjectStore


def configure(s3_endpoint_url: str = "", mlflow_tracking_uri: str = "") -> None:
    """Apply non-secret settings passed as pipeline parameters; secrets arrive as env vars from Secrets.

    An exception the step does not catch ends it as one `error:` line with the exit code of
    sam2.utils.cli_errors (2 bad input, 201 unreachable; the traceback with SAM2_DEBUG=1).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    install_excepthook(prog="step")
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
