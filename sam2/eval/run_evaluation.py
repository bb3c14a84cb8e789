"""The evaluate step's work: score every model's predictions on the same val videos, compare them, write
the report and publish the run's metrics.json, comparison.json and report.

Scoring reads masks only, so only the val videos' annotations are fetched; the few frames the report's
overlays draw on are fetched after scoring. The comparison (sam2.promotion.comparison.comparison_summary)
is what promotion decides on; the report puts all models side by side with the per-video change, the new
model's worst losses with overlays and the training curves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam2.contracts import ComparisonSummary, DataSplits, Predictions, TrainedModel
from sam2.data.layout import ANNOTATIONS_DIR, IMAGES_DIR
from sam2.data.staging import fetch_val_split
from sam2.eval.evaluator import EvaluationResult, evaluate, read_video_list
from sam2.eval.report import stage_report_frames, write_comparison_report
from sam2.eval.training_curves import read_training_curves
from sam2.promotion.comparison import NEW, SCORES, comparison_summary
from sam2.utils.cpu_threads import available_cpu_cores

if TYPE_CHECKING:
    from sam2.storage import ObjectStore


@dataclass(frozen=True)
class RunEvaluation:
    """What the evaluate step hands on: the comparison JSON and its contract, and the report with its
    images inlined (the KFP Markdown artifact has no folder beside it)."""

    summary: dict[str, Any]
    new_scores: dict[str, Any]
    embedded_report: str

    @property
    def comparison(self) -> ComparisonSummary:
        return ComparisonSummary(
            dataset_version=self.summary["dataset_version"],
            val_list_uri=self.summary["val_list_uri"],
            skipped=self.summary["skipped"],
        )

    def metrics(self) -> dict[str, float]:
        """The KFP metrics: the new model's J&F, J, F, each reference model's as `<key>_<score>`, and the
        number of videos."""
        out = {}
        for key in SCORES:
            out[key] = round(self.new_scores[key], 4)
            for other, scores in self.summary["models"].items():
                if other != NEW:
                    out[f"{other}_{key}"] = round(scores[key], 4)
        out["num_videos"] = len(self.new_scores["per_video"])
        return out


def evaluate_run(
    store: ObjectStore,
    predictions: Predictions,
    splits: DataSplits,
    trained: TrainedModel,
    protocol: str,
    work: Path,
) -> RunEvaluation:
    """Score each model of `predictions` on the val videos of `splits`, write the report, and publish
    metrics.json (the new model's scores, every model's under "models"), comparison.json and the report
    in the run folder."""
    data, val_list = fetch_val_split(store, splits, work, parts=(ANNOTATIONS_DIR,))
    videos = read_video_list(val_list)
    entries = predictions.entries()
    results: dict[str, EvaluationResult] = {}
    pred_roots: dict[str, Path] = {}
    for key, entry in entries.items():
        pred_roots[key] = work / "predictions" / key
        store.sync_to_local(entry["uri"], pred_roots[key])
        results[key] = evaluate(
            data / ANNOTATIONS_DIR,
            pred_roots[key],
            videos=videos,
            protocol=protocol,
            num_processes=available_cpu_cores(),
        )
    stage_report_frames(store, splits.uri, data, results[NEW])
    curves = None
    if trained.tensorboard_uri:
        tb_dir = work / "tensorboard"
        store.sync_to_local(trained.tensorboard_uri, tb_dir, require_marker=False)
        curves = read_training_curves(tb_dir)
    summary = comparison_summary(
        {key: r.to_dict() for key, r in results.items()},
        entries,
        skipped=predictions.skipped,
        dataset_version=trained.dataset_version,
        val_list_uri=splits.val_list_uri,
        videos=videos,
        protocol=protocol,
        curves=curves,
    )
    report_dir = work / "report"
    report_args: dict[str, Any] = dict(
        gt_root=data / ANNOTATIONS_DIR,
        pred_roots=pred_roots,
        image_root=data / IMAGES_DIR,
        labels={key: entry["label"] for key, entry in entries.items()},
        skipped=summary["skipped"],
        curves=curves,
        title=f"J&F on the val split of {splits.uri}",
        notes=[f"new: {trained.uri}" + (f" (init: {trained.init_note})" if trained.random_init else "")],
    )
    embedded = write_comparison_report(results, report_dir, embed_images=True, **report_args)
    write_comparison_report(results, report_dir, **report_args)
    evaluation = RunEvaluation(summary, results[NEW].to_dict(), embedded)
    _publish(store, trained.run_uri, evaluation, report_dir)
    return evaluation


def _publish(store: ObjectStore, run_uri: str, evaluation: RunEvaluation, report_dir: Path) -> None:
    """metrics.json, comparison.json, report/ and report.md in the run folder."""
    summary = evaluation.summary
    payload = {**evaluation.new_scores, "models": summary["models"], "skipped": summary["skipped"]}
    store.write_bytes(f"{run_uri}/metrics.json", json.dumps(payload, indent=2).encode(), "application/json")
    store.write_bytes(
        f"{run_uri}/comparison.json", json.dumps(summary, indent=1).encode(), "application/json"
    )
    store.upload_folder(report_dir, f"{run_uri}/report")
    store.write_bytes(f"{run_uri}/report.md", (report_dir / "report.md").read_bytes(), "text/markdown")
