"""The PyTorchJob launcher on a cluster it shares with others: lifecycle tied to the step, transient API
errors, pending pods, the ExitCode failure policy, failed pods' logs, gang-scheduling renderings.

The cluster is `tests/fake_cluster.py` (the API server, garbage collector and training operator as their
sources define them; see its docstring), except one test that runs the real `kubernetes` client against an
HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from fake_cluster import FakeCluster, api_error, connection_reset, done, event, running
from pytorchjob_crd import validate_against_crd

from sam2.launch.kubeflow import ClusterSettings, PendingTimeout, PyTorchJobLauncher, is_transient
from sam2.launch.launcher import TrainingFailed, TrainingRequest
from sam2.launch.pytorchjob import KUEUE_QUEUE_LABEL, PyTorchJobSpec, job_name_for, render_pytorchjob

ROOT = Path(__file__).resolve().parents[1]
NAME = job_name_for("run-7")
GPU_MESSAGE = (
    "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available: "
    "4 No preemption victims found for incoming pod."
)


def _request(**kw) -> TrainingRequest:
    base = dict(
        run_id="run-7",
        config="configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
        dataset_uri="s3://sam2-data/datasets/demo/v1",
        run_uri="s3://sam2-runs/run-7",
        num_nodes=2,
    )
    return TrainingRequest(**(base | kw))


def _launcher(cluster, **kw) -> PyTorchJobLauncher:
    settings = dict(namespace="team-a", image="i:1", poll_s=0.01, stream_logs=False, cleanup="never")
    return PyTorchJobLauncher(ClusterSettings(**(settings | kw)), custom_api=cluster, core_api=cluster)


# -- lifecycle ---------------------------------------------------------------------------------------------


def test_the_job_is_owned_by_the_steps_pod_and_collected_with_the_run(caplog):
    """Deleting the run deletes the step's pod; the garbage collector then deletes the job (all owners
    gone). A retried step's pod becomes a second owner, so removing the first attempt's pod keeps it."""
    cluster = FakeCluster(done("Succeeded"))
    cluster.owner_pods = {"uid-step-1": "step-1", "uid-step-2": "step-2"}
    _launcher(cluster, owner_pod=("team-a", "step-1", "uid-step-1")).launch(_request())
    job = cluster.jobs[NAME]
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "step-1", "uid": "uid-step-1"}
    ]
    validate_against_crd(job)
    caplog.set_level(logging.INFO, logger="sam2.launch")
    _launcher(cluster, owner_pod=("team-a", "step-2", "uid-step-2")).launch(_request())
    assert [o["uid"] for o in cluster.jobs[NAME]["metadata"]["ownerReferences"]] == [
        "uid-step-1",
        "uid-step-2",
    ]
    assert "now also owned by pod step-2" in caplog.text
    cluster.delete_owner_pod("uid-step-1")
    assert NAME in cluster.jobs, "a job with an owner left must stay"
    cluster.delete_owner_pod("uid-step-2")
    assert NAME not in cluster.jobs and cluster.deleted == [(NAME, "garbage-collector")]


def test_no_owner_reference_across_namespaces(caplog):
    """A namespaced owner in another namespace counts as absent: the collector would delete the job."""
    cluster = FakeCluster(done("Succeeded"))
    _launcher(cluster, owner_pod=("kubeflow", "step-1", "uid-step-1")).launch(_request())
    assert "ownerReferences" not in cluster.jobs[NAME]["metadata"]
    assert "allows no owner in another namespace" in caplog.text


def test_sigterm_deletes_the_job_and_fails_the_step():
    """Terminate run in the UI: Argo stops the step's pod with SIGTERM; the GPUs must not keep training."""
    cluster = FakeCluster(running())
    cluster.on_create = cluster.add_pods
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(TrainingFailed, match=r"got SIGTERM: deleted PyTorchJob team-a/sam2-train-run-7"):
            _launcher(cluster, cleanup="never").launch(_request())
    finally:
        timer.cancel()
    assert cluster.deleted == [(NAME, "Background")] and not cluster.pods, "cleanup=never does not keep it"
    assert signal.getsignal(signal.SIGTERM) is before, "the previous handler is restored"


