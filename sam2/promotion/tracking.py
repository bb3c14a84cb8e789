"""Run tracking: one MLflow run per pipeline run, in an experiment per data set: params, metrics with
curves, artifacts.

The registered version links to this run (`run_id`), so from a version one reaches the config it was
trained with, the scores of the new model, the champion and the baseline on the same val videos, the
learning curves and the report.

Artifacts go where the tracking store sends them: a tracking server's artifact root (proxied, or `s3://`
with `MLFLOW_S3_ENDPOINT_URL`), or, for a store on this machine (SQLite, a folder), the `artifact_location`
given when the experiment is first created (the pipeline passes an `s3://` prefix in the runs bucket, so
local runs keep their artifacts next to their checkpoints).

Where KFP 2.17's own MLflow integration is on, KFP has already made the run tree: a parent run per
pipeline run and a nested run per task, and it gives each task's container the nested run's id
(:func:`injected_run`). The promote step then logs into that run instead of opening its own, so one
pipeline run is one MLflow run tree and the registered version points into it; KFP's launcher ends the
run when the task ends.
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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from sam2.promotion.comparison import BASELINE, CHAMPION, KEYS, NEW, SCORES

if TYPE_CHECKING:
    from sam2.contracts import TrainedModel

logger = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(name: str) -> str:
    """An MLflow-safe key ("champion_J&F" -> "champion_J_and_F"; keys may not hold '&')."""
    return _BAD_KEY_CHARS.sub("_", name.replace("&", "_and_"))


# What KFP 2.17 sets in each task's container when its MLflow integration is on (kubeflow/pipelines at 2.17.0,
# backend/src/v2/common/plugins/mlflow/handler.go RetrieveUserContainerEnvVars): the task's nested run, the
# tracking server and the experiment, plus MLFLOW_TRACKING_AUTH / _TOKEN / _USERNAME / _PASSWORD by auth
# type, which the MLflow client reads itself.
KFP_RUN_ID_ENV = "MLFLOW_RUN_ID"
KFP_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
KFP_EXPERIMENT_ID_ENV = "MLFLOW_EXPERIMENT_ID"


@dataclass(frozen=True)
class InjectedRun:
    """The MLflow run KFP's integration made for this task (nested under the pipeline run's parent run)."""

    run_id: str
    tracking_uri: str
    experiment_id: str = ""


def injected_run(environ: Mapping[str, str] | None = None) -> InjectedRun | None:
    """The run KFP's MLflow integration injected into this container, or None without the integration.

    Raises:
        ValueError: MLFLOW_RUN_ID is set but MLFLOW_TRACKING_URI is not (the run's server is unknown).
    """
    env = os.environ if environ is None else environ
    run_id = env.get(KFP_RUN_ID_ENV, "").strip()
    if not run_id:
        return None
    tracking_uri = env.get(KFP_TRACKING_URI_ENV, "").strip()
    if not tracking_uri:
        raise ValueError(
            f"{KFP_RUN_ID_ENV}={run_id} is set (KFP's MLflow integration) but {KFP_TRACKING_URI_ENV} is not: "
            "the server holding that run is unknown"
        )
    return InjectedRun(run_id, tracking_uri, env.get(KFP_EXPERIMENT_ID_ENV, "").strip())


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
    into: InjectedRun | None = None,
) -> str:
    """Create the experiment when missing, log `record` as a finished run named `run_name`; returns its id.

    `into`: KFP's run for this task (:func:`injected_run`): `record` is logged into it, on its server, and
    it is left running for KFP to end; no experiment or run is created.

    Raises MlflowException when the tracking store refuses a write (e.g. an invalid key), naming it.
    """
    from mlflow import MlflowClient
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    if into is not None:
        client = MlflowClient(tracking_uri=into.tracking_uri)
        client.get_run(into.run_id)  # fails here, naming the run, when KFP's run is not on that server
        run_id = into.run_id
        client.log_batch(
            run_id, tags=[RunTag(k, v) for k, v in {**record.tags, "sam2.run_name": run_name}.items()]
        )
        _log_record(client, run_id, record)
        logger.info(
            "MLflow run %s (KFP's run for this task) on %s: logged into it", run_id, into.tracking_uri
        )
        return run_id
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
    client.log_batch(run_id, tags=[RunTag("mlflow.runName", run_name)])
    _log_record(client, run_id, record)
    client.set_terminated(run_id, "FINISHED")
    logger.info("MLflow run %s (%s) in experiment %r", run_id, run_name, experiment_name)
    return run_id


def _log_record(client: Any, run_id: str, record: RunRecord) -> None:
    """Params, metrics with their curves, and artifacts of `record` into the run `run_id`."""
    from mlflow.entities import Metric, Param

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
    for artifact_path, local in record.artifacts.items():
        local = Path(local)
        if local.is_dir():
            client.log_artifacts(run_id, str(local), artifact_path or None)
        elif local.is_file():
            client.log_artifact(run_id, str(local), os.path.dirname(artifact_path) or None)
        else:
            logger.warning("artifact %s (%s) does not exist; not logged", artifact_path, local)


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


def run_record_inputs(
    model: TrainedModel, comparison: Mapping[str, Any], extra_params: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, float], dict[str, list[tuple[int, float]]]]:
    """(params, final metrics, curves) of the MLflow run from the trained model and the comparison."""
    params = {
        "dataset_version": model.dataset_version,
        "dataset_uri": model.dataset_uri,
        "model_config": model.model_config,
        "training_config": model.training_config,
        "training_overrides": model.training_overrides,
        "init_checkpoint": model.init_checkpoint,
        "init": model.init_note,
        "checkpoint_uri": model.uri,
        "val_list_uri": comparison.get("val_list_uri", ""),
        "num_val_videos": len(comparison.get("videos", [])),
        "eval_protocol": comparison.get("protocol", ""),
        **{k: v for k, v in extra_params.items()},
    }
    metrics: dict[str, float] = {}
    for key in KEYS:
        if key in comparison["models"]:
            for score in SCORES:
                metrics[f"{key}_{score}"] = float(comparison["models"][key][score])
    for key in (CHAMPION, BASELINE):
        if key in comparison["models"]:
            metrics[f"new_minus_{key}_J&F"] = metrics[f"{NEW}_J&F"] - metrics[f"{key}_J&F"]
    if model.train_seconds is not None:
        metrics["train_seconds"] = model.train_seconds
    curves = {
        name: [(int(s), float(v)) for s, v in points] for name, points in comparison.get("curves", {}).items()
    }
    return {k: str(v) for k, v in params.items()}, metrics, curves


def resolved_training_config(training_config: str, overrides: str) -> dict[str, Any]:
    """The training config composed with the run's overrides: {"yaml": text, "container": nested dict}.

    The node-local settings the training node adds (data set paths, log folder) are not in it; secret-
    looking values are masked. Returns {} with a warning when it cannot be composed here (e.g. a config name this image lacks).
    """
    from omegaconf import OmegaConf

    from sam2.training.train import compose_training_config
    from sam2.utils.redaction import mask_secrets

    try:
        cfg = compose_training_config(training_config, overrides.split())
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # noqa: BLE001 - logged; the params then lack the config's values
        logger.warning(
            "could not compose %s with %r for the MLflow params: %s", training_config, overrides, exc
        )
        return {}
    container = mask_secrets(container)
    return {"yaml": OmegaConf.to_yaml(OmegaConf.create(container)), "container": container}


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
