"""Scoring the regression set for the promotion gate (sam2.promotion.regression_set): the real
vos_inference and J&F evaluator on a tiny DAVIS-style set in the test S3 server."""

from __future__ import annotations

import pytest

from sam2.contracts import ReferenceModels, TrainedModel
from sam2.promotion.comparison import BASELINE, ComparedModel
from sam2.promotion.regression_set import score_regression_set

MODEL_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TINY = "--device cpu --hydra_overrides ++model.image_size=128"


@pytest.fixture
def regression_set(s3_env, s3_store, s3_bucket, tmp_path):
    from sam2.data.demo import generate_demo_dataset
    from sam2.training.random_init import random_init_checkpoint

    root = generate_demo_dataset(tmp_path / "set", num_videos=2, num_frames=4, seed=3)
    uri = f"s3://{s3_bucket}/regression"
    for part in ("JPEGImages", "Annotations"):
        s3_store.upload_folder(root / part, f"{uri}/{part}")
    init = random_init_checkpoint(MODEL_CONFIG, f"s3://{s3_bucket}/init.pt", seed=0)
    other = random_init_checkpoint(MODEL_CONFIG, f"s3://{s3_bucket}/other.pt", seed=1)
    return uri, init, other


def trained(checkpoint: str, s3_bucket: str) -> TrainedModel:
    return TrainedModel(uri=checkpoint, run_uri=f"s3://{s3_bucket}/run", model_config=MODEL_CONFIG)


def refs(checkpoint: str) -> ReferenceModels:
    return ReferenceModels(models=[ComparedModel(BASELINE, checkpoint, MODEL_CONFIG, "baseline (init)")])


def test_both_models_are_scored_on_every_video_of_the_set(regression_set, s3_store, s3_bucket, tmp_path):
    uri, init, other = regression_set
    same = score_regression_set(s3_store, trained(init, s3_bucket), refs(init), uri, TINY, tmp_path / "a")
    assert same.videos == ("demo_000", "demo_001") and same.unscored_reason is None
    assert same.new_score == same.baseline_score and 0.0 <= same.new_score <= 100.0, "same weights, same J&F"
    different = score_regression_set(
        s3_store, trained(other, s3_bucket), refs(init), uri, TINY, tmp_path / "b"
    )
    assert different.baseline_score == same.baseline_score
    assert different.new_score is not None and different.new_score != different.baseline_score


def test_a_set_that_cannot_be_scored_says_why(regression_set, s3_store, s3_bucket, tmp_path):
    uri, init, _ = regression_set
    no_baseline = ReferenceModels(skipped={BASELINE: "training started from random weights"})
    result = score_regression_set(s3_store, trained(init, s3_bucket), no_baseline, uri, TINY, tmp_path / "a")
    assert result.new_score is None and result.unscored_reason == "training started from random weights"
    empty = score_regression_set(
        s3_store, trained(init, s3_bucket), refs(init), f"s3://{s3_bucket}/nothing", TINY, tmp_path / "b"
    )
    assert empty.new_score is None and "no objects under this prefix" in empty.unscored_reason
