"""Training launchers: PyTorchJob rendering (1 and N nodes), the cluster launcher's protocol, local torchrun."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pytorchjob_crd import validate_against_crd

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
    validate_against_crd(job)
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


def _master_pod(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]


@pytest.mark.parametrize(
    "gpus, cpu, memory, shm",
    [(1, "8", "64Gi", "16Gi"), (4, "32", "256Gi", "64Gi"), (8, "64", "512Gi", "128Gi")],
)
def test_resources_scale_with_the_gpus_of_a_node(gpus, cpu, memory, shm):
    """Every pod asked 8 CPU / 48 Gi whatever its GPUs: with 4 GPUs, 40 DataLoader workers on 8 CPUs."""
    job = render_pytorchjob(PyTorchJobSpec(name="j", image="i:1", args=[], num_nodes=2, gpus_per_node=gpus))
    validate_against_crd(job)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        res = pod["containers"][0]["resources"]
        assert res["requests"] | {"ephemeral-storage": None} == {
            "cpu": cpu,
            "memory": memory,
            "nvidia.com/gpu": str(gpus),
            "ephemeral-storage": None,
        }
        assert res["limits"] == {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)}
        (shm_volume,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm_volume["emptyDir"] == {"medium": "Memory", "sizeLimit": shm}


def test_per_gpu_settings_and_fractional_quantities():
    job = render_pytorchjob(
        PyTorchJobSpec(
            name="j", image="i:1", args=[], gpus_per_node=3, cpu_per_gpu="1500m", memory_per_gpu="1.5Gi"
        )
    )
    res = _master_pod(job)["containers"][0]["resources"]["requests"]
    assert (res["cpu"], res["memory"]) == ("4500m", "4.5Gi")
    with pytest.raises(ValueError, match="'lots' is not a Kubernetes quantity"):
        render_pytorchjob(PyTorchJobSpec(name="j", image="i:1", args=[], cpu_per_gpu="lots"))


def test_scratch_bytes_size_the_scratch_volume_and_the_ephemeral_storage_request():
    from sam2.launch.pytorchjob import SCRATCH_HEADROOM_BYTES

    unbounded = _master_pod(render_pytorchjob(PyTorchJobSpec(name="j", image="i:1", args=[])))
    assert {v["name"]: v for v in unbounded["volumes"]}["scratch"]["emptyDir"] == {}
    dataset = 100 * 2**30
    pod = _master_pod(
        render_pytorchjob(PyTorchJobSpec(name="j", image="i:1", args=[], scratch_bytes=dataset))
    )
    scratch = {v["name"]: v for v in pod["volumes"]}["scratch"]["emptyDir"]
    expected_mib = (dataset * 11 // 10 + SCRATCH_HEADROOM_BYTES) // 2**20  # both whole MiB here
    assert scratch == {"sizeLimit": f"{expected_mib}Mi"}
    request = pod["containers"][0]["resources"]["requests"]["ephemeral-storage"]
    assert request == f"{expected_mib + 8 * 1024}Mi", "scratch plus the template's /tmp and $HOME"
    assert "ephemeral-storage" not in pod["containers"][0]["resources"]["limits"]


def test_the_launcher_passes_the_requests_scratch_bytes():
    launcher = PyTorchJobLauncher(ClusterSettings(namespace="n", image="i:1"), object(), object())
    pod = _master_pod(launcher.render(_request(scratch_bytes=2**30)))
    assert {v["name"]: v for v in pod["volumes"]}["scratch"]["emptyDir"]["sizeLimit"].endswith("Mi")


def test_cpu_rendering_requests_no_gpu():
    job = render_pytorchjob(
        PyTorchJobSpec(
            name="cpu-job", image="i:1", args=[], num_nodes=2, gpus_per_node=0, cpu_procs_per_node=3
        )
    )
    validate_against_crd(job)
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
    """Just enough of CustomObjectsApi/CoreV1Api: stores objects and plays a scripted status sequence.

    A job stored with a status of its own (one left by an earlier attempt) keeps it; the script plays for
    the others. A deleted job lingers for `linger_gets` reads (with a deletionTimestamp, as under foreground deletion
    while its pods go) before reads answer 404.
    """

    def __init__(self, statuses: list[dict], linger_gets: int = 0):
        self.jobs: dict[str, dict] = {}
        self.creates = 0
        self.deleted: list[str] = []
        self.delete_policies: list[str | None] = []
        self.statuses = statuses
        self.pods: list = []
        self.linger_gets = linger_gets
        self.lingering: dict[str, int] = {}

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        from kubernetes.client.exceptions import ApiException

        self.creates += 1
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[name] = body
        return body

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        from kubernetes.client.exceptions import ApiException

        if name in self.lingering:
            if self.lingering[name] > 0:
                self.lingering[name] -= 1
                job = dict(self.jobs[name])
                job["metadata"] = job["metadata"] | {"deletionTimestamp": "2025-01-01T00:00:00Z"}
                return job
            del self.lingering[name]
            self.jobs.pop(name)
        if name not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        job = dict(self.jobs[name])
        if "status" not in job:
            job["status"] = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return job

    def delete_namespaced_custom_object(self, group, version, ns, plural, name, propagation_policy=None):
        self.deleted.append(name)
        self.delete_policies.append(propagation_policy)
        if self.linger_gets:
            self.lingering[name] = self.linger_gets
        else:
            self.jobs.pop(name)

    def list_namespaced_pod(self, ns, label_selector=""):
        return SimpleNamespace(items=self.pods)

    def list_namespaced_event(self, ns, field_selector=""):
        return SimpleNamespace(items=[])  # a namespace without events (tests/fake_cluster.py has them)


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
    validate_against_crd(cluster.jobs[name])
    # A retried step (same run id) attaches to the existing job instead of creating a second one.
    cluster.statuses = [_done("Succeeded")]
    _launcher(cluster, cleanup="on-success").launch(_request(num_nodes=3))
    assert len(cluster.jobs) == 0 and cluster.deleted == [name] and cluster.creates == 2


def _existing_job(cluster: _FakeCluster, status: dict | None = None) -> str:
    """A job of the request's name left by an earlier attempt of the step (marked to tell it apart), in
    `status` for good (None: the cluster's scripted statuses)."""
    name = job_name_for("Pipeline Run 42")
    cluster.jobs[name] = {"metadata": {"name": name, "annotations": {"attempt": "earlier"}}}
    if status is not None:
        cluster.jobs[name]["status"] = status
    return name


def test_a_retry_deletes_a_failed_job_waits_until_it_is_gone_and_creates_it_anew(caplog):
    """cleanup=on-success keeps a Failed job; attaching to it would fail every retry at once, forever."""
    running = {"conditions": [{"type": "Running", "status": "True"}]}
    cluster = _FakeCluster([running, _done("Succeeded")], linger_gets=3)
    name = _existing_job(cluster, _done("Failed", "BackoffLimitExceeded"))
    caplog.set_level(logging.INFO, logger="sam2.launch")
    result = _launcher(cluster, cleanup="never").launch(_request(num_nodes=2))
    assert result.details["job"] == f"team-a/{name}"
    assert cluster.deleted == [name] and cluster.delete_policies == ["Foreground"]
    assert cluster.lingering == {}, "the new job was created before the failed one was gone"
    assert cluster.creates == 2
    assert "annotations" not in cluster.jobs[name]["metadata"], "the failed job is still there"
    assert "status" not in cluster.jobs[name]
    validate_against_crd(cluster.jobs[name])
    text = caplog.text
    assert "it failed (BackoffLimitExceeded): deleting it and creating it anew" in text
    assert f"PyTorchJob team-a/{name} is gone" in text and "created PyTorchJob" in text


@pytest.mark.parametrize(
    "statuses, state",
    [
        ([_done("Succeeded")], "it succeeded"),
        (
            [{"conditions": [{"type": "Running", "status": "True"}]}] * 3 + [_done("Succeeded")],
            "it has not finished",
        ),
    ],
)
def test_a_retry_attaches_to_a_succeeded_or_running_job(caplog, statuses, state):
    cluster = _FakeCluster(list(statuses))
    name = _existing_job(cluster)  # the scripted statuses play for it: running, then done
    caplog.set_level(logging.INFO, logger="sam2.launch")
    result = _launcher(cluster, cleanup="never").launch(_request())
    assert result.checkpoints_uri == "s3://sam2-runs/run-42/checkpoints"
    assert cluster.deleted == [] and cluster.creates == 1
    assert cluster.jobs[name]["metadata"]["annotations"] == {"attempt": "earlier"}
    assert f"exists already ({state}); attaching to it" in caplog.text


def test_a_failed_job_that_will_not_go_away_fails_the_step_naming_it():
    cluster = _FakeCluster([{}], linger_gets=10**6)
    name = _existing_job(cluster, _done("Failed", "BackoffLimitExceeded"))
    with pytest.raises(
        TrainingFailed, match=rf"team-a/{name} was deleted but is still there.*delete_timeout_s"
    ):
        _launcher(cluster, delete_timeout_s=0.05).launch(_request())


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


class _RestartingMaster(_FakeCluster):
    """A master that runs three attempts: the container restarts in its pod (OnFailure), then the pod is
    replaced by a new one (new uid, same name); the job succeeds when the last attempt's container exits.

    Its log is served the way the kubelet does: every read returns the current container's whole log, in
    chunks that split lines (and a UTF-8 character); the first read of the second attempt drops after one
    line while that container keeps running.
    """

    POD = "sam2-train-pipeline-run-42-master-0"
    ATTEMPTS = [
        ("uid-1", 0, ["epoch 0 step 1", "epoch 0 step 2 loss=0.91"]),
        ("uid-1", 1, ["resumed from checkpoint.pt (epoch 1)", "epoch 1 step 1", "epoch 1 step 2 \u2713"]),
        ("uid-2", 0, ["resumed from checkpoint.pt (epoch 2)", "epoch 2 step 1", "training done"]),
    ]

    def __init__(self):
        super().__init__([{}])
        self.lock = threading.Lock()
        self.current = 0
        self.exited = False
        self.reads: list[tuple] = []
        self.dropped = False

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        job = dict(self.jobs[name])
        with self.lock:
            over = self.exited
        job["status"] = (
            _done("Succeeded") if over else {"conditions": [{"type": "Running", "status": "True"}]}
        )
        return job

    def list_namespaced_pod(self, ns, label_selector=""):
        with self.lock:
            uid, restarts, _ = self.ATTEMPTS[self.current]
            state = SimpleNamespace(
                running=None if self.exited else SimpleNamespace(),
                terminated=SimpleNamespace(exit_code=0) if self.exited else None,
                waiting=None,
            )
        status = SimpleNamespace(name="pytorch", restart_count=restarts, state=state)
        pod = SimpleNamespace(
            metadata=SimpleNamespace(name=self.POD, uid=uid),
            status=SimpleNamespace(phase="Running", container_statuses=[status]),
        )
        return SimpleNamespace(items=[pod])

    def read_namespaced_pod_log(self, name, ns, container=None, follow=False, _preload_content=True):
        self.reads.append((name, ns, container, follow))
        with self.lock:
            index, exited = self.current, self.exited
        lines = self.ATTEMPTS[index][2]
        drop = index == 1 and not self.dropped
        self.dropped = self.dropped or drop
        data = "".join(f"{line}\n" for line in (lines[:1] if drop else lines)).encode()

        def chunks():
            for start in range(0, len(data), 7):
                yield data[start : start + 7]
            if drop or exited:
                return  # a dropped connection, or the log of a container that has exited
            with self.lock:  # the container exits: it restarts, the pod is replaced, or the job is done
                if self.current + 1 < len(self.ATTEMPTS):
                    self.current += 1
                else:
                    self.exited = True

        return SimpleNamespace(stream=chunks)


def test_master_log_follows_restarts_and_new_pods_until_the_job_is_over_without_repeats(caplog):
    cluster = _RestartingMaster()
    caplog.set_level(logging.INFO, logger="sam2.launch")
    # The job only ends once its log has been read to the end: a streamer that stops early times it out.
    settings = ClusterSettings(namespace="team-a", image="i:1", poll_s=0.01, cleanup="never", timeout_s=10)
    PyTorchJobLauncher(settings, custom_api=cluster, core_api=cluster).launch(_request())
    pod = _RestartingMaster.POD
    streamed = [
        r.getMessage().removeprefix(f"[{pod}] ")
        for r in caplog.records
        if r.getMessage().startswith(f"[{pod}] ")
    ]
    assert streamed == [line for _, _, lines in _RestartingMaster.ATTEMPTS for line in lines]
    assert {(name, ns, container, follow) for name, ns, container, follow in cluster.reads} == {
        (pod, "team-a", "pytorch", True)
    }


def test_log_lines_are_assembled_across_chunks():
    from sam2.launch.kubeflow import _lines

    text = "a\u00e9b\r\nsecond\n\nlast without newline"
    data = text.encode()
    chunks = [data[i : i + 3] for i in range(0, len(data), 3)]
    assert list(_lines(chunks)) == ["a\u00e9b", "second", "", "last without newline"]


# -- the local path end to end: two torchrun "nodes" on localhost, the real training entry point, real S3 --

TINY_TRAINING = (
    "trainer.accelerator=cpu",
    "scratch.resolution=64",
    "scratch.num_frames=2",
    "scratch.num_epochs=1",
    "scratch.num_train_workers=0",
    "scratch.max_num_objects=1",
    "dataset.multiplier=1",
)
TRAIN_CONFIG = "configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml"


@pytest.fixture(scope="module")
def random_init_checkpoint(tmp_path_factory) -> Path:
    import torch

    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    path = tmp_path_factory.mktemp("init") / "random_init.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def test_local_launcher_trains_on_two_nodes_and_publishes_checkpoints(
    tmp_path, s3_env, s3_store, s3_bucket, random_init_checkpoint
):
    import torch
    from training_data_synth import make_davis

    from sam2.launch.launcher import LocalTorchrunLauncher

    data = tmp_path / "data"
    make_davis(data, {"v0": 4, "v1": 4}, num_objects=1, size=(48, 64))
    (data / "splits").mkdir()
    (data / "splits" / "train.txt").write_text("v0\nv1\n")
    dataset_uri = f"s3://{s3_bucket}/datasets/tiny/v1"
    s3_store.upload_folder(data, dataset_uri)
    run_uri = f"s3://{s3_bucket}/runs/r1"

    request = TrainingRequest(
        run_id="r1",
        config=TRAIN_CONFIG,
        dataset_uri=dataset_uri,
        run_uri=run_uri,
        num_nodes=2,
        procs_per_node=1,
        use_gpus=False,
        init_checkpoint_uri=str(random_init_checkpoint),
        overrides=TINY_TRAINING,
    )
    result = LocalTorchrunLauncher(tmp_path / "scratch", timeout_s=900).launch(request)

    assert result.checkpoints_uri == f"{run_uri}/checkpoints"
    marker = s3_store.read_marker(result.checkpoints_uri)
    assert "checkpoint.pt" in marker["files"]
    assert s3_store.is_published(result.tensorboard_uri)
    local = tmp_path / "ckpt.pt"
    s3_store.download_file(f"{result.checkpoints_uri}/checkpoint.pt", local)
    state = torch.load(local, map_location="cpu", weights_only=False)
    init = torch.load(random_init_checkpoint, map_location="cpu", weights_only=True)["model"]
    assert set(state["model"]) == set(init), "the trained checkpoint keeps the official parameter names"
    assert any(not torch.equal(state["model"][k], init[k]) for k in init), "training changed no weight"
    # Both nodes really joined one job: each node's scratch saw the data, and the world size was 2.
    for rank in (0, 1):
        node = tmp_path / "scratch" / "r1" / f"node{rank}"
        assert (node / "train_list.txt").read_text() == "v0\nv1\n"
        assert (node / "data" / "JPEGImages" / "v1" / "00003.jpg").is_file()
    cfg = (tmp_path / "scratch" / "r1" / "node0" / "experiment" / "config_resolved.yaml").read_text()
    assert "num_nodes: 2" in cfg