def test_a_second_sigterm_does_not_cut_the_cleanup_short(caplog):
    """The kubelet may signal again; the job must still be deleted."""
    cluster = FakeCluster(running())
    cluster.on_create = cluster.add_pods
    cluster.before_delete = lambda: os.kill(os.getpid(), signal.SIGTERM)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(TrainingFailed, match="got SIGTERM"):
            _launcher(cluster).launch(_request())
    finally:
        timer.cancel()
    assert cluster.deleted == [(NAME, "Background")]
    assert "got SIGTERM while cleaning up; finishing the cleanup first" in caplog.text


def test_the_steps_timeout_deletes_the_job_and_sets_active_deadline_seconds():
    cluster = FakeCluster(running())
    cluster.on_create = cluster.add_pods
    with pytest.raises(TimeoutError, match="did not finish within"):
        _launcher(cluster, cleanup="on-success", timeout_s=0.05).launch(_request())
    assert cluster.deleted == [(NAME, "Background")]
    job = _launcher(FakeCluster(), timeout_s=7200).render(_request())
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 7200
    validate_against_crd(job)


# -- transient API errors ----------------------------------------------------------------------------------


def test_transient_api_errors_during_the_watch_are_retried(caplog):
    from urllib3.exceptions import MaxRetryError

    cluster = FakeCluster(running())
    cluster.on_create = cluster.add_pods
    cluster.fail_next["create"] = [api_error(503, "Service Unavailable")]
    cluster.fail_next["get"] = [
        api_error(500, "Internal Server Error"),
        api_error(429, "Too Many Requests", **{"Retry-After": "0"}),
        connection_reset(),
        MaxRetryError(None, "/apis", reason=connection_reset()),
        api_error(502, "Bad Gateway"),
    ]
    cluster.fail_next["list_pods"] = [api_error(504, "Gateway Timeout")]
    cluster.script = [None] * 3 + [lambda: setattr(cluster, "status", done("Succeeded"))]
    caplog.set_level(logging.WARNING, logger="sam2.launch")
    result = _launcher(cluster).launch(_request())
    assert result.details["job"] == f"team-a/{NAME}"
    assert cluster.calls.count("create") == 2
    retried = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
    assert len(retried) == 7 and any("Connection reset by peer" in m for m in retried)


def test_an_api_that_stays_away_fails_the_step_after_api_retry_s():
    cluster = FakeCluster(running())
    cluster.fail_next["get"] = [api_error(503, "Service Unavailable") for _ in range(10**4)]
    with pytest.raises(
        TrainingFailed, match=r"gave no answer reading PyTorchJob .* for 0.3s \(api_retry_s\).*503"
    ):
        _launcher(cluster, api_retry_s=0.3).launch(_request())


def test_a_refusal_is_not_retried():
    cluster = FakeCluster(running())
    cluster.fail_next["get"] = [api_error(403, "Forbidden")]
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException):
        _launcher(cluster).launch(_request())
    assert cluster.calls.count("get") == 1
    assert not is_transient(api_error(404, "NotFound")) and is_transient(api_error(429, "Too Many"))


class _FlakyApiServer(BaseHTTPRequestHandler):
    """Answers the PyTorchJob API the way a restarting API server behind a proxy does: 503, 429 with
    Retry-After, connections reset (SO_LINGER 0 closes with RST), then the job."""

    script: list[str] = []
    seen: list[str] = []

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict, **headers: str) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._send(201, body)

    def do_GET(self):
        step = self.script.pop(0) if self.script else "ok"
        self.seen.append(step)
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
        if step == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif step == "503":
            self._send(503, status | {"reason": "ServiceUnavailable", "code": 503})
        elif step == "429":
            self._send(429, status | {"reason": "TooManyRequests", "code": 429}, **{"Retry-After": "0"})
        else:
            self._send(200, {"metadata": {"name": NAME}, "status": done("Succeeded")})


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the handler closed a connection on purpose


