"""train_launcher=auto: the train step's launcher asks the API server's discovery which job kind it serves.

The clusters are tests/fake_cluster.py (the Training Operator's PyTorchJobs) and tests/fake_trainer.py
(Kubeflow Trainer v2's TrainJobs), behind HTTP; the launcher loads a kubeconfig that points at them, as the
step does outside a pod, and uses the real `kubernetes` client. Discovery answers `GET /apis/<group>/<version>`
with an APIResourceList, or 404 for a group no installed CRD defines (kubernetes apiserver discovery).
"""

from __future__ import annotations

import logging
import time

import pytest
import yaml
from fake_cluster import FakeCluster, done, running, serve
from fake_trainer import FakeTrainerCluster

from sam2.launch.cluster_settings import ClusterSettings
from sam2.launch.job_kind import NoJobKind, cluster_launcher
from sam2.launch.kubeflow import PyTorchJobLauncher
from sam2.launch.launcher import TrainingRequest
from sam2.launch.pytorchjob import job_name_for
from sam2.launch.trainjob_launcher import TrainJobLauncher

NAME = job_name_for("run-7")
SETTINGS = dict(namespace="team-a", image="i:1", poll_s=0.01, stream_logs=False, timeout_s=30)


def _request() -> TrainingRequest:
    return TrainingRequest(
        "run-7", "c.yaml", "s3://sam2-data/datasets/demo/v1", "s3://sam2-runs/run-7", num_nodes=2
    )


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    """Point the kubernetes client's config loading at a served fake cluster (returns a function)."""
    servers = []

    def point_at(cluster):
        server, api_client = serve(cluster)
        servers.append(server)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": api_client.configuration.host}}],
            "users": [{"name": "step", "user": {"token": "not-a-secret"}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "step", "namespace": "team-a"}}
            ],
            "current-context": "fake",
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        return cluster

    yield point_at
    for server in servers:
        server.shutdown()


def test_serving_only_trainjobs_the_step_creates_watches_and_cleans_up_a_trainjob(kubeconfig, caplog):
    caplog.set_level(logging.INFO, logger="sam2.launch")
    cluster = kubeconfig(FakeTrainerCluster("2.1.0"))
    launcher = cluster_launcher("auto", ClusterSettings(**SETTINGS, cleanup="on-success"))
    assert isinstance(launcher, TrainJobLauncher)
    cluster.script = [None, None, lambda: cluster.complete(NAME)]
    result = launcher.launch(_request())
    assert result.details["launcher"] == "trainjob"
    assert (
        "train_launcher=auto chose TrainJob: the API server serves trainer.kubeflow.org/v1alpha1 trainjobs"
        in (caplog.text)
    )
    assert [c["kind"] for c in cluster.created] == ["TrainingRuntime", "TrainJob"]
    assert cluster.deleted == [(NAME, "Background")] and cluster.trainjobs == {} and cluster.pods == {}


def test_serving_only_pytorchjobs_nothing_changes(kubeconfig, caplog):
    caplog.set_level(logging.INFO, logger="sam2.launch")
    cluster = kubeconfig(FakeCluster(running()))
    cluster.on_create = cluster.add_pods
    cluster.script = [None, lambda: setattr(cluster, "status", done("Succeeded"))]
    launcher = cluster_launcher("auto", ClusterSettings(**SETTINGS, cleanup="never"))
    assert isinstance(launcher, PyTorchJobLauncher)
    result = launcher.launch(_request())
    assert result.details["launcher"] == "pytorchjob" and NAME in cluster.jobs
    assert "chose PyTorchJob: the API server serves kubeflow.org/v1 pytorchjobs" in caplog.text


def test_serving_both_the_pytorchjob_comes_first(kubeconfig, caplog):
    caplog.set_level(logging.INFO, logger="sam2.launch")
    kubeconfig(
        FakeTrainerCluster("2.3.0", served=frozenset({"pytorchjobs", "trainjobs", "trainingruntimes"}))
    )
    assert isinstance(cluster_launcher("auto", ClusterSettings(**SETTINGS)), PyTorchJobLauncher)
    assert (
        "it serves trainer.kubeflow.org/v1alpha1 trainjobs too, and the PyTorchJob comes first" in caplog.text
    )


def test_serving_neither_fails_at_once_naming_both_kinds_and_how_to_install_them(kubeconfig):
    cluster = FakeCluster()
    cluster.served = frozenset()
    kubeconfig(cluster)
    start = time.monotonic()
    with pytest.raises(NoJobKind) as err:
        cluster_launcher("auto", ClusterSettings(**SETTINGS))
    assert time.monotonic() - start < 60
    message = str(err.value)
    assert "serves neither PyTorchJob (kubeflow.org/v1 pytorchjobs" in message
    assert "nor TrainJob (trainer.kubeflow.org/v1alpha1 trainjobs" in message
    assert "kubeflow/trainer.git/manifests/overlays/manager?ref=v2.1.0" in message
    assert "kubeflow/training-operator.git/manifests/overlays/standalone" in message
    assert cluster.calls == [], "nothing was created"


def test_a_named_kind_skips_discovery_and_a_bad_one_is_refused(kubeconfig):
    cluster = kubeconfig(FakeTrainerCluster("2.3.0"))
    assert isinstance(cluster_launcher("trainjob", ClusterSettings(**SETTINGS)), TrainJobLauncher)
    assert "discovery" not in cluster.calls
    with pytest.raises(ValueError, match="train_launcher must be one of auto, pytorchjob, trainjob, local"):
        cluster_launcher("mpijob", ClusterSettings(**SETTINGS))


def test_the_pipeline_runs_the_cluster_launcher_the_cluster_serves_by_default():
    from pathlib import Path

    compiled = Path(__file__).resolve().parents[1] / "pipelines" / "sam2_finetune.yaml"
    pipeline = next(yaml.safe_load_all(compiled.read_text()))
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert params["train_launcher"]["defaultValue"] == "auto"
    assert params["trainer_runtime"]["defaultValue"] == "torch-distributed"
