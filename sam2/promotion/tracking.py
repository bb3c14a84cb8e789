"""One MLflow run per pipeline run, in an experiment per data set: params, metrics with curves, artifacts.

The registered version links to this run (`run_id`), so from a version one reaches the config it was
trained with, the scores of the new model, the champion and the baseline on the same val videos, the
learning curves and the report.

Artifacts go where the tracking store sends them: a tracking server's artifact root (proxied, or `s3://`
with `MLFLOW_S3_ENDPOINT_URL`), or, for a store on this machine (SQLite, a folder), the `artifact_location`
given when the experiment is first created (the pipeline passes an `s3://` prefix in the runs bucket, so
local runs keep their artifacts next to their checkpoints).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(name: str) -> str:
    """An MLflow-safe key ("champion_J&F" -> "champion_J_and_F"; keys may not hold '&')."""
    return _BAD_KEY_CHARS.sub("_", name.replace("&", "_and_"))


def is_local_store(tracking_uri: str) -> bool:
    """True for a SQLite database or a folder on this machine, False for a tracking server."""
    return urlparse(tracking_uri).scheme in ("", "file", "sqlite")


@dataclass
class RunRecord:
    """What one pipeline run logs: params, final metrics, curves (name -> [(step, value)]), artifacts.

    `artifacts`: artifact path in the run -> a local file or folder.
    """

    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def log_pipeline_run(
    tracking_uri: str,
    experiment_name: str,
    run_name: str,
    record: RunRecord,
    artifact_location: str | None = None,
) -> str:
    """Create the experiment when missing, log `record` as a finished run named `run_name`; returns its id.

    Raises MlflowException when the tracking store refuses a write (e.g. an invalid key), naming it.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(experiment_name, artifact_location=artifact_location)
        except MlflowException:  # another run created it meanwhile
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(record.tags))
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(metric_key(k), float(v), now, 0) for k, v in record.metrics.items() if _finite(v)] + [
        Metric(metric_key(name), float(v), now, int(step))
        for name, points in record.curves.items()
        for step, v in points
        if _finite(v)
    ]
    params = [Param(metric_key(k), _param_value(v)) for k, v in record.params.items()]
    for chunk in _chunks(metrics, 900):
        client.log_batch(run_id, metrics=chunk)
    for chunk in _chunks(params, 90):
        client.log_batch(run_id, params=chunk)
    client.log_batch(run_id, tags=[RunTag("mlflow.runName", run_name)])
    for artifact_path, local in record.artifacts.items():
        local = Path(local)
        if local.is_dir():
            client.log_artifacts(run_id, str(local), artifact_path or None)
        elif local.is_file():
            client.log_artifact(run_id, str(local), os.path.dirname(artifact_path) or None)
        else:
            logger.warning("artifact %s (%s) does not exist; not logged", artifact_path, local)
    client.set_terminated(run_id, "FINISHED")
    logger.info("MLflow run %s (%s) in experiment %r", run_id, run_name, experiment_name)
    return run_id


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Scalar leaves of a nested mapping as dotted keys ("scratch.resolution" -> "128"); lists as text."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def _param_value(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
