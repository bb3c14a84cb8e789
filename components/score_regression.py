"""Pipeline step: the new model and the zero-shot baseline on the regression set, for the promotion gate."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def score_regression_set(
    model: Input[Model],
    references: Input[Dataset],
    regression: Output[Dataset],
    regression_dataset_uri: str = "",
    inference_args: str = "",
    protocol: str = "sav",
    s3_endpoint_url: str = "",
) -> str:
    """Score the new model and the zero-shot baseline (the initial checkpoint) on every video of the
    regression set with vos_inference and J&F, for promote's regression gate; with no
    `regression_dataset_uri` it scores nothing and says so. A set that cannot be scored is reported (the
    gate then keeps the version from champion), never a failed step.

    Args:
        model: train_model's output: the new checkpoint and its model config.
        references: resolve_reference_models's output: the baseline to score beside it.
        regression: The scores (RegressionScores as JSON) promote reads.
        regression_dataset_uri: s3:// folder of a DAVIS-style set (JPEGImages/, Annotations/); empty: off.
        inference_args: Extra vos_inference flags, the same as the val split's.
        protocol: J&F protocol, as evaluate's ("sav" or "davis2017").
        s3_endpoint_url: The S3 endpoint of object storage; empty for the environment's.

    Returns:
        One line with both scores, or why the set was not scored.
    """
    import dataclasses
    import json

    from components.runtime import configure, work_dir
    from sam2.contracts import ReferenceModels, TrainedModel
    from sam2.promotion.gate import RegressionScores
    from sam2.promotion.regression_set import score_regression_set as score
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    if not regression_dataset_uri:
        scores = RegressionScores("", unscored_reason="no regression_dataset_uri set")
    else:
        scores = score(
            ObjectStore(),
            TrainedModel.from_metadata(model.metadata),
            ReferenceModels.from_metadata(references.metadata),
            regression_dataset_uri,
            inference_args,
            work_dir("regression"),
            protocol,
        )
    with open(regression.path, "w") as handle:
        json.dump(dataclasses.asdict(scores), handle)
    if scores.new_score is None or scores.baseline_score is None:
        return f"regression set not scored: {scores.unscored_reason}"
    return (
        f"regression set {regression_dataset_uri} ({len(scores.videos)} videos): new J&F "
        f"{scores.new_score:.2f}, zero-shot baseline {scores.baseline_score:.2f}"
    )
