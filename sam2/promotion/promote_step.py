"""The promote step's work around `promote_pipeline_run`: gather the run's report and metrics from object
storage, take the inference overrides the pyfunc model must reuse, promote, and write the decision for
people (the KFP Markdown artifact) and for the pipeline's outputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam2.contracts import PromotionDecision, TrainedModel
from sam2.promotion.comparison import NEW
from sam2.promotion.gate import GateSettings, RegressionScores, gate_lines
from sam2.promotion.pipeline_run import PromotionOutcome, promote_pipeline_run
from sam2.utils.code_version import code_version

if TYPE_CHECKING:
    from sam2.storage import ObjectStore


@dataclass(frozen=True)
class PromoteStepResult:
    """The outcome with what the step writes: the decision report, its contract and the one-line summary."""

    outcome: PromotionOutcome
    report_markdown: str
    decision: PromotionDecision
    summary: str
    jf: float


def hydra_overrides_of(inference_args: str) -> list[str]:
    """The `--hydra_overrides` values of the infer step's flags (the model must be rebuilt with them)."""
    args = inference_args.split()
    return args[args.index("--hydra_overrides") + 1 :] if "--hydra_overrides" in args else []


def regression_scores(
    found: Mapping[str, Any] | None, regression_dataset_uri: str
) -> RegressionScores | None:
    """The regression set's scores as the scoring step wrote them, or None when the run has no set."""
    if found is None or not regression_dataset_uri:
        return None
    return RegressionScores(**{**found, "videos": tuple(found.get("videos", ()))})


def decision_markdown(outcome: PromotionOutcome, comparison: Mapping[str, Any], checkpoint_uri: str) -> str:
    """The decision report: rule and reason, every model's scores, the gate, where the version lives."""
    result = outcome.result
    table = "\n".join(f"    {line}" for line in outcome.comparison_lines)
    return (
        f"# {result.decision.upper()}: {result.model_name} version {result.version}\n\n"
        f"Rule `{result.rule}`: {result.reason}.\n\n"
        f"Scores on the same {len(comparison.get('videos', []))} val videos of data set version "
        f"{comparison.get('dataset_version')} (this run):\n\n{table}\n\n"
        "Gate against the starting point (zero-shot baseline):\n\n"
        + "".join(f"- {line}\n" for line in gate_lines(outcome.gate))
        + "\n"
        f"MLflow run `{outcome.run_id}`; model `{outcome.model_uri}` "
        f'(load: `mlflow.pyfunc.load_model("models:/{result.model_name}/{result.version}")`); '
        f"checkpoint `{checkpoint_uri}`\n"
    )


def promote_step(
    store: ObjectStore,
    tracking_uri: str,
    dataset_name: str,
    pipeline_run: str,
    trained: TrainedModel,
    comparison: Mapping[str, Any],
    *,
    promotion_margin: float,
    allow_random_init: bool,
    inference_args: str,
    image: str,
    gate: GateSettings,
    regression: RegressionScores | None,
) -> PromoteStepResult:
    """Promote the run's model (see promote_pipeline_run) with the run's report and metrics.json as MLflow
    artifacts, and the step's parameters as run parameters."""
    run_uri = trained.run_uri
    with tempfile.TemporaryDirectory(prefix="sam2-promote-inputs-") as tmp:
        work = Path(tmp)
        report_dir = metrics_json = None
        if store.exists(f"{run_uri}/report.md"):
            report_dir = work / "report"
            store.sync_to_local(f"{run_uri}/report", report_dir, require_marker=False)
        if store.exists(f"{run_uri}/metrics.json"):
            metrics_json = work / "metrics.json"
            store.download_file(f"{run_uri}/metrics.json", metrics_json)
        outcome = promote_pipeline_run(
            tracking_uri,
            dataset_name,
            pipeline_run,
            trained,
            comparison,
            report_dir,
            metrics_json,
            margin=promotion_margin,
            allow_random_init=allow_random_init,
            extra_params={
                "model_size": trained.model_size,
                "code_version": code_version(),
                "image": image,
                "inference_args": inference_args,
                "promotion_margin": promotion_margin,
                "allow_random_init": allow_random_init,
                "pipeline_run": pipeline_run,
                "baseline_margin": gate.baseline_margin,
                "regression_dataset_uri": gate.regression_dataset_uri,
                "max_regression": gate.max_regression,
            },
            inference_overrides=hydra_overrides_of(inference_args),
            gate=gate,
            regression=regression,
        )
    result = outcome.result
    decision = PromotionDecision(
        model_name=result.model_name,
        version=result.version,
        decision=result.decision,
        rule=result.rule,
        mlflow_run_id=outcome.run_id,
    )
    return PromoteStepResult(
        outcome=outcome,
        report_markdown=decision_markdown(outcome, comparison, trained.uri),
        decision=decision,
        summary="; ".join(outcome.comparison_lines) + f"; decision by rule {result.rule}",
        jf=float(comparison["models"][NEW]["J&F"]),
    )