def test_local_launcher_surfaces_a_failing_node(tmp_path, random_init_checkpoint):
    from training_data_synth import make_davis

    from sam2.launch.launcher import LocalTorchrunLauncher

    data = tmp_path / "data"
    make_davis(data, {"v0": 3}, num_objects=1)
    request = TrainingRequest(
        run_id="bad",
        config=TRAIN_CONFIG,
        dataset_uri=str(data),
        run_uri=str(tmp_path / "run"),
        train_list="splits/missing.txt",
        num_nodes=2,
        use_gpus=False,
        overrides=TINY_TRAINING,
    )
    with pytest.raises(TrainingFailed, match="splits/missing.txt"):
        LocalTorchrunLauncher(tmp_path / "scratch", timeout_s=300).launch(request)


@pytest.mark.slow  # ~45 s
def test_two_cpu_runs_of_one_config_give_the_same_bits(
    tmp_path, s3_env, s3_store, s3_bucket, random_init_checkpoint, monkeypatch
):
    """With one thread per process (what pipelines.run sets) a replay of an unchanged run trains the same
    model to the bit, so its J&F equals the champion's instead of drifting across the promotion margin."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import torch

    from sam2.data.demo import generate_demo_dataset
    from sam2.launch.launcher import LocalTorchrunLauncher

    data = generate_demo_dataset(tmp_path / "data")
    (data / "splits").mkdir()
    (data / "splits" / "train.txt").write_text("".join(f"demo_{i:03d}\n" for i in range(6)))
    dataset_uri = f"s3://{s3_bucket}/datasets/replay/v1"
    s3_store.upload_folder(data, dataset_uri)
    states = []
    for run in ("first", "replay"):
        request = TrainingRequest(
            run_id=run,
            config=TRAIN_CONFIG,
            dataset_uri=dataset_uri,
            run_uri=f"s3://{s3_bucket}/runs/{run}",
            num_nodes=1,
            procs_per_node=1,
            use_gpus=False,
            init_checkpoint_uri=str(random_init_checkpoint),
            overrides=(
                *TINY_TRAINING[:1],
                "scratch.resolution=128",
                "scratch.num_frames=3",
                *TINY_TRAINING[3:5],
                "scratch.max_num_objects=2",
                "dataset.multiplier=3",
            ),
        )
        result = LocalTorchrunLauncher(tmp_path / "scratch", timeout_s=900).launch(request)
        local = tmp_path / f"{run}.pt"
        s3_store.download_file(f"{result.checkpoints_uri}/checkpoint.pt", local)
        states.append(torch.load(local, map_location="cpu", weights_only=True)["model"])
    differing = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
    assert not differing, f"{len(differing)} of {len(states[0])} tensors differ, e.g. {differing[:3]}"
