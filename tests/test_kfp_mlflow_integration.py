"""KFP 2.17's own MLflow integration: the promote step logs into the run KFP made for it.

What KFP 2.17.0 does, simulated here against a real MLflow store (SQLite; the `mlflow server` of
tests/test_mlflow_server.py in the slow variant), from kubeflow/pipelines at tag 2.17.0:
- the API server gets or creates the experiment named by `plugins_input.mlflow.experiment_name` and a
  parent run tagged `kfp.pipeline_run_id` / `kfp.pipeline_run_url`
  (backend/src/apiserver/plugins/mlflow/run_start.go, BuildKFPTags);
- the driver creates a nested run per task, named after the task and tagged `mlflow.parentRunId`
  (backend/src/v2/common/plugins/mlflow/handler.go OnTaskStart; backend/src/common/plugins/mlflow/client.go
  ParentRunTagKey), and the task's container gets MLFLOW_RUN_ID (that nested run), MLFLOW_TRACKING_URI and
  MLFLOW_EXPERIMENT_ID (RetrieveUserContainerEnvVars);
- the launcher ends the nested run when the task ends (OnTaskEnd, UpdateRun), so the step leaves it open.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_mlflow_server import mlflow_server  # noqa: F401 - the module-scoped `mlflow server` fixture

from components.runtime import configure
from sam2.promotion.rules import model_name_for

TASKS = ("train-model", "evaluate-predictions", "promote-model")


def _kfp_run_tree(
    client, experiment_name: str, artifact_location: str | None
) -> tuple[str, str, dict[str, str]]:
    """(experiment id, parent run id, task -> nested run id) as KFP 2.17's API server and driver make them."""
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(experiment_name, artifact_location=artifact_location)
    )
    parent = client.create_run(
        experiment_id,
        run_name="sam2-demo-20261206-101500",
        tags={
            "kfp.pipeline_run_id": "run-0042",
            "kfp.pipeline_run_url": "http://kfp/#/runs/details/run-0042",
        },
    ).info.run_id
    nested = {
        task: client.create_run(experiment_id, run_name=task, tags={"mlflow.parentRunId": parent}).info.run_id
        for task in TASKS
    }
    return experiment_id, parent, nested


def _inputs(tmp_path: Path, run_uri: str):
    from sam2.contracts import TrainedModel

    report = tmp_path / "report"
    report.mkdir(parents=True)
    (report / "report.md").write_text("# report\n")
    (report / "jf_change_per_video.png").write_bytes(b"\x89PNG fake")
    metrics_json = tmp_path / "metrics.json"
    metrics_json.write_text(json.dumps({"J&F": 7.0}))
    trained = TrainedModel(
        uri=f"{run_uri}/checkpoints/checkpoint.pt",
        run_uri=run_uri,
        model_config="configs/sam2.1/sam2.1_hiera_t.yaml",
        training_config="configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
        training_overrides="scratch.num_epochs=2",
        init_checkpoint="s3://models/sam2.1_hiera_tiny.pt",
        dataset_uri="s3://data/datasets/demo/v2",
        dataset_version="v2",
    )
    comparison = {
        "dataset_version": "v2",
        "val_list_uri": "s3://data/splits/val.txt",
        "videos": ["a", "b"],
        "protocol": "sav",
        "models": {
            "new": {"label": "new", "checkpoint_uri": "", "version": None, "J&F": 7.0, "J": 6.0, "F": 8.0},
            "baseline": {
                "label": "baseline",
                "checkpoint_uri": "",
                "version": None,
                "J&F": 2.0,
                "J": 1.0,
                "F": 3.0,
            },
        },
        "curves": {"train_loss": [[0, 1.5], [1, 0.9]], "val_J&F": [[0, 3.0], [1, 7.5]]},
    }
    return trained, comparison, report, metrics_json


