"""The whole demo pipeline through kfp.local, twice: every step's artifacts land in S3, the first run's
model (J&F above 0) becomes champion, the second (the same model again, to the bit) stays
challenger. Minutes on 2 CPU cores: slow."""

from __future__ import annotations

import json

import pytest

from pipelines.local_run import run_locally
from pipelines.presets import load_preset
from sam2.data.layout import STATE_DIR


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two demo runs of ~5 min each on 2 idle cores; more on a busy machine
def test_demo_pipeline_end_to_end_twice(tmp_path, s3_env, s3_store, monkeypatch):
    from sam2.promotion.registry import MlflowModelRegistry

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("SAM2_SCRATCH", str(tmp_path / "scratch"))
    args = load_preset("demo", environ={}) | {"data_bucket": "e2e-data", "runs_bucket": "e2e-runs"}

    first = run_locally(args, pipeline_root=tmp_path / "kfp")
    assert first["decision"] == "champion"
    # Trained from random weights for a few minutes: far from SAM 2.1, but learnt something (an untrained
    # model predicts empty masks, J&F 0).
    assert first["jf"] > 1.0, f"the demo model learnt nothing: J&F {first['jf']:.2f}"
    run_uri = first["run_uri"]
    assert run_uri.startswith("s3://e2e-runs/")
    for folder in ("checkpoints", "tensorboard", "predictions/new", "report", "mlflow_model"):
        assert s3_store.is_published(f"{run_uri}/{folder}"), folder
    metrics = json.loads(s3_store.read_bytes(f"{run_uri}/metrics.json"))
    assert metrics["J&F"] == pytest.approx(first["jf"], abs=1e-3)
    assert s3_store.exists(f"{run_uri}/report.md")
    assert first["dataset_uri"].startswith("s3://e2e-data/datasets/demo/")
    datasets = s3_store.list_objects(first["dataset_uri"])
    assert "manifest.json" in datasets
    assert not [k for k in datasets if k.startswith(STATE_DIR)]  # the extractor's state is not published
    assert any(k.startswith("validation/") for k in datasets) and any(
        k.startswith("splits/") for k in datasets
    )

    # Random weights: no zero-shot baseline; no champion yet on the first run.
    assert "baseline not scored: training started from random weights" in first["comparison"]
    assert "champion not scored: no champion registered yet" in first["comparison"]

    # The replay infers as two shards (one val video each): the merged predictions score exactly the same.
    second = run_locally(args | {"infer_shards": 2}, pipeline_root=tmp_path / "kfp")
    assert sorted(s3_store.list_objects(f"{second['run_uri']}/predictions/_shards")) == [
        "0000-of-0002.json",
        "0001-of-0002.json",
    ]
    assert second["decision"] == "challenger"
    # The champion was scored again in the second run, on the same videos: the same model, difference 0.
    assert "(new minus champion: +0.00)" in second["comparison"]
    assert "decision by rule head-to-head" in second["comparison"]
    # Same data, seeds and init on the CPU with MKL's reproducible mode: the same model to the bit, so the
    # same J&F (without it the replay drifted by up to 0.9, close to the promotion margin).
    assert second["jf"] == pytest.approx(first["jf"], abs=1e-9), (first["jf"], second["jf"])
    assert second["run_uri"] != run_uri

    registry = MlflowModelRegistry(tracking)
    champion = registry.champion("demo")
    assert champion is not None and champion[0] == first["model_version"].split("/")[1]
    mv = registry.client.get_model_version("sam2-demo", second["model_version"].split("/")[1])
    assert mv.source == f"{second['run_uri']}/mlflow_model"
    assert mv.tags["checkpoint_uri"] == f"{second['run_uri']}/checkpoints/checkpoint.pt"
    assert mv.tags["promotion_rule"] == "head-to-head" and mv.run_id
    assert mv.tags["dataset_version"] and mv.tags["init"].startswith("RANDOM")
