"""Pipeline step 6: J, F and J&F per object, per video and overall -> Metrics, metrics.json, a report."""

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
    protocol: str = "sav",
    s3_endpoint_url: str = "",
) -> float:
    """Score the predicted masks of the val videos; publish metrics.json and report.md in the run folder.

    Returns the overall J&F in percent.
    """
    import json

    from components.runtime import configure, fetch_val_split, work_dir
    from sam2.eval.evaluator import evaluate, read_video_list
    from sam2.eval.report import write_report
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    store = ObjectStore()
    work = work_dir("evaluate")
    data, val_list = fetch_val_split(store, splits.metadata, work)
    store.sync_to_local(predictions.metadata["uri"], work / "predictions")
    videos = read_video_list(val_list)
    result = evaluate(
        data / "Annotations", work / "predictions", videos=videos, protocol=protocol, num_processes=1
    )
    scores = result.to_dict()
    for key in ("J&F", "J", "F"):
        metrics.log_metric(key, round(scores[key], 4))
    metrics.log_metric("num_videos", len(scores["per_video"]))

    # EVAL's report: per-video table, bar chart and worst-frame overlays; the KFP copy embeds the images.
    report_dir = work / "report"
    title = f"J&F of {model.metadata.get('uri')} on the val split of {splits.metadata['uri']}"
    if model.metadata.get("init", "given") != "given":
        title += f" (init: {model.metadata['init']})"
    embedded = write_report(
        result,
        report_dir,
        data / "Annotations",
        work / "predictions",
        data / "JPEGImages",
        embed_images=True,
        title=title,
    )
    write_report(
        result, report_dir, data / "Annotations", work / "predictions", data / "JPEGImages", title=title
    )
    with open(report.path, "w") as handle:
        handle.write(embedded)

    run_uri = model.metadata["run_uri"]
    store.write_bytes(f"{run_uri}/metrics.json", json.dumps(scores, indent=2).encode(), "application/json")
    store.upload_folder(report_dir, f"{run_uri}/report")
    store.write_bytes(f"{run_uri}/report.md", (report_dir / "report.md").read_bytes(), "text/markdown")
    return float(scores["J&F"])
