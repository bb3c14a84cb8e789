"""Pipeline step 7: log the MLflow run, register the checkpoint, decide champion or challenger (inside the step)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Model, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def promote_model(
    model: Input[Model],
    comparison: Input[Dataset],
    dataset_name: str,
    pipeline_run: str,
    decision_report: Output[Markdown],
    promotion_margin: float = 1.0,
    allow_random_init: bool = False,
    inference_args: str = "",
    image: str = "",
    mlflow_tracking_uri: str = "",
    s3_endpoint_url: str = "",
    baseline_margin: float = 0.0,
    regression_dataset_uri: str = "",
    max_regression: float = 0.0,
    regression: Input[Dataset] = None,
) -> NamedTuple(
    "PromotionOutputs",
    decision=str,
    model_version=str,
    jf=float,
    run_uri=str,
    dataset_uri=str,
    comparison=str,
):
    """Log this pipeline run as an MLflow run (experiment `sam2-<dataset_name>`), register a new version of
    model `sam2-<dataset_name>` linked to it and loadable with mlflow.pyfunc, and decide "champion" or
    "challenger".

    The rule compares the new model with the champion as both were scored in this run (`comparison`,
    from evaluate), by more than `promotion_margin` J&F points; if the champion could not be scored here
    it falls back to the champion's registered J&F and says so. A model trained from random weights never
    becomes champion unless `allow_random_init`. Concurrent runs are serialised (sam2.promotion.registry).
    On top, the gate against the starting point (sam2.promotion.gate): a version takes champion only when
    it also beats the run's zero-shot baseline by more than `baseline_margin`, the first version included,
    and (with a regression set) loses at most `max_regression` against the baseline there.

    Args:
        model: train_model's output: the new checkpoint and what produced it.
        comparison: evaluate_predictions's output: the scores of every model on the same val videos.
        dataset_name: The data set; the registered model is `sam2-<dataset_name>`.
        pipeline_run: The pipeline run's id, the MLflow run's name and a version tag.
        decision_report: The decision in Markdown: rule, reason, scores, where the version lives.
        promotion_margin: J&F points the new model must beat the champion by.
        allow_random_init: Let a model trained from random weights become champion.
        inference_args: The infer step's flags; its --hydra_overrides are stored with the pyfunc model.
        image: The image the run used, logged as a run parameter.
        mlflow_tracking_uri: The MLflow server; empty for MLFLOW_TRACKING_URI.
        s3_endpoint_url: The S3 endpoint of object storage; empty for the environment's.
        baseline_margin: J&F points the new model must beat the zero-shot baseline by (val videos).
        regression_dataset_uri: The regression set the gate checks (empty: no regression gate).
        max_regression: J&F points the new model may lose against the baseline on the regression set.
        regression: score_regression_set's output: both models' J&F on the regression set.

    Returns:
        decision: "champion" or "challenger".
        model_version: The registered version, `sam2-<dataset_name>/<n>`.
        jf: The new model's J&F in percent.
        run_uri: The run's folder.
        dataset_uri: The data set version it was trained on.
        comparison: One line comparing it with the champion and the baseline.
    """
    import json
    import os
    from collections import namedtuple

    from components.runtime import configure
    from sam2.contracts import TrainedModel
    from sam2.promotion.gate import GateSettings
    from sam2.promotion.promote_step import promote_step, regression_scores
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url, mlflow_tracking_uri)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError("no MLflow registry: set the mlflow_tracking_uri parameter or MLFLOW_TRACKING_URI")
    with open(comparison.path) as handle:
        scores = json.load(handle)
    found = None
    if regression is not None and regression_dataset_uri:
        with open(regression.path) as handle:
            found = json.load(handle)
    trained = TrainedModel.from_metadata(model.metadata)
    step = promote_step(
        ObjectStore(),
        uri,
        dataset_name,
        pipeline_run,
        trained,
        scores,
        promotion_margin=promotion_margin,
        allow_random_init=allow_random_init,
        inference_args=inference_args,
        image=image,
        gate=GateSettings(baseline_margin, regression_dataset_uri, max_regression),
        regression=regression_scores(found, regression_dataset_uri),
    )
    with open(decision_report.path, "w") as handle:
        handle.write(step.report_markdown)
    decision_report.metadata.update(step.decision.to_metadata())
    outputs = namedtuple(
        "PromotionOutputs", ["decision", "model_version", "jf", "run_uri", "dataset_uri", "comparison"]
    )
    return outputs(
        step.decision.decision,
        f"{step.decision.model_name}/{step.decision.version}",
        step.jf,
        trained.run_uri,
        trained.dataset_uri,
        step.summary,
    )
