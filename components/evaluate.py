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
    from sam2.contracts import ComparisonSummary, DataSplits, Predictions, TrainedModel
    from sam2.data.staging import fetch_val_split
    from sam2.eval.evaluator import evaluate, read_video_list
    from sam2.eval.report import stage_report_frames, write_comparison_report
    from sam2.eval.training_curves import read_training_curves
    from sam2.promotion.comparison import NEW, comparison_summary
    from sam2.storage import ObjectStore
    from sam2.utils.cpu_threads import available_cpu_cores

    configure(s3_endpoint_url)
    store = ObjectStore()
    work = work_dir("evaluate")
    data_splits = DataSplits.from_metadata(splits.metadata)
    trained = TrainedModel.from_metadata(model.metadata)
    predicted = Predictions.from_metadata(predictions.metadata)
    # Masks only: scoring reads no frame; the overlays' few frames are fetched after scoring.
    data, val_list = fetch_val_split(store, data_splits, work, parts=("Annotations",))
    videos = read_video_list(val_list)
    entries = predicted.entries()
    results, pred_roots = {}, {}
    for key, entry in entries.items():
        pred_roots[key] = work / "predictions" / key
        store.sync_to_local(entry["uri"], pred_roots[key])
        results[key] = evaluate(
            data / "Annotations",
            pred_roots[key],
            videos=videos,
            protocol=protocol,
            num_processes=available_cpu_cores(),
        )
    stage_report_frames(store, data_splits.uri, data, results[NEW])
    curves = None
    if trained.tensorboard_uri:
        tb_dir = work / "tensorboard"
        store.sync_to_local(trained.tensorboard_uri, tb_dir, require_marker=False)
        curves = read_training_curves(tb_dir)

    summary = comparison_summary(
        {key: r.to_dict() for key, r in results.items()},
        entries,
        skipped=predicted.skipped,
        dataset_version=trained.dataset_version,
        val_list_uri=data_splits.val_list_uri,
        videos=videos,
        protocol=protocol,
        curves=curves,
    )
    new_scores = results[NEW].to_dict()
    for key in ("J&F", "J", "F"):
        metrics.log_metric(key, round(new_scores[key], 4))
        for other, scores in summary["models"].items():
            if other != NEW:
                metrics.log_metric(f"{other}_{key}", round(scores[key], 4))
    metrics.log_metric("num_videos", len(new_scores["per_video"]))
    with open(comparison.path, "w") as handle:
        json.dump(summary, handle, indent=1)
    compared = ComparisonSummary(
        dataset_version=summary["dataset_version"],
        val_list_uri=summary["val_list_uri"],
        skipped=summary["skipped"],
    )
    comparison.metadata.update(compared.to_metadata())

    # The report: all models side by side, the per-video change, the new model's worst losses with
    # overlays, and the training curves; the KFP copy embeds the images.
    report_dir = work / "report"
    title = f"J&F on the val split of {data_splits.uri}"
    labels = {key: entry["label"] for key, entry in entries.items()}
    notes = [f"new: {trained.uri}" + (f" (init: {trained.init_note})" if trained.random_init else "")]
    kwargs = dict(
        gt_root=data / "Annotations",
        pred_roots=pred_roots,
        image_root=data / "JPEGImages",
        labels=labels,
        skipped=summary["skipped"],
        curves=curves,
        title=title,
        notes=notes,
    )
    embedded = write_comparison_report(results, report_dir, embed_images=True, **kwargs)
    write_comparison_report(results, report_dir, **kwargs)
    with open(report.path, "w") as handle:
        handle.write(embedded)

    run_uri = trained.run_uri
    payload = {**new_scores, "models": summary["models"], "skipped": summary["skipped"]}
    store.write_bytes(f"{run_uri}/metrics.json", json.dumps(payload, indent=2).encode(), "application/json")
    store.write_bytes(
        f"{run_uri}/comparison.json", json.dumps(summary, indent=1).encode(), "application/json"
    )
    store.upload_folder(report_dir, f"{run_uri}/report")
    store.write_bytes(f"{run_uri}/report.md", (report_dir / "report.md").read_bytes(), "text/markdown")
    return float(new_scores["J&F"])