def test_the_real_kubernetes_client_recovers_from_503_429_and_connection_resets():
    """The exceptions the real client raises for these answers are the ones the launcher retries."""
    from kubernetes import client

    server = _QuietServer(("127.0.0.1", 0), _FlakyApiServer)
    # urllib3 retries a reset GET 3 times itself; 5 in a row reach the launcher as MaxRetryError.
    _FlakyApiServer.script = ["503", "429", *["reset"] * 5]
    _FlakyApiServer.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        api = client.CustomObjectsApi(client.ApiClient(config))
        settings = ClusterSettings(namespace="team-a", image="i:1", poll_s=0.01, stream_logs=False)
        result = PyTorchJobLauncher(settings, custom_api=api, core_api=object()).launch(_request())
    finally:
        server.shutdown()
    assert result.details["job"] == f"team-a/{NAME}"
    assert _FlakyApiServer.seen == ["503", "429", *["reset"] * 5, "ok"]


# -- scheduling visibility -----------------------------------------------------------------------------------


def _pending_with_events(cluster: FakeCluster):
    def make(name: str) -> None:
        for pod_obj in cluster.add_pods(name, phase="Pending"):
            cluster.events.append(event(pod_obj, "FailedScheduling", GPU_MESSAGE))
            cluster.events.append(event(pod_obj, "Scheduled", "ignored: not a waiting reason", kind="Normal"))

    return make


def test_a_pod_that_cannot_be_scheduled_is_reported_and_fails_at_the_pending_timeout(caplog):
    cluster = FakeCluster(running())
    cluster.on_create = _pending_with_events(cluster)
    caplog.set_level(logging.INFO, logger="sam2.launch")
    with pytest.raises(PendingTimeout) as err:
        _launcher(cluster, pending_timeout_s=0.3, cleanup="on-success").launch(_request())
    message = str(err.value)
    assert "2 of 2 pod(s) did not start within 0.3s (pending_timeout)" in message
    assert f"last event: {NAME}-worker-0: FailedScheduling: {GPU_MESSAGE}" in message or (
        f"last event: {NAME}-master-0: FailedScheduling: {GPU_MESSAGE}" in message
    )
    waits = [r.getMessage() for r in caplog.records if " waits: " in r.getMessage()]
    assert sorted(waits) == sorted(
        f"pod {NAME}-{role}-0 waits: FailedScheduling: {GPU_MESSAGE}" for role in ("master", "worker")
    ), "each event logged once, Normal events left out"
    assert f"pod {NAME}-master-0: (new) -> Pending" in caplog.text
    assert cluster.deleted == [(NAME, "Background")], "a job that cannot start is removed, freeing held GPUs"


def test_pods_that_start_before_the_pending_timeout_are_followed_to_the_end(caplog):
    cluster = FakeCluster(running())
    cluster.on_create = _pending_with_events(cluster)

    def start_all():
        for pod_obj in list(cluster.pods.values()):
            pod_obj.status.phase = "Running"

    cluster.script = (
        [None] * 5 + [start_all] + [None] * 30 + [lambda: setattr(cluster, "status", done("Succeeded"))]
    )
    caplog.set_level(logging.INFO, logger="sam2.launch")
    _launcher(cluster, pending_timeout_s=0.2).launch(_request())  # 30 polls of 10 ms after starting
    assert f"pod {NAME}-worker-0: Pending -> Running" in caplog.text


def test_pods_the_operator_cannot_create_are_explained_by_the_jobs_events(caplog):
    """The operator records a Warning on the job when it cannot create a pod (pkg/controller.v1/common
    pod.go: FailedCreatePod), e.g. when the pods' service account is missing."""
    from types import SimpleNamespace

    cluster = FakeCluster(running())
    why = 'Error creating: pods "sam2-train-run-7-master-0" is forbidden: error looking up service account team-a/sam2-training: serviceaccount "sam2-training" not found'

    def refuse(name: str) -> None:
        job = SimpleNamespace(metadata=SimpleNamespace(name=name, uid=cluster.jobs[name]["metadata"]["uid"]))
        warning = event(job, "FailedCreatePod", why)
        warning.involved_object.kind = "PyTorchJob"
        cluster.events.append(warning)

    cluster.on_create = refuse
    with pytest.raises(PendingTimeout, match="last event: sam2-train-run-7: FailedCreatePod: Error creating"):
        _launcher(cluster, pending_timeout_s=0.2).launch(_request())
    assert f"pytorchjob {NAME} waits: FailedCreatePod: {why}" in caplog.text


