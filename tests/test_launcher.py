"""Training launchers: PyTorchJob rendering (1 and N nodes), the cluster launcher's protocol, local torchrun."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sam2.launch.kubeflow import ClusterSettings, PyTorchJobLauncher
from sam2.launch.launcher import TrainingFailed, TrainingRequest
from sam2.launch.pytorchjob import (
    PyTorchJobSpec,
    admission_problems,
    job_name_for,
    load_template,
    render_pytorchjob,
)

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT.parent / "shared" / "schemas" / "kubeflow.org_pytorchjobs.yaml"


@functools.cache
def _crd_validator():
    import jsonschema

    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(v1["schema"]["openAPIV3Schema"])


def _validate_against_crd(job: dict) -> None:
    if not CRD.exists():
        pytest.skip(f"the PyTorchJob CRD is not at {CRD} (../shared/schemas is absent in this clone)")
    _crd_validator().validate(job)


def _request(**kw) -> TrainingRequest:
    base = dict(
        run_id="Pipeline Run 42",
        config="configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
        dataset_uri="s3://sam2-data/datasets/demo/v1",
        run_uri="s3://sam2-runs/run-42",
    )
    return TrainingRequest(**(base | kw))


def test_template_is_the_shipped_manifest():
    assert load_template() == yaml.safe_load((ROOT / "k8s" / "pytorchjob.yaml").read_text())


def test_rendering_the_templates_own_values_reproduces_it_exactly():
    """No drift: the renderer only fills fields; everything else is the k8s/ file."""
    tpl = load_template()
    master = tpl["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    spec = PyTorchJobSpec(
        name=tpl["metadata"]["name"], image=master["image"], args=master["args"], num_nodes=2, gpus_per_node=1
    )
    assert render_pytorchjob(spec) == tpl


@pytest.mark.parametrize("nodes, gpus", [(1, 1), (2, 4), (8, 8)])
def test_rendering_for_n_nodes_is_schema_and_webhook_valid(nodes, gpus):
    job = render_pytorchjob(
        PyTorchJobSpec(
            name="sam2-train-x",
            image="registry.example/sam2:1",
            args=["--a", "b"],
            num_nodes=nodes,
            gpus_per_node=gpus,
            namespace="team-a",
        )
    )
    _validate_against_crd(job)
    assert admission_problems(job) == []
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    if nodes == 1:
        assert "Worker" not in replicas
    else:
        assert replicas["Worker"]["replicas"] == nodes - 1
    assert job["spec"]["nprocPerNode"] == str(gpus)
    assert job["metadata"]["namespace"] == "team-a"
    for replica in replicas.values():
        (c,) = replica["template"]["spec"]["containers"]
        assert (
            c["name"] == "pytorch" and c["image"] == "registry.example/sam2:1" and c["args"] == ["--a", "b"]
        )
        assert c["resources"]["requests"]["nvidia.com/gpu"] == str(gpus)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)


def test_cpu_rendering_requests_no_gpu():
    job = render_pytorchjob(
        PyTorchJobSpec(
            name="cpu-job", image="i:1", args=[], num_nodes=2, gpus_per_node=0, cpu_procs_per_node=3
        )
    )
    _validate_against_crd(job)
    assert job["spec"]["nprocPerNode"] == "3"
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        res = replica["template"]["spec"]["containers"][0]["resources"]
        assert "nvidia.com/gpu" not in res["requests"] and "nvidia.com/gpu" not in res["limits"]


def test_rendering_rejects_bad_settings():
    with pytest.raises(ValueError, match="DNS-1035"):
        render_pytorchjob(PyTorchJobSpec(name="Bad_Name", image="i:1", args=[]))
    with pytest.raises(ValueError, match="num_nodes"):
        render_pytorchjob(PyTorchJobSpec(name="ok", image="i:1", args=[], num_nodes=0))


def test_job_names_are_deterministic_dns_labels():
    assert job_name_for("Pipeline Run 42") == job_name_for("Pipeline Run 42") == "sam2-train-pipeline-run-42"
    long = job_name_for("x" * 200)
    assert len(long) <= 63


def test_secret_name_and_endpoint_are_set_by_reference():
    job = render_pytorchjob(
        PyTorchJobSpec(
            name="j",
            image="i:1",
            args=[],
            s3_secret_name="team-s3",
            env={"S3_ENDPOINT_URL": "http://s3:9000"},
        )
    )
    env = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["S3_ENDPOINT_URL"] == {"name": "S3_ENDPOINT_URL", "value": "http://s3:9000"}
    assert by_name["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "team-s3"


# -- the cluster launcher against an in-memory stand-in for the Kubernetes API (no cluster here) --------


class _ApiError(Exception):
    pass


class _FakeCluster:
    """Just enough of CustomObjectsApi/CoreV1Api: stores objects and plays a scripted status sequence."""

    def __init__(self, statuses: list[dict]):
        self.jobs: dict[str, dict] = {}
        self.creates = 0
        self.deleted: list[str] = []
        self.statuses = statuses
        self.pods: list = []

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        from kubernetes.client.exceptions import ApiException

        self.creates += 1
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[name] = body
        return body

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        job = dict(self.jobs[name])
        job["status"] = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return job

    def delete_namespaced_custom_object(self, group, version, ns, plural, name):
        self.deleted.append(name)
        self.jobs.pop(name)

    def list_namespaced_pod(self, ns, label_selector=""):
        return SimpleNamespace(items=self.pods)


def _done(kind: str, reason: str = "", message: str = "") -> dict:
    return {
        "conditions": [
            {"type": "Running", "status": "False"},
            {"type": kind, "status": "True", "reason": reason, "message": message},
        ]
    }


def _launcher(cluster: _FakeCluster, **kw) -> PyTorchJobLauncher:
    settings = ClusterSettings(namespace="team-a", image="i:1", poll_s=0.01, stream_logs=False, **kw)
    return PyTorchJobLauncher(settings, custom_api=cluster, core_api=cluster)


def test_cluster_launch_creates_once_attaches_on_retry_and_cleans_up():
    cluster = _FakeCluster([{"conditions": [{"type": "Running", "status": "True"}]}, _done("Succeeded")])
    launcher = _launcher(cluster, cleanup="never")
    result = launcher.launch(_request(num_nodes=3))
    assert result.checkpoints_uri == "s3://sam2-runs/run-42/checkpoints"
    name = job_name_for("Pipeline Run 42")
    assert set(cluster.jobs) == {name}
    _validate_against_crd(cluster.jobs[name])
    # A retried step (same run id) attaches to the existing job instead of creating a second one.
    cluster.statuses = [_done("Succeeded")]
    _launcher(cluster, cleanup="on-success").launch(_request(num_nodes=3))
    assert len(cluster.jobs) == 0 and cluster.deleted == [name] and cluster.creates == 2


def test_cluster_failure_reason_and_pod_state_are_surfaced():
    cluster = _FakeCluster([_done("Failed", "BackoffLimitExceeded", "pytorchjob has failed")])
    terminated = SimpleNamespace(exit_code=137, reason="OOMKilled", message=None)
    cluster.pods = [
        SimpleNamespace(
            metadata=SimpleNamespace(name="sam2-train-pipeline-run-42-master-0"),
            status=SimpleNamespace(
                container_statuses=[
                    SimpleNamespace(state=SimpleNamespace(terminated=terminated, waiting=None))
                ]
            ),
        )
    ]
    with pytest.raises(TrainingFailed) as err:
        _launcher(cluster, cleanup="on-success").launch(_request())
    assert "BackoffLimitExceeded" in str(err.value) and "OOMKilled (exit 137)" in str(err.value)
    assert cluster.deleted == [], "a failed job is kept for inspection under cleanup=on-success"


def test_cluster_launch_times_out():
    cluster = _FakeCluster([{"conditions": [{"type": "Running", "status": "True"}]}])
    with pytest.raises(TimeoutError, match="did not finish"):
        _launcher(cluster, timeout_s=0.05, cleanup="always").launch(_request())
    assert cluster.deleted, "cleanup=always removes the job even after a timeout"
