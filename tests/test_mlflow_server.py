"""The registry against a real MLflow tracking server: `mlflow server` on 127.0.0.1 with a SQLite backend
and the local S3 server as artifact store (no proxying: clients write to S3 with MLFLOW_S3_ENDPOINT_URL,
as k8s/mlflow.yaml runs it). Registration and the run's params/metrics/artifacts, pyfunc loading and
prediction on a tiny video (frames and mp4), the lease lock under concurrent promotions. The server
takes up to a minute to start on a busy machine: slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2.eval.masks import write_palette_png
from sam2.promotion.registry import MlflowModelRegistry
from sam2.promotion.rules import CHALLENGER, CHAMPION, Candidate, model_name_for
from sam2.utils.network import free_port

pytestmark = pytest.mark.slow

MODEL_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SMALL = ["++model.image_size=128"]


@pytest.fixture(scope="module")
def mlflow_server(s3_server, tmp_path_factory) -> Iterator[str]:
    """A `mlflow server` process; yields its URL. Artifacts: s3://<bucket>/mlflow on the test S3 server."""
    from s3_server import store_for

    root = tmp_path_factory.mktemp("mlflow-server")
    bucket = "mlflow-artifacts"
    store_for(s3_server).ensure_bucket(bucket)
    port = free_port()
    env = {**os.environ, **s3_server.env(), "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--backend-store-uri=sqlite:///{root / 'mlflow.db'}",
        "--no-serve-artifacts",
        f"--default-artifact-root=s3://{bucket}/mlflow",
        "--workers=1",
    ]
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {proc.returncode}:\n{(root / 'server.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer in 180 s:\n{(root / 'server.log').read_text()}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def server_env(mlflow_server, s3_env, monkeypatch) -> str:
    """This process talks to the server (and to S3 for artifacts) as the promote step does."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env["S3_ENDPOINT_URL"])
    return mlflow_server


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The tiny model with seeded random weights, written by our package (build_sam2 + torch.save)."""
    import torch

    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(MODEL_CONFIG, None, device="cpu", hydra_overrides_extra=SMALL)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def _tiny_video(root: Path) -> tuple[Path, Path, np.ndarray]:
    """Four 64x64 frames of a bright square moving right on dark ground as JPEGs and as an mp4, and its
    first-frame id map."""
    from test_data_extraction import encode_video

    frames = root / "frames"
    frames.mkdir(parents=True)
    images = []
    for t in range(4):
        rgb = np.full((64, 64, 3), 30, np.uint8)
        rgb[20:40, 10 + 4 * t : 30 + 4 * t] = 220
        Image.fromarray(rgb).save(frames / f"{t:05d}.jpg", quality=95)
        images.append(rgb)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 1
    return frames, encode_video(root / "video.mp4", images), mask


def _comparison(new: float, champion: tuple[str, float] | None, videos: list[str]) -> dict:
    def entry(label: str, jf: float, version: str | None = None) -> dict:
        return {"label": label, "checkpoint_uri": "", "version": version, "J&F": jf, "J": jf - 1, "F": jf + 1}

    # The zero-shot baseline (the initial checkpoint) scored 1 point below the new model on the same videos,
    # so the promotion gate (sam2.promotion.gate) lets the promotion rule decide.
    models = {"new": entry("new", new), "baseline": entry("baseline (zero-shot)", new - 1.0)}
    if champion:
        models["champion"] = entry(f"champion v{champion[0]}", champion[1], champion[0])
    return {
        "dataset_version": "v2",
        "val_list_uri": "s3://data/splits/val.txt",
        "videos": videos,
        "protocol": "sav",
        "models": models,
        "skipped": {},
        "curves": {"train_loss": [[0, 1.5], [1, 0.9]], "val_J&F": [[0, 3.0], [1, 7.5]]},
    }


def test_a_pipeline_run_is_an_mlflow_run_and_its_version_loads_with_pyfunc(
    server_env, s3_store, s3_bucket, tiny_checkpoint, tmp_path
):
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from sam2.build_sam import build_sam2_video_predictor
    from sam2.contracts import TrainedModel
    from sam2.promotion.pipeline_run import promote_pipeline_run

    run_uri = f"s3://{s3_bucket}/run-1"
    s3_store.upload_file(tiny_checkpoint, f"{run_uri}/checkpoints/checkpoint.pt")
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# report\n![chart](jf_change_per_video.png)\n")
    (report / "jf_change_per_video.png").write_bytes(b"\x89PNG fake")
    metrics_json = tmp_path / "metrics.json"
    metrics_json.write_text(json.dumps({"J&F": 7.0}))
    trained = TrainedModel(
        uri=f"{run_uri}/checkpoints/checkpoint.pt",
        run_uri=run_uri,
        model_config=MODEL_CONFIG,
        training_config="configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
        training_overrides="scratch.num_epochs=2 scratch.resolution=128",
        init_checkpoint="s3://models/sam2.1_hiera_tiny.pt",
        dataset_uri="s3://data/datasets/demo/v2",
        dataset_version="v2",
    )
    outcome = promote_pipeline_run(
        server_env,
        "demo",
        "run-1",
        trained,
        _comparison(7.0, None, ["a", "b"]),
        report,
        metrics_json,
        margin=1.0,
        allow_random_init=False,
        extra_params={"model_size": "t", "image": "ghcr.io/x/sam2:1", "code_version": "git:abc"},
        inference_overrides=SMALL,
    )
    result = outcome.result
    assert result.decision == CHAMPION and result.rule == "first"

    client = MlflowClient(server_env)
    run = client.get_run(outcome.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "sam2-demo" and run.info.run_name == "run-1"
    params = run.data.params
    assert (
        params["model_size"] == "t"
        and params["dataset_version"] == "v2"
        and params["image"] == "ghcr.io/x/sam2:1"
    )
    assert params["code_version"] == "git:abc" and params["config.scratch.num_epochs"] == "2"
    assert params["config.scratch.resolution"] == "128"
    assert run.data.metrics["new_J_and_F"] == 7.0 and run.data.tags["promotion"] == CHAMPION
    history = client.get_metric_history(outcome.run_id, "val_J_and_F")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 7.5)]
    assert [m.step for m in client.get_metric_history(outcome.run_id, "train_loss")] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"report", "metrics.json", "comparison.json", "config"} <= artifacts
    assert {a.path for a in client.list_artifacts(outcome.run_id, "report")} == {
        "report/report.md",
        "report/jf_change_per_video.png",
    }
    # The run's artifacts went to the server's artifact root in S3.
    assert run.info.artifact_uri.startswith("s3://mlflow-artifacts/mlflow/")

    mv = client.get_model_version(model_name_for("demo"), result.version)
    assert mv.run_id == outcome.run_id and mv.source == f"{run_uri}/mlflow_model"
    assert mv.tags["checkpoint_uri"] == trained.uri
    requirements = s3_store.read_bytes(f"{run_uri}/mlflow_model/requirements.txt").decode()
    assert "sam2-kubeflow==" in requirements and "torch==" in requirements

    # Load the champion by alias and track the tiny video, from a frame folder and from an mp4.
    model = mlflow.pyfunc.load_model(f"models:/{model_name_for('demo')}@champion")
    frames, mp4, mask = _tiny_video(tmp_path / "video")
    out = model.predict({"video": str(frames), "mask": mask})
    assert out["object_ids"] == [1] and out["masks"].shape == (4, 64, 64) and out["masks"].dtype == np.uint8
    # It is this package's video predictor on the registered checkpoint: the same masks as direct use.
    import torch

    predictor = build_sam2_video_predictor(
        MODEL_CONFIG, tiny_checkpoint, device="cpu", hydra_overrides_extra=SMALL
    )
    with torch.inference_mode():
        state = predictor.init_state(str(frames))
        predictor.add_new_mask(state, 0, 1, torch.from_numpy(mask == 1))
        direct = {i: (logits[0, 0] > 0).numpy() for i, _, logits in predictor.propagate_in_video(state)}
    for i in range(4):
        np.testing.assert_array_equal(out["masks"][i] == 1, direct[i])
    png = tmp_path / "mask.png"
    write_palette_png(png, mask)
    points = model.predict([{"video": str(frames), "points": [[20, 30]], "labels": [1], "obj_id": 3}])
    assert len(points) == 1 and points[0]["object_ids"] == [3] and points[0]["masks"].shape == (4, 64, 64)
    by_file = model.predict({"video": str(frames), "mask": str(png)})
    np.testing.assert_array_equal(by_file["masks"], out["masks"])
    from_mp4 = model.predict({"video": str(mp4), "mask": mask})
    assert from_mp4["masks"].shape == (4, 64, 64) and from_mp4["object_ids"] == [1]
    assert (from_mp4["masks"][0] == 1).sum() > 0.8 * (mask == 1).sum()  # the prompted frame keeps its object
    with pytest.raises(ValueError, match="'mask'.*or 'points'"):
        model.predict({"video": str(frames)})


