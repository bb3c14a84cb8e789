"""The promote step's work: log the pipeline run to MLflow, publish the loadable model, register, decide.

Order matters for what a reader of the registry sees: the MLflow run (params, metrics of all scored
models, curves, report) is logged first, the pyfunc model folder is written next to the run's
checkpoint, and only then is the version created (linking both) and the promotion rule applied under
the registry's lock (sam2.promotion.registry). The run is tagged with the decision afterwards.
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
from sam2.promotion.comparison import BASELINE, NEW, SCORES, comparison_lines, head_to_head
from sam2.promotion.gate import (
    GateCheck,
    GateSettings,
    RegressionScores,
    baseline_check,
    gate_lines,
    gate_tags,
    regression_check,
)
from sam2.promotion.registry import MlflowModelRegistry, wait_for_tracking_server
from sam2.promotion.rules import Candidate, PromotionResult, model_name_for
from sam2.promotion.tracking import (
    RunRecord,
    flatten,
    injected_run,
    is_local_store,
    log_pipeline_run,
    resolved_training_config,
    run_record_inputs,
)

logger = logging.getLogger(__name__)

MLFLOW_MODEL_DIR = "mlflow_model"


@dataclass(frozen=True)
class PromotionOutcome:
    """The registry's result with the MLflow run and model folder it links to."""

    result: PromotionResult
    run_id: str
    model_uri: str
    comparison_lines: list[str]
    gate: tuple[GateCheck, ...] = ()


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
    gate: GateSettings | None = None,
    regression: RegressionScores | None = None,
) -> PromotionOutcome:
    """Log the run, publish the pyfunc model folder at <run>/mlflow_model, register and decide.

    `model`: the train step's artifact; `comparison`: evaluate's comparison JSON (comparison_summary).
    `gate` (default: beat the zero-shot baseline by more than 0) and `regression` (the regression set's
    scores, when the run has one): the gate against the starting point (sam2.promotion.gate).
    With KFP's MLflow integration (MLFLOW_RUN_ID injected), the run logged is KFP's run for this task, on
    its server, which is then also the registry (so the version links into KFP's run tree).
    """
    from sam2.promotion.pyfunc_model import save_model_folder
    from sam2.storage import ObjectStore, parse_s3_uri

    if os.environ.get("S3_ENDPOINT_URL"):
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", os.environ["S3_ENDPOINT_URL"])
    kfp_run = injected_run()
    if kfp_run is not None and kfp_run.tracking_uri != tracking_uri:
        logger.warning(
            "KFP's MLflow integration gave this task run %s on %s: logging and registering there, not on %s",
            kfp_run.run_id,
            kfp_run.tracking_uri,
            tracking_uri,
        )
        tracking_uri = kfp_run.tracking_uri
    wait_for_tracking_server(tracking_uri)  # a restarting server is waited for (SAM2_RETRY_BUDGET_S)
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
        location = f"s3://{bucket}/mlflow/{name}" if is_local_store(tracking_uri) and not kfp_run else None
        record = RunRecord(
            params=params,
            metrics=metrics,
            curves=curves,
            artifacts=artifacts,
            tags={"pipeline_run": pipeline_run, "dataset_name": dataset_name, "run_uri": run_uri},
        )
        run_id = log_pipeline_run(
            tracking_uri, name, pipeline_run, record, artifact_location=location, into=kfp_run
        )

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
    settings = gate or GateSettings()
    checks = gate_checks(model, comparison, settings, regression)
    registry = MlflowModelRegistry(tracking_uri)
    result = registry.register_and_promote(
        candidate,
        margin=margin,
        allow_random_init=allow_random_init,
        gate_checks=checks,
        gate_settings=settings,
    )
    for key, value in gate_tags(checks, settings).items():
        registry.client.set_tag(run_id, key, value)
    for key, value in (
        ("promotion", result.decision),
        ("promotion_rule", result.rule),
        ("model_version", f"{result.model_name}/{result.version}"),
    ):
        registry.client.set_tag(run_id, key, value)
    lines = comparison_lines(comparison)
    for line in lines:
        logger.info("%s", line)
    for line in gate_lines(checks):
        logger.info("%s", line)
    logger.info("%s: %s", result.decision.upper(), result.reason)
    return PromotionOutcome(result, run_id, model_uri, lines, tuple(checks))


def gate_checks(
    model: TrainedModel,
    comparison: Mapping[str, Any],
    settings: GateSettings,
    regression: RegressionScores | None,
) -> list[GateCheck]:
    """The gate's checks for this run: against the zero-shot baseline on the val videos (unless there is
    no starting point), and on the regression set when the run has one."""
    if model.random_init:
        no_start = "trained from random weights (the random-init rule decides)"
    elif not model.init_checkpoint:
        no_start = "no initial checkpoint was given"
    else:
        no_start = None
    baseline = baseline_check(
        head_to_head(comparison),
        settings.baseline_margin,
        videos=[str(v) for v in comparison.get("videos", [])],
        unscored_reason=comparison.get("skipped", {}).get(BASELINE),
        no_starting_point=no_start,
    )
    return [baseline, regression_check(settings, regression)]
