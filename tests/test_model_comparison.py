"""Which models a run scores beside the new one: the champion and the baseline, or why not (real S3, SQLite)."""

from __future__ import annotations

from sam2.promotion.comparison import BASELINE, CHAMPION
from sam2.promotion.references import resolve_references
from sam2.promotion.registry import MlflowModelRegistry
from sam2.promotion.rules import Candidate

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


def test_the_comparison_promotion_reads_holds_both_scores_measured_on_the_same_videos():
    from sam2.promotion.comparison import NEW, comparison_lines, comparison_summary, head_to_head

    def scores(jf: float) -> dict:
        return {"J&F": jf, "J": jf - 2, "F": jf + 2, "per_video": {"a": {"J&F": jf}, "b": {"J&F": None}}}

    entries = {
        NEW: {"key": NEW, "checkpoint_uri": "s3://r/new.pt", "label": "new"},
        CHAMPION: {
            "key": CHAMPION,
            "checkpoint_uri": "s3://r/old.pt",
            "label": "champion v4",
            "version": "4",
        },
    }
    summary = comparison_summary(
        {NEW: scores(55.0), CHAMPION: scores(40.0)},
        entries,
        skipped={BASELINE: "training started from random weights"},
        dataset_version="v9",
        val_list_uri="s3://d/val.txt",
        videos=["a", "b"],
        protocol="sav",
        curves={"val_J&F": [(0, 1.0)]},
    )
    assert summary["models"][CHAMPION]["per_video"] == {"a": 40.0, "b": None}
    h2h = head_to_head(summary)
    assert (h2h.new_score, h2h.champion_version, h2h.champion_score) == (55.0, "4", 40.0)
    assert h2h.dataset_version == "v9" and h2h.num_videos == 2 and h2h.baseline_score is None
    lines = comparison_lines(summary)
    assert lines[0] == "baseline not scored: training started from random weights"
    assert lines[1].startswith("champion J&F  40.00") and lines[1].endswith("(new minus champion: +15.00)")
    assert lines[2].startswith("new      J&F  55.00")

    alone = comparison_summary(
        {NEW: scores(55.0)}, entries, {CHAMPION: "no champion registered yet"}, "v9", "", ["a"], "sav"
    )
    assert head_to_head(alone).unscored_reason == "no champion registered yet"
