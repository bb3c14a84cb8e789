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
    import json
    import logging
    import subprocess
    import sys

    from components.runtime import configure, log_transfers, work_dir, write_pointer
    from sam2.contracts import DataSplits, ReferenceModels, ShardPredictions, TrainedModel
    from sam2.data.staging import fetch_val_split
    from sam2.eval.inference_shards import REPORTS_DIR, ShardReport, plan_shards, report_name
    from sam2.promotion.comparison import NEW, ComparedModel
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    log = logging.getLogger("infer_videos")
    store = ObjectStore()
    work = work_dir("infer")
    data_splits = DataSplits.from_metadata(splits.metadata)
    trained = TrainedModel.from_metadata(model.metadata)
    refs = ReferenceModels.from_metadata(references.metadata)
    num_shards = plan_shards(num_shards, data_splits.num_val)
    data, val_list = fetch_val_split(store, data_splits, work, shard=(shard_index, num_shards))
    videos = val_list.read_text().split()
    new = ComparedModel(NEW, trained.uri, trained.model_config, "new")
    todo = [new, *refs.models]
    out_uri = f"{trained.run_uri}/predictions"
    report = ShardReport(shard_index, num_shards, videos)
    for entry in todo:
        if not videos:  # more shards than videos: nothing to infer, an empty share
            report.models[entry.key] = {"entry": entry.to_dict(), "files": {}}
            continue
        checkpoint = work / entry.key / "checkpoint.pt"
        store.download_file(entry.checkpoint_uri, checkpoint)
        out_dir = work / "predictions" / entry.key
        cmd = [
            sys.executable,
            "-m",
            "sam2.tools.vos_inference",
            "--sam2_cfg",
            entry.model_config,
            "--sam2_checkpoint",
            str(checkpoint),
            "--base_video_dir",
            str(data / "JPEGImages"),
            "--input_mask_dir",
            str(data / "Annotations"),
            "--video_list_file",
            str(val_list),
            "--output_mask_dir",
            str(out_dir),
            *inference_args.split(),
        ]
        log.info("inference of the %s model (%s)", entry.label, entry.checkpoint_uri)
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            if entry.key == NEW:
                raise RuntimeError(
                    f"inference of the new model {entry.checkpoint_uri} failed ({proc.returncode})"
                )
            report.skipped[entry.key] = (
                f"inference of {entry.checkpoint_uri} failed with exit status {proc.returncode}"
            )
            log.error("%s", report.skipped[entry.key])
            continue
        checkpoint.unlink()
        # Unpublished until the merge has checked every shard (a rerun's stale marker goes first).
        store.unpublish(f"{out_uri}/{entry.key}")
        files = store.upload_files(out_dir, f"{out_uri}/{entry.key}") if out_dir.is_dir() else {}
        report.models[entry.key] = {"entry": entry.to_dict(), "files": files}
    report_uri = f"{out_uri}/{REPORTS_DIR}/{report_name(shard_index, num_shards)}"
    store.write_bytes(report_uri, json.dumps(report.to_dict()).encode(), "application/json")
    shard = ShardPredictions(
        uri=out_uri,
        checkpoint=trained.uri,
        report_uri=report_uri,
        shard_index=shard_index,
        num_shards=num_shards,
        num_videos=len(videos),
        skipped=refs.skipped,
    )
    predictions.metadata.update(shard.to_metadata())
    write_pointer(predictions.path, dict(predictions.metadata))
    log_transfers(store, f"infer shard {shard_index}/{num_shards}")
    return out_uri
