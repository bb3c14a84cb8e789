"""Pipeline step 7: register the checkpoint in MLflow and decide champion or challenger (inside the step)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Model, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def promote_model(
    model: Input[Model],
    metrics: Input[Metrics],
    dataset_name: str,
    pipeline_run: str,
    decision_report: Output[Markdown],
    promotion_margin: float = 1.0,
    mlflow_tracking_uri: str = "",
    s3_endpoint_url: str = "",
) -> NamedTuple("PromotionOutputs", decision=str, model_version=str, jf=float, run_uri=str, dataset_uri=str):
    """Register a new version of model `sam2-<dataset_name>`; returns the decision ("champion" or
    "challenger"), the registered version, its J&F, the run folder and the data set it was trained on.

    The `champion` alias moves only when the new J&F beats the champion's by more than
    `promotion_margin` (J&F points); concurrent runs are serialised (see sam2.registry).
    """
    import os
    from collections import namedtuple

    from components.runtime import configure
    from sam2.registry import Candidate, MlflowModelRegistry

    configure(s3_endpoint_url, mlflow_tracking_uri)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError("no MLflow registry: set the mlflow_tracking_uri parameter or MLFLOW_TRACKING_URI")
    scores = {k: float(metrics.metadata[k]) for k in ("J&F", "J", "F")}
    candidate = Candidate(
        dataset_name=dataset_name,
        checkpoint_uri=model.metadata["uri"],
        metrics=scores,
        dataset_version=model.metadata["dataset_version"],
        config=f"{model.metadata['training_config']} {model.metadata.get('training_overrides', '')}".strip(),
        pipeline_run=pipeline_run,
        extra_tags={"init": str(model.metadata.get("init", "")), "run_uri": model.metadata["run_uri"]},
    )
    result = MlflowModelRegistry(uri).register_and_promote(candidate, margin=promotion_margin)
    previous = (
        f"version {result.previous_champion_version} (J&F {result.previous_champion_score:.2f})"
        if result.previous_champion_version
        else "none"
    )
    with open(decision_report.path, "w") as handle:
        handle.write(
            f"# {result.decision.upper()}: {result.model_name} version {result.version}\n\n"
            f"J&F {result.score:.2f}; previous champion: {previous}; margin {promotion_margin:.2f}.\n\n"
            f"Source: `{candidate.checkpoint_uri}`\n"
        )
    decision_report.metadata.update(
        {"model_name": result.model_name, "version": result.version, "decision": result.decision}
    )
    outputs = namedtuple("PromotionOutputs", ["decision", "model_version", "jf", "run_uri", "dataset_uri"])
    return outputs(
        result.decision,
        f"{result.model_name}/{result.version}",
        result.score,
        model.metadata["run_uri"],
        model.metadata["dataset_uri"],
    )
