"""Pipeline step 6: J, F and J&F of every scored model (new, champion, baseline) on the same val videos
-> Metrics, metrics.json, the comparison promotion decides on, and a report."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def evaluate_predictions(
    predictions: Input[Dataset],
    splits: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    report: Output[Markdown],
    comparison: Output[Dataset],
    protocol: str = "sav",
    s3_endpoint_url: str = "",
) -> float:
    """Score the predicted masks of each model on the val videos; publish metrics.json (the new model's
    scores, with every model's under "models") and report.md in the run folder; `comparison` holds the
    scores promotion compares (see sam2.promotion.comparison).

    Args:
        predictions: merge_predictions's output: each scored model's masks.
        splits: split_dataset's output: the val videos and their ground truth.
        model: train_model's output: the new checkpoint, its run folder and training logs.
        metrics: J&F, J, F of the new model and of each reference model, and the number of videos.
        report: The comparison report (tables, per-video change, worst frames, training curves).
        comparison: The scores promotion decides on (JSON, ComparisonSummary metadata).
        protocol: The evaluation protocol: "sav" (SA-V) or "davis2017".
        s3_endpoint_url: The S3 endpoint of object storage; empty for the environment's.

    Returns:
        The new model's J&F in percent.
    """
    import json

    from components.runtime import configure, work_dir
    from sam2.contracts import DataSplits, Predictions, TrainedModel
    from sam2.eval.run_evaluation import evaluate_run
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    evaluation = evaluate_run(
        ObjectStore(),
        Predictions.from_metadata(predictions.metadata),
        DataSplits.from_metadata(splits.metadata),
        TrainedModel.from_metadata(model.metadata),
        protocol,
        work_dir("evaluate"),
    )
    for name, value in evaluation.metrics().items():
        metrics.log_metric(name, value)
    with open(comparison.path, "w") as handle:
        json.dump(evaluation.summary, handle, indent=1)
    comparison.metadata.update(evaluation.comparison.to_metadata())
    with open(report.path, "w") as handle:
        handle.write(evaluation.embedded_report)
    return float(evaluation.new_scores["J&F"])
