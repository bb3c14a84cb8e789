"""Pipeline step 5: semi-supervised VOS on the val videos from their first-frame masks -> palette PNGs.

One task scores every model in its list (the new checkpoint, the champion, the baseline) on the same
videos with the same settings, so the data is fetched once per task. The step runs as `num_shards`
parallel shards (a ParallelFor, one GPU each), each on its share of the val videos; merge_predictions
checks and publishes the whole set.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def infer_videos(
    model: Input[Model],
    splits: Input[Dataset],
    references: Input[Dataset],
    predictions: Output[Dataset],
    inference_args: str = "",
    shard_index: int = 0,
    num_shards: int = 1,
    s3_endpoint_url: str = "",
) -> str:
    """Run `python -m sam2.tools.vos_inference` (upstream flags) on the val split for the new model and
    for each reference model (see resolve_reference_models); publish the masks at
    <run>/predictions/<new|champion|baseline>/ and return <run>/predictions. A reference model whose
    inference fails is reported as skipped (with the tool's exit status); the new model's failure fails
    the step.

    Shard `shard_index` of `num_shards` (at most one shard per val video: plan_infer_shards runs that
    many) fetches and infers only its videos (every n-th of the sorted val list), writes their masks into
    <run>/predictions/<model>/ unpublished, and its report (videos, files, skipped models) to
    <run>/predictions/_shards/; merge_predictions publishes.

    Args:
        model: train_model's output: the new checkpoint and its model config.
        splits: split_dataset's output: the data set and its val list.
        references: resolve_reference_models's output: the champion and baseline to score too.
        predictions: Where this shard wrote its masks and report (ShardPredictions).
        inference_args: Extra flags for the tool, space-separated, the same for every model.
        shard_index: Which shard this task is, 0-based.
        num_shards: How many shards run (clamped to one per val video).
        s3_endpoint_url: The S3 endpoint of object storage; empty for the environment's.

    Returns:
        The run's predictions folder, <run>/predictions.
    """
    from components.runtime import configure, log_transfers, work_dir, write_pointer
    from sam2.contracts import DataSplits, ReferenceModels, TrainedModel
    from sam2.eval.shard_inference import infer_shard
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    store = ObjectStore()
    shard = infer_shard(
        store,
        TrainedModel.from_metadata(model.metadata),
        DataSplits.from_metadata(splits.metadata),
        ReferenceModels.from_metadata(references.metadata),
        inference_args,
        shard_index,
        num_shards,
        work_dir("infer"),
    )
    predictions.metadata.update(shard.to_metadata())
    write_pointer(predictions.path, dict(predictions.metadata))
    log_transfers(store, f"infer shard {shard_index}/{shard.num_shards}")
    return shard.uri
