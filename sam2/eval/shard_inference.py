"""The infer step's work: one inference shard runs every scored model on its share of the val videos.

The new model and each reference model (champion, zero-shot baseline) run through
`python -m sam2.tools.vos_inference` (upstream's flags) on the same videos with the same flags, one
subprocess per model so each starts from a clean process. A shard fetches only its videos
(sam2.data.staging), writes each model's masks into ``<run>/predictions/<model>/`` unpublished, and its
:class:`~sam2.eval.inference_shards.ShardReport` to ``<run>/predictions/_shards/``; the merge publishes.
A reference model whose inference fails is recorded as skipped with the tool's exit status; the new
model's failure fails the shard.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sam2.contracts import DataSplits, ReferenceModels, ShardPredictions, TrainedModel
from sam2.data.layout import ANNOTATIONS_DIR, IMAGES_DIR
from sam2.data.staging import fetch_val_split
from sam2.eval.inference_shards import REPORTS_DIR, ShardReport, plan_shards, report_name
from sam2.promotion.comparison import NEW, ComparedModel

if TYPE_CHECKING:
    from sam2.storage import ObjectStore

logger = logging.getLogger(__name__)


class InferenceFailed(RuntimeError):
    """The new model's inference failed; the message names its checkpoint and the exit status."""


def vos_inference_command(
    model: ComparedModel,
    checkpoint: Path,
    data: Path,
    val_list: Path,
    out_dir: Path,
    extra_args: Sequence[str],
) -> list[str]:
    """The `sam2.tools.vos_inference` command line of one model on the listed videos of `data`."""
    return [
        sys.executable,
        "-m",
        "sam2.tools.vos_inference",
        "--sam2_cfg",
        model.model_config,
        "--sam2_checkpoint",
        str(checkpoint),
        "--base_video_dir",
        str(data / IMAGES_DIR),
        "--input_mask_dir",
        str(data / ANNOTATIONS_DIR),
        "--video_list_file",
        str(val_list),
        "--output_mask_dir",
        str(out_dir),
        *extra_args,
    ]


def infer_shard(
    store: ObjectStore,
    trained: TrainedModel,
    splits: DataSplits,
    references: ReferenceModels,
    inference_args: str,
    shard_index: int,
    num_shards: int,
    work: Path,
) -> ShardPredictions:
    """Run the new model and the reference models on shard `shard_index` of `num_shards` (clamped to one
    per val video) and store the unpublished masks and the shard's report. Raises InferenceFailed when
    the new model's inference fails."""
    num_shards = plan_shards(num_shards, splits.num_val)
    data, val_list = fetch_val_split(store, splits, work, shard=(shard_index, num_shards))
    videos = val_list.read_text().split()
    out_uri = f"{trained.run_uri}/predictions"
    report = ShardReport(shard_index, num_shards, videos)
    for entry in [ComparedModel(NEW, trained.uri, trained.model_config, "new"), *references.models]:
        if not videos:  # more shards than videos: nothing to infer, an empty share
            report.models[entry.key] = {"entry": entry.to_dict(), "files": {}}
            continue
        checkpoint = work / entry.key / "checkpoint.pt"
        store.download_file(entry.checkpoint_uri, checkpoint)
        out_dir = work / "predictions" / entry.key
        logger.info("inference of the %s model (%s)", entry.label, entry.checkpoint_uri)
        cmd = vos_inference_command(entry, checkpoint, data, val_list, out_dir, inference_args.split())
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            if entry.key == NEW:
                raise InferenceFailed(
                    f"inference of the new model {entry.checkpoint_uri} failed ({proc.returncode})"
                )
            report.skipped[entry.key] = (
                f"inference of {entry.checkpoint_uri} failed with exit status {proc.returncode}"
            )
            logger.error("%s", report.skipped[entry.key])
            continue
        checkpoint.unlink()
        # Unpublished until the merge has checked every shard (a rerun's stale marker goes first).
        store.unpublish(f"{out_uri}/{entry.key}")
        files = store.upload_files(out_dir, f"{out_uri}/{entry.key}") if out_dir.is_dir() else {}
        report.models[entry.key] = {"entry": entry.to_dict(), "files": files}
    report_uri = f"{out_uri}/{REPORTS_DIR}/{report_name(shard_index, num_shards)}"
    store.write_bytes(report_uri, json.dumps(report.to_dict()).encode(), "application/json")
    return ShardPredictions(
        uri=out_uri,
        checkpoint=trained.uri,
        report_uri=report_uri,
        shard_index=shard_index,
        num_shards=num_shards,
        num_videos=len(videos),
        skipped=references.skipped,
    )
