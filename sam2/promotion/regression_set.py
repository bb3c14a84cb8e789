"""Score the new model and the zero-shot baseline on the run's regression set, for the promotion gate.

The regression set (`regression_dataset_uri`) is a DAVIS-style folder in object storage (`JPEGImages/`,
`Annotations/`), e.g. a slice of a public benchmark the team keeps: a fine-tune that forgets what the
initial checkpoint could do loses J&F there. Both models run through `python -m sam2.tools.vos_inference`
with the run's inference flags, on every video of the set, and are scored with the same J&F evaluator and
protocol as the val split, so the two numbers are comparable.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from sam2.contracts import ReferenceModels, TrainedModel
from sam2.data.layout import ANNOTATIONS_DIR, IMAGES_DIR
from sam2.eval.evaluator import evaluate
from sam2.eval.shard_inference import vos_inference_command
from sam2.promotion.comparison import BASELINE, NEW, ComparedModel
from sam2.promotion.gate import RegressionScores
from sam2.storage import ObjectStore, StorageError

logger = logging.getLogger(__name__)


def score_regression_set(
    store: ObjectStore,
    trained: TrainedModel,
    references: ReferenceModels,
    dataset_uri: str,
    inference_args: str,
    work: Path,
    protocol: str = "sav",
) -> RegressionScores:
    """J&F (percent) of the new model and the baseline on every video of `dataset_uri`.

    Never raises for a set that cannot be scored: the result's `unscored_reason` says why (no baseline,
    no videos, an inference that failed), and the gate then keeps the version from champion.
    """
    baseline = next((m for m in references.models if m.key == BASELINE), None)
    if baseline is None:
        why = references.skipped.get(BASELINE, "no zero-shot baseline in this run")
        return RegressionScores(dataset_uri, unscored_reason=why)
    data = work / "regression"
    uri = dataset_uri.rstrip("/")
    try:
        for part in (IMAGES_DIR, ANNOTATIONS_DIR):
            store.sync_to_local(f"{uri}/{part}", data / part, require_marker=False)
    except (StorageError, ValueError) as exc:
        return RegressionScores(dataset_uri, unscored_reason=f"cannot read {uri}: {exc}")
    images = data / IMAGES_DIR
    videos = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    if not videos:
        return RegressionScores(dataset_uri, unscored_reason=f"no videos under {uri}/{IMAGES_DIR}/")
    video_list = work / "regression_videos.txt"
    video_list.write_text("\n".join(videos) + "\n")
    scores: dict[str, float] = {}
    for entry in (ComparedModel(NEW, trained.uri, trained.model_config, "new"), baseline):
        checkpoint = work / f"regression-{entry.key}.pt"
        store.download_file(entry.checkpoint_uri, checkpoint)
        out = work / "regression_predictions" / entry.key
        cmd = vos_inference_command(entry, checkpoint, data, video_list, out, inference_args.split())
        logger.info("regression set %s: inference of the %s model", uri, entry.label)
        if subprocess.run(cmd, check=False).returncode != 0:
            why = f"inference of the {entry.label} model ({entry.checkpoint_uri}) on {uri} failed"
            return RegressionScores(dataset_uri, tuple(videos), unscored_reason=why)
        checkpoint.unlink()
        result = evaluate(data / ANNOTATIONS_DIR, out, videos=videos, protocol=protocol, num_processes=1)
        scores[entry.key] = 100.0 * result.jf
        logger.info("regression set %s: %s J&F %.2f", uri, entry.label, scores[entry.key])
    return RegressionScores(dataset_uri, tuple(videos), scores[NEW], scores[BASELINE])