def _promote(tracking_uri: str, tmp_path: Path, run_uri: str, pipeline_run: str):
    from sam2.promotion.pipeline_run import promote_pipeline_run

    trained, comparison, report, metrics_json = _inputs(tmp_path, run_uri)
    return promote_pipeline_run(
        tracking_uri,
        "demo",
        pipeline_run,
        trained,
        comparison,
        report,
        metrics_json,
        margin=1.0,
        allow_random_init=False,
        extra_params={"model_size": "t", "code_version": "0.1.0-abc"},
    )


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def store(request, tmp_path, s3_env, monkeypatch) -> tuple[str, str | None]:
    """(tracking URI, artifact location for experiments KFP creates) of a real MLflow store."""
    if request.param == "server":
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env["S3_ENDPOINT_URL"])
        return request.getfixturevalue("mlflow_server"), None
    return f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "kfp-artifacts")


def test_with_kfp_mlflow_variables_one_pipeline_run_is_one_run_tree(store, s3_bucket, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    tracking_uri, artifact_location = store
    client = MlflowClient(tracking_uri)
    experiment_id, parent, nested = _kfp_run_tree(client, "sam2-demo", artifact_location)
    before = {r.info.run_id for r in client.search_runs([experiment_id])}
    monkeypatch.setenv("MLFLOW_RUN_ID", nested["promote-model"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    configure("", "http://mlflow:5000")  # the pipeline's mlflow_tracking_uri does not replace KFP's server

    # the configured registry is unreachable: everything must go to KFP's server
    outcome = _promote("http://mlflow:5000", tmp_path / "a", f"s3://{s3_bucket}/run-a", "run-0042")

    assert outcome.run_id == nested["promote-model"]
    every_run = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.run_id for r in every_run} == before == {parent, *nested.values()}  # no run of our own
    run = client.get_run(outcome.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.experiment_id == experiment_id
    assert run.info.status == "RUNNING"  # KFP's launcher ends it with the task
    assert run.data.params["dataset_version"] == "v2" and run.data.params["model_size"] == "t"
    assert run.data.metrics["new_J_and_F"] == 7.0 and run.data.tags["promotion"] == outcome.result.decision
    assert [(m.step, m.value) for m in client.get_metric_history(outcome.run_id, "val_J_and_F")] == [
        (0, 3.0),
        (1, 7.5),
    ]
    assert {"report", "metrics.json", "comparison.json"} <= {
        a.path for a in client.list_artifacts(outcome.run_id)
    }
    version = client.get_model_version(model_name_for("demo"), outcome.result.version)
    assert version.run_id == nested["promote-model"]
    assert client.get_run(version.run_id).data.tags["mlflow.parentRunId"] == parent  # points into the tree


def test_without_the_integration_the_step_opens_its_own_run(store, s3_bucket, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    tracking_uri, _ = store
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    configure("", tracking_uri)
    import os

    assert os.environ["MLFLOW_TRACKING_URI"] == tracking_uri  # the pipeline parameter, as before
    outcome = _promote(tracking_uri, tmp_path / "b", f"s3://{s3_bucket}/run-b", "run-0043")
    client = MlflowClient(tracking_uri)
    run = client.get_run(outcome.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "sam2-demo"
    assert run.info.run_name == "run-0043" and run.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in run.data.tags
    version = client.get_model_version(model_name_for("demo"), outcome.result.version)
    assert version.run_id == outcome.run_id


def test_an_injected_run_without_its_server_is_a_clear_error():
    from sam2.promotion.tracking import injected_run

    assert injected_run({}) is None
    found = injected_run(
        {"MLFLOW_RUN_ID": "abc", "MLFLOW_TRACKING_URI": "http://m:5000", "MLFLOW_EXPERIMENT_ID": "3"}
    )
    assert (found.run_id, found.tracking_uri, found.experiment_id) == ("abc", "http://m:5000", "3")
    with pytest.raises(ValueError, match="MLFLOW_RUN_ID=abc is set.*MLFLOW_TRACKING_URI is not"):
        injected_run({"MLFLOW_RUN_ID": "abc"})
