"""Helpers the component bodies import at run time (inside the container, or in-process with kfp.local)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sam2.storage import ObjectStore


def configure(s3_endpoint_url: str = "", mlflow_tracking_uri: str = "") -> None:
    """Apply non-secret settings passed as pipeline parameters; secrets arrive as env vars from Secrets."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if s3_endpoint_url:
        os.environ["S3_ENDPOINT_URL"] = s3_endpoint_url
    if mlflow_tracking_uri:
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


def fetch_val_split(store: ObjectStore, splits: Mapping[str, Any], work: Path) -> tuple[Path, Path]:
    """Copy the split data set to `work`/data and its val video list to `work`/val.txt, the inputs of
    inference and evaluation; returns (data folder, list file). `splits`: the splits artifact's metadata."""
    data, val_list = work / "data", work / "val.txt"
    store.sync_to_local(splits["uri"], data)
    store.download_file(splits["val_list_uri"], val_list)
    return data, val_list
