"""The promote step's work: log the pipeline run to MLflow, publish the loadable model, register, decide.

Order matters for what a reader of the registry sees: the MLflow run (params, metrics of all scored
models, curves, report) is logged first, the pyfunc model folder is written next to the run's
checkpoint, and only then is the version created (linking both) and the promotion rule applied under
the registry's lock (sam2.registry). The run is tagged with the decision afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam2.contracts import TrainedModel
from sam2.model_comparison import BASELINE, CHAMPION, KEYS, NEW
from sam2.registry import Candidate, HeadToHead, MlflowModelRegistry, PromotionResult, model_name_for

logger = logging.getLogger(__name__)

MLFLOW_MODEL_DIR = "mlflow_model"
SCORES = ("J&F", "J", "F")


@dataclass(frozen=True)
class PromotionOutcome:
    """The registry's result with the MLflow run and model folder it links to."""

    result: PromotionResult
    run_id: str
    model_uri: str
    comparison_lines: list[str]


def head_to_head(comparison: Mapping[str, Any]) -> HeadToHead:
    """The scores of this run (from evaluate's comparison JSON) the promotion rule compares."""
    models = comparison["models"]
    champion = models.get(CHAMPION)
    baseline = models.get(BASELINE)
    return HeadToHead(
        dataset_version=str(comparison.get("dataset_version", "")),
        new_score=float(models[NEW]["J&F"]),
        champion_version=str(champion["version"]) if champion else None,
        champion_score=float(champion["J&F"]) if champion else None,
        unscored_reason=None if champion else comparison.get("skipped", {}).get(CHAMPION),
        baseline_score=float(baseline["J&F"]) if baseline else None,
        num_videos=len(comparison.get("videos", [])),
    )


def comparison_lines(comparison: Mapping[str, Any]) -> list[str]:
    """One line per model for logs and the decision report: its J&F, J, F on this run's val videos."""
    models, skipped = comparison["models"], comparison.get("skipped", {})
    lines = []
    for key in (BASELINE, CHAMPION, NEW):
        if key in models:
            m = models[key]
            change = "" if key == NEW else f" (new minus {key}: {models[NEW]['J&F'] - m['J&F']:+.2f})"
            lines.append(
                f"{key:<8} J&F {m['J&F']:6.2f}  J {m['J']:6.2f}  F {m['F']:6.2f}  {m['label']}{change}"
            )
        else:
            lines.append(f"{key:<8} not scored: {skipped.get(key, 'not requested')}")
    return lines


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


def promote_pipeline_run(
    tracking_uri: str,
    dataset_name: str,
    pipeline_run: str,
    model: TrainedModel,
    comparison: Mapping[str, Any],
    report_dir: Path | None,
    metrics_json: Path | None,
    margin: float,
    allow_random_init: bool,
    extra_params: Mapping[str, Any],
    inference_overrides: list[str] | None = None,
) -> PromotionOutcome:
    """Log the run, publish the pyfunc model folder at <run>/mlflow_model, register and decide.

    `model`: the train step's artifact; `comparison`: evaluate's comparison JSON (comparison_summary).
    """
    from sam2.mlflow_model import save_model_folder
    from sam2.mlflow_run import RunRecord, flatten, is_local_store, log_pipeline_run
    from sam2.storage import ObjectStore, parse_s3_uri

    if os.environ.get("S3_ENDPOINT_URL"):
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", os.environ["S3_ENDPOINT_URL"])
    run_uri = model.run_uri.rstrip("/")
    params, metrics, curves = run_record_inputs(model, comparison, extra_params)
    name = model_name_for(dataset_name)
    store = ObjectStore()
    with tempfile.TemporaryDirectory(prefix="sam2-promote-") as tmp:
        work = Path(tmp)
        artifacts: dict[str, Path] = {}
        config = resolved_training_config(model.training_config, model.training_overrides)
        if config:
            (work / "config_resolved.yaml").write_text(config["yaml"])
            artifacts["config/config_resolved.yaml"] = work / "config_resolved.yaml"
            for key, value in flatten(config["container"]).items():
                if key.startswith(("scratch.", "trainer.max_epochs", "trainer.accelerator", "trainer.seed")):
                    params.setdefault(f"config.{key}", value)
        if report_dir is not None:
            artifacts["report"] = report_dir
        if metrics_json is not None:
            artifacts["metrics.json"] = metrics_json
        (work / "comparison.json").write_text(json.dumps(comparison, indent=1))
        artifacts["comparison.json"] = work / "comparison.json"
        bucket = parse_s3_uri(run_uri).bucket
        location = f"s3://{bucket}/mlflow/{name}" if is_local_store(tracking_uri) else None
        record = RunRecord(
            params=params,
            metrics=metrics,
            curves=curves,
            artifacts=artifacts,
            tags={"pipeline_run": pipeline_run, "dataset_name": dataset_name, "run_uri": run_uri},
        )
        run_id = log_pipeline_run(tracking_uri, name, pipeline_run, record, artifact_location=location)

        model_dir = save_model_folder(
            work / MLFLOW_MODEL_DIR,
            checkpoint_uri=model.uri,
            model_config=model.model_config,
            hydra_overrides=inference_overrides,
            metadata_tags={"run_id": run_id, "dataset_version": model.dataset_version},
        )
        model_uri = f"{run_uri}/{MLFLOW_MODEL_DIR}"
        store.upload_folder(model_dir, model_uri)

    h2h = head_to_head(comparison)
    candidate = Candidate(
        dataset_name=dataset_name,
        checkpoint_uri=model.uri,
        metrics={k: float(comparison["models"][NEW][k]) for k in SCORES},
        dataset_version=model.dataset_version,
        config=f"{model.training_config} {model.training_overrides}".strip(),
        pipeline_run=pipeline_run,
        extra_tags={"init": model.init_note, "run_uri": run_uri},
        model_config=model.model_config,
        random_init=model.random_init,
        head_to_head=h2h,
        source_uri=model_uri,
        run_id=run_id,
    )
    registry = MlflowModelRegistry(tracking_uri)
    result = registry.register_and_promote(candidate, margin=margin, allow_random_init=allow_random_init)
    for key, value in (
        ("promotion", result.decision),
        ("promotion_rule", result.rule),
        ("model_version", f"{result.model_name}/{result.version}"),
    ):
        registry.client.set_tag(run_id, key, value)
    lines = comparison_lines(comparison)
    for line in lines:
        logger.info("%s", line)
    logger.info("%s: %s", result.decision.upper(), result.reason)
    return PromotionOutcome(result, run_id, model_uri, lines)