def _promote_on_server(server: str, run: str, jf: float, decisions: list, errors: list, start) -> None:
    registry = MlflowModelRegistry(server, settle_s=0.3)
    assert registry._lock_file is None  # a server: the registered-model tag lease, not a local file lock
    candidate = Candidate(
        dataset_name="race",
        checkpoint_uri=f"s3://runs/{run}/checkpoints/checkpoint.pt",
        metrics={"J&F": jf, "J": jf, "F": jf},
        dataset_version="v1",
        config="cfg.yaml",
        pipeline_run=run,
    )
    start.wait()
    try:
        decisions.append(registry.register_and_promote(candidate, margin=1.0).decision)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_two_promotions_at_once_on_a_server_make_one_champion(server_env):
    base = MlflowModelRegistry(server_env)
    _promote_on_server(server_env, "base", 50.0, [], [], threading.Barrier(1))
    decisions: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)
    threads = [
        threading.Thread(
            target=_promote_on_server, args=(server_env, f"r{i}", 60.0, decisions, errors, start)
        )
        for i in (1, 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    # Both beat the old champion by the margin; whichever went second saw the first as champion.
    assert sorted(decisions) == [CHALLENGER, CHAMPION]
    name = model_name_for("race")
    assert "promotion_lock" not in base.client.get_registered_model(name).tags
    champion = base.champion("race")
    assert champion is not None and champion[0] in {"2", "3"} and champion[1] == 60.0
