"""Pipeline step 5b: check that the inference shards predicted every val video exactly once, and publish
each model's predictions as one folder (the masks stay where the shards wrote them: nothing is copied)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def merge_predictions(
    shards: Input[list[Dataset]],
    splits: Input[Dataset],
    predictions: Output[Dataset],
    s3_endpoint_url: str = "",
) -> str:
    """Merge the shard reports (sam2.eval.inference_shards): fail naming any val video no shard or two
    shards predicted, any shard missing; else publish <run>/predictions/<model>/ with one marker over
    every shard's files. `predictions` has the metadata one unsharded infer step would give evaluate.

    Args:
        shards: Every infer_videos shard's output.
        splits: split_dataset's output: the val list the shards must cover exactly once.
        predictions: Each scored model's published predictions (Predictions).
        s3_endpoint_url: The S3 endpoint of object storage; empty for the environment's.

    Returns:
        The run's predictions folder.
    """
    import json
    import logging

    from components.runtime import configure, log_transfers, write_pointer
    from sam2.contracts import DataSplits, Predictions, ShardPredictions
    from sam2.eval.inference_shards import ShardReport, merge_shard_reports
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    store = ObjectStore()
    log = logging.getLogger("merge_predictions")
    metas = [ShardPredictions.from_metadata(shard.metadata) for shard in shards]
    if not metas:
        raise ValueError("merge_predictions got no shard; the infer ParallelFor ran no iteration")
    reports = [ShardReport.from_dict(json.loads(store.read_bytes(m.report_uri))) for m in metas]
    val_list_uri = DataSplits.from_metadata(splits.metadata).val_list_uri
    val_videos = store.read_bytes(val_list_uri).decode().split()
    merged = merge_shard_reports(val_videos, reports)
    out_uri = metas[0].uri
    models = []
    for key, entry in merged.entries.items():
        uri = f"{out_uri}/{key}"
        store.publish_listing(uri, merged.listings[key])
        models.append({**entry, "uri": uri})
        log.info("published %s: %d files from %d shard(s)", uri, len(merged.listings[key]), len(reports))
    merged_predictions = Predictions(
        uri=out_uri,
        checkpoint=metas[0].checkpoint,
        models=models,
        # models the references step could not resolve (the same for every shard), then those a shard
        # failed to score
        skipped={**metas[0].skipped, **merged.skipped},
        num_shards=len(reports),
        num_videos=len(val_videos),
    )
    predictions.metadata.update(merged_predictions.to_metadata())
    write_pointer(predictions.path, dict(predictions.metadata))
    log_transfers(store, "merge_predictions")
    return out_uri
