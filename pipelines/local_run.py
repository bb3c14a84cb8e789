"""Run the pipeline on this machine through `kfp.local`, with the local S3 server and MLflow on SQLite.

Every component runs in this Python environment (SubprocessRunner without a venv), talks to the local
SeaweedFS S3 server (started when needed; credentials in `.local/s3.env`) and registers models in
`.local/mlflow/mlflow.db`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
LOCAL_DIR = REPO / ".local"


def read_env_file(path: Path) -> dict[str, str]:
    """`export KEY=value` lines of a shell env file."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("export ").strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def import_kfp_local():
    """`kfp.local`, which imports the `docker` package; the project depends on it (pyproject) so that the
    installed package, not this repository's `docker/` folder, is what that import finds."""
    from kfp import local

    return local


def ensure_local_services(local_dir: Path = LOCAL_DIR) -> dict[str, str]:
    """Start the local S3 server unless S3 is configured already; point MLflow at SQLite by default.

    Returns the settings applied to os.environ (secrets included: never print the result).
    """
    applied: dict[str, str] = {}
    if not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("S3_ENDPOINT_URL")):
        from sam2.tools.s3_server import service_up

        logger.info("%s", service_up(local_dir))  # the port in .local/s3.env, else 8333
        applied.update(read_env_file(local_dir / "s3.env"))
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        (local_dir / "mlflow").mkdir(parents=True, exist_ok=True)
        applied["MLFLOW_TRACKING_URI"] = f"sqlite:///{(local_dir / 'mlflow' / 'mlflow.db').resolve()}"
    os.environ.update(applied)
    return applied


def run_locally(arguments: dict[str, Any], pipeline_root: Path = LOCAL_DIR / "kfp") -> dict[str, Any]:
    """Run the whole pipeline with `arguments`; returns its outputs (decision, model_version, jf, run_uri).

    Raises RuntimeError (from kfp.local) naming the failed step.
    """
    from pipelines.sam2_finetune import sam2_finetune

    local = import_kfp_local()

    ensure_local_services()
    # Every step runs in a subprocess of this one, and so does every training node the local launcher
    # starts: one CPU thread per process (training and inference alike). With two, the same training run
    # drifted bit by bit whenever the machine was busy (MKL_CBWR did not stop it), and the demo's replay
    # J&F moved by up to 1.4, past the promotion margin. An OMP_NUM_THREADS already set wins.
    if os.environ.setdefault("OMP_NUM_THREADS", "1") == "1":
        logger.info("every step runs torch with one CPU thread per process (set OMP_NUM_THREADS to change)")
    arguments = dict(arguments)
    arguments.setdefault("train_launcher", "local")
    arguments.setdefault("mlflow_tracking_uri", os.environ["MLFLOW_TRACKING_URI"])
    arguments.setdefault("s3_endpoint_url", os.environ["S3_ENDPOINT_URL"])
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True
    )
    task = sam2_finetune(**arguments)
    return dict(task.outputs)