SUSPENDED = {"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}


def test_time_suspended_in_the_kueue_queue_is_not_pending_time():
    """An ordinary queue wait (Kueue keeps the job suspended: runPolicy.suspend, condition Suspended) far past
    pending_timeout must not fail the step; once admitted, the job's pods start and it finishes."""
    cluster = FakeCluster(SUSPENDED)

    def admit() -> None:
        cluster.status = running()
        cluster.add_pods(NAME)

    cluster.script = (
        [None] * 30 + [admit] + [None] * 3 + [lambda: setattr(cluster, "status", done("Succeeded"))]
    )
    launcher = _launcher(cluster, pending_timeout_s=0.05, scheduler="kueue", queue="team-a-gpus")
    launcher.launch(_request())  # 30 polls suspended (> 0.05 s) and no PendingTimeout


def test_queue_timeout_fails_a_job_kueue_never_admits():
    from sam2.launch.job_watch import QueueTimeout

    cluster = FakeCluster(SUSPENDED)
    settings = dict(pending_timeout_s=0.01, scheduler="kueue", queue="team-a-gpus", queue_timeout_s=0.3)
    with pytest.raises(QueueTimeout, match=r"still suspended in its queue after 0.3s \(queue_timeout\)"):
        _launcher(cluster, **settings).launch(_request())


def test_pending_timeout_zero_waits_without_limit():
    cluster = FakeCluster(running())
    cluster.on_create = _pending_with_events(cluster)
    cluster.script = [None] * 40 + [lambda: setattr(cluster, "status", done("Succeeded"))]
    _launcher(cluster, pending_timeout_s=0).launch(_request())


# -- restartPolicy ExitCode, and what reaches the step's error -------------------------------------------


def test_a_config_error_on_a_worker_fails_fast_with_its_last_log_lines():
    cluster = FakeCluster(running())
    cluster.on_create = cluster.add_pods
    log = "".join(f"line {i}\n" for i in range(100)) + "ValueError: scratch.num_frames must be >= 1\n"
    cluster.script = [None, lambda: cluster.exit_pod(f"{NAME}-worker-0", 2, log=log)]
    with pytest.raises(TrainingFailed) as err:
        _launcher(cluster).launch(_request())
    message = str(err.value)
    assert f'job "{NAME}" is failing because "Worker" replica(s) failed' in message
    assert f"{NAME}-worker-0: Error (exit 2)" in message
    assert f"--- last 40 log lines of {NAME}-worker-0 (exit 2) ---" in message
    assert "ValueError: scratch.num_frames must be >= 1" in message
    assert "line 61\n" in message and "line 60\n" not in message, "exactly the last 40 lines"
    assert cluster.calls.count("get") == 2, "failed at the first poll after the exit, no retries"


def test_an_oom_kill_replaces_the_pod_and_training_goes_on(caplog):
    cluster = FakeCluster(running())
    cluster.on_create = cluster.add_pods
    worker = f"{NAME}-worker-0"
    cluster.script = [
        None,
        lambda: cluster.exit_pod(worker, 137, "OOMKilled"),
        None,
        lambda: setattr(cluster, "status", done("Succeeded")),
    ]
    caplog.set_level(logging.INFO, logger="sam2.launch")
    _launcher(cluster).launch(_request())
    assert f"pod {worker} was replaced by the operator (1 replacement(s)" in caplog.text
    assert "Restarting (PyTorchJobRestarting) job sam2-train-run-7 is restarting" in caplog.text


def test_replacements_past_backoff_limit_fail_the_step():
    """Under ExitCode the operator counts no replaced pods against backoffLimit: the launcher does."""
    cluster = FakeCluster(running())
    cluster.on_create = cluster.add_pods
    worker = f"{NAME}-worker-0"
    cluster.script = [lambda: cluster.exit_pod(worker, 137, "OOMKilled") for _ in range(10)]
    with pytest.raises(TrainingFailed, match=r"replaced 4 times, more than runPolicy.backoffLimit=3"):
        _launcher(cluster, cleanup="on-success").launch(_request())
    assert cluster.deleted == [(NAME, "Background")], "a job nobody watches any more is removed"


def test_the_template_restarts_only_on_signals():
    """The rendered replicas use ExitCode; the operator's rule: >= 128 retryable (train_util.go)."""
    job = render_pytorchjob(PyTorchJobSpec(name="j", image="i:1", args=[], num_nodes=3))
    assert {r["restartPolicy"] for r in job["spec"]["pytorchReplicaSpecs"].values()} == {"ExitCode"}
    env = {
        e["name"]: e.get("value")
        for e in job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PET_RDZV_BACKEND"] == "c10d" and env["PET_RDZV_ID"] == "j"
    assert env["PET_RDZV_CONF"].startswith("join_timeout=") and int(env["PET_MAX_RESTARTS"]) >= 1
    assert env["TORCHELASTIC_ERROR_FILE"].startswith("/tmp/"), "a writable place for torchrun's error"
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


# -- gang scheduling ---------------------------------------------------------------------------------------


def test_volcano_rendering_gangs_all_replicas():
    job = _launcher(
        FakeCluster(), scheduler="volcano", queue="gpu-queue", priority_class="training-high"
    ).render(_request(num_nodes=4, procs_per_node=8))
    validate_against_crd(job)
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {
        "minAvailable": 4,
        "queue": "gpu-queue",
        "priorityClass": "training-high",
    }
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod_spec = replica["template"]["spec"]
        assert pod_spec["schedulerName"] == "volcano" and pod_spec["priorityClassName"] == "training-high"
    assert KUEUE_QUEUE_LABEL not in job["metadata"]["labels"]


def test_kueue_rendering_labels_the_queue_and_creates_the_job_suspended():
    job = _launcher(FakeCluster(), scheduler="kueue", queue="team-a-gpus").render(_request())
    validate_against_crd(job)
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a-gpus"
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert "schedulingPolicy" not in job["spec"]["runPolicy"]
    with pytest.raises(ValueError, match="scheduler=kueue needs a queue"):
        _launcher(FakeCluster(), scheduler="kueue").render(_request())


def test_default_rendering_has_no_gang_scheduling():
    job = _launcher(FakeCluster()).render(_request())
    assert "schedulingPolicy" not in job["spec"]["runPolicy"] and "suspend" not in job["spec"]["runPolicy"]
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert "schedulerName" not in replica["template"]["spec"]
    with pytest.raises(ValueError, match="scheduler must be one of"):
        _launcher(FakeCluster(), scheduler="yunikorn").render(_request())


def test_placement_and_dataloader_workers_follow_the_settings():
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    job = _launcher(
        FakeCluster(),
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=tolerations,
        priority_class="batch-low",
        cpu_per_gpu="6",
    ).render(_request(procs_per_node=4))
    validate_against_crd(job)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod_spec = replica["template"]["spec"]
        assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert pod_spec["tolerations"] == tolerations and pod_spec["priorityClassName"] == "batch-low"
        container = pod_spec["containers"][0]
        assert container["resources"]["requests"]["cpu"] == "24"
        assert container["args"][-1] == "scratch.num_train_workers=5", "6 CPUs per GPU: 5 workers + 1"
    own = _launcher(FakeCluster()).render(_request(overrides=("scratch.num_train_workers=2",)))
    args = own["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("scratch.num_train_workers=")] == ["scratch.num_train_workers=2"]


# -- the train step's settings and the compiled pipeline ----------------------------------------------------


def test_cluster_settings_take_the_owner_from_the_downward_api_and_check_placement():
    from components.training_setup import cluster_settings

    env = {"POD_NAME": "step-pod", "POD_UID": "uid-9", "POD_NAMESPACE": "team-a"}
    settings = cluster_settings("team-a", "i:1", "", 1.0, "never", "s", env=env, scheduler="kueue", queue="q")
    assert settings.owner_pod == ("team-a", "step-pod", "uid-9") and settings.pending_timeout_s == 1800
    assert cluster_settings("team-a", "i:1", "", 1.0, "never", "s", env={}).owner_pod is None
    with pytest.raises(ValueError, match="each toleration must be an object"):
        cluster_settings("n", "i:1", "", 1.0, "never", "s", env={}, tolerations=[{"keyy": "x"}])
    with pytest.raises(ValueError, match="scheduler=kueue needs a queue"):
        cluster_settings("n", "i:1", "", 1.0, "never", "s", env={}, scheduler="kueue")
    with pytest.raises(ValueError, match="memory_per_gpu: '64GB' is not a Kubernetes quantity"):
        cluster_settings("n", "i:1", "", 1.0, "never", "s", env={}, memory_per_gpu="64GB")


def test_the_compiled_pipeline_gives_train_its_pod_identity_and_places_infer_on_gpu_nodes():
    compiled = ROOT / "pipelines" / "sam2_finetune.yaml"
    pipeline, platform = list(yaml.safe_load_all(compiled.read_text()))[:2]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    fields = {f["name"]: f["fieldPath"] for f in executors["exec-train-model"]["fieldPathAsEnv"]}
    assert fields == {
        "POD_NAME": "metadata.name",
        "POD_UID": "metadata.uid",
        "POD_NAMESPACE": "metadata.namespace",
    }
    infer = next(v for k, v in executors.items() if k.startswith("exec-infer-videos"))
    # Inside a ParallelFor the compiler passes the pipeline parameter in as "pipelinechannel--<name>".
    selector = infer["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
    assert selector.removeprefix("pipelinechannel--") == "gpu_node_selector"
    toleration = infer["tolerations"][0]["tolerationJson"]["componentInputParameter"]
    assert toleration.removeprefix("pipelinechannel--") == "gpu_tolerations"
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert params["scheduler"]["defaultValue"] == "none", "gang scheduling is off by default"
    assert params["pending_timeout_minutes"]["defaultValue"] == 30


# -- the same scenarios through the real kubernetes client, over HTTP --------------------------------------


def _http_launcher(cluster: FakeCluster, api_client=None, **kw):
    """A launcher whose clients talk HTTP to `cluster` (a new server unless `api_client` is one's)."""
    from fake_cluster import serve
    from kubernetes import client

    server = None
    if api_client is None:
        server, api_client = serve(cluster)
    settings = dict(namespace="team-a", image="i:1", poll_s=0.01, stream_logs=False, cleanup="never")
    launcher = PyTorchJobLauncher(
        ClusterSettings(**(settings | kw)),
        custom_api=client.CustomObjectsApi(api_client),
        core_api=client.CoreV1Api(api_client),
    )
    return server, launcher


def test_over_http_a_workers_config_error_reaches_the_step_with_its_log_tail():
    """The client's own models: V1PodList, container states, tailLines, merge-patched owners, 5xx, resets."""
    cluster = FakeCluster(running())
    cluster.on_create = cluster.add_pods
    cluster.fail_next["list_pods"] = [api_error(503, "ServiceUnavailable"), connection_reset()]
    log = "".join(f"line {i}\n" for i in range(100)) + "ValueError: scratch.num_frames must be >= 1\n"
    cluster.script = [None, None, lambda: cluster.exit_pod(f"{NAME}-worker-0", 2, log=log)]
    server, launcher = _http_launcher(cluster)
    try:
        with pytest.raises(TrainingFailed) as err:
            launcher.launch(_request())
    finally:
        server.shutdown()
    message = str(err.value)
    assert f"{NAME}-worker-0: Error (exit 2)" in message
    assert "ValueError: scratch.num_frames must be >= 1" in message
    assert "line 61\n" in message and "line 60\n" not in message


def test_over_http_pending_pods_show_the_schedulers_events_and_a_retry_adopts_the_job(caplog):
    cluster = FakeCluster(running())
    cluster.on_create = _pending_with_events(cluster)
    cluster.owner_pods = {"uid-a": "step-a", "uid-b": "step-b"}
    server, launcher = _http_launcher(cluster, pending_timeout_s=0.3, owner_pod=("team-a", "step-a", "uid-a"))
    caplog.set_level(logging.INFO, logger="sam2.launch")
    try:
        with pytest.raises(PendingTimeout, match="Insufficient nvidia.com/gpu"):
            launcher.launch(_request())
        assert cluster.deleted == [], "cleanup=never keeps it"
        cluster.status = done("Succeeded")
        _, again = _http_launcher(
            cluster, launcher.custom.api_client, owner_pod=("team-a", "step-b", "uid-b")
        )
        again.launch(_request())  # a retried step: attaches, adds its pod as an owner (merge patch)
    finally:
        server.shutdown()
    assert f"pod {NAME}-master-0 waits: FailedScheduling: {GPU_MESSAGE}" in caplog.text
    assert [o["uid"] for o in cluster.jobs[NAME]["metadata"]["ownerReferences"]] == ["uid-a", "uid-b"]
