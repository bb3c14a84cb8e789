"""Which models a run scores beside the new one: the champion and the baseline, or why not (real S3, SQLite)."""

from __future__ import annotations

from sam2.model_comparison import BASELINE, CHAMPION, resolve_references
from sam2.registry import Candidate, MlflowModelRegistry

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def _register(registry: MlflowModelRegistry, checkpoint: str, model_config: str = "") -> None:
    candidate = Candidate(
        dataset_name="demo",
        checkpoint_uri=checkpoint,
        metrics={"J&F": 50.0, "J": 49.0, "F": 51.0},
        dataset_version="v1",
        config="cfg.yaml",
        pipeline_run="r1",
        model_config=model_config,
    )
    registry.register_and_promote(candidate, margin=0.0)


def test_champion_and_baseline_are_scored_when_their_checkpoints_exist(tmp_path, s3_store, s3_bucket):
    checkpoint, init = f"s3://{s3_bucket}/r1/checkpoint.pt", f"s3://{s3_bucket}/init.pt"
    s3_store.write_bytes(checkpoint, b"weights")
    s3_store.write_bytes(init, b"init weights")
    registry = MlflowModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _register(registry, checkpoint, model_config="configs/sam2.1/sam2.1_hiera_s.yaml")
    models, skipped = resolve_references(registry, s3_store, "demo", init, CONFIG)
    assert skipped == {}
    by_key = {m.key: m for m in models}
    assert by_key[CHAMPION].checkpoint_uri == checkpoint and by_key[CHAMPION].version == "1"
    # The champion runs with the model config it was registered with, the baseline with this run's.
    assert by_key[CHAMPION].model_config.endswith("hiera_s.yaml")
    assert by_key[BASELINE].checkpoint_uri == init and by_key[BASELINE].model_config == CONFIG


def test_a_gone_champion_checkpoint_and_random_init_are_skipped_with_reasons(tmp_path, s3_store, s3_bucket):
    registry = MlflowModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    models, skipped = resolve_references(registry, s3_store, "demo", "", CONFIG)
    assert models == [] and skipped[CHAMPION] == "no champion registered yet"
    assert "random weights" in skipped[BASELINE]

    gone = f"s3://{s3_bucket}/deleted/checkpoint.pt"
    _register(registry, gone)
    models, skipped = resolve_references(registry, s3_store, "demo", "", CONFIG)
    assert models == [] and skipped[CHAMPION] == f"champion version 1's checkpoint {gone} is gone"
