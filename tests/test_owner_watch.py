"""Each training node watches the pipeline step's pod and ends the job once that pod is over.

KFP's TerminateRun does not delete the step pod (kubeflow/pipelines 2.16.x-2.17.0,
backend/src/apiserver/resource/resource_manager.go, TerminateRun only sets the workflow's
activeDeadlineSeconds to 0), so the job's ownerReference never fires; the step's Python is killed
milliseconds after Argo's emissary signals its process group (argo-workflows cmd/argoexec/commands/
emissary.go; KFP's launcher, backend/src/v2/component/launcher_v2.go, has no signal handler). The nodes
read the step pod with the real `kubernetes` client against tests/fake_cluster.py over HTTP; pod shapes are
the API server's (Argo's `wait` and `main` containers, argo-workflows workflow/common/common.go).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest
import yaml
from fake_cluster import FakeCluster, api_error, connection_reset, running, serve, step_pod
from pod_security import restricted_violations
from pytorchjob_crd import validate_against_crd

from sam2.launch.kubeflow import ClusterSettings, PyTorchJobLauncher
from sam2.launch.launcher import TrainingFailed, TrainingRequest
from sam2.launch.owner_watch import (
    EXIT_OWNER_GONE,
    OWNER_NAME_ENV,
    OWNER_UID_ENV,
    OwnerPod,
    OwnerWatch,
    owner_env,
    start_owner_watch,
)
from sam2.launch.pytorchjob import job_name_for
from sam2.launch.training_node import GracefulStop

OWNER = OwnerPod("team-a", "step-pod", "uid-step")
NAME = job_name_for("run-7")


def _watch(cluster: FakeCluster) -> tuple[object, OwnerWatch]:
    from kubernetes import client

    server, api_client = serve(cluster)
    return server, OwnerWatch(OWNER, client.CoreV1Api(api_client), lambda reason: None, poll_s=0.01)


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (None, "pod team-a/step-pod is gone"),
        (step_pod("step-pod", "uid-other"), "is another pod now (uid uid-other"),
        (step_pod("step-pod", "uid-step", deleting=True), "is being deleted"),
        (step_pod("step-pod", "uid-step", phase="Failed", main_exit=143), "is Failed"),
        (step_pod("step-pod", "uid-step", phase="Succeeded", main_exit=0), "is Succeeded"),
        # The emissary's container ended but the pod still says Running (its wait container uploads logs).
        (step_pod("step-pod", "uid-step", main_exit=143), "container main of pod team-a/step-pod ended"),
    ],
)
def test_a_step_pod_that_is_over_is_seen_over_http(pod, expected):
    cluster = FakeCluster(running())
    if pod is not None:
        cluster.step_pods["step-pod"] = pod
    server, watch = _watch(cluster)
    try:
        reason = watch.check()
    finally:
        server.shutdown()
    assert reason is not None and expected in reason, reason


def test_a_running_step_or_an_api_that_does_not_answer_is_not_over(caplog):
    """503, a reset connection, a refusal (no RBAC): asked again, never taken for a finished step."""
    cluster = FakeCluster(running())
    cluster.step_pods["step-pod"] = step_pod("step-pod", "uid-step")
    cluster.fail_next["read_pod"] = [
        api_error(503, "ServiceUnavailable"),
        connection_reset(),
        api_error(403, "Forbidden"),
    ]
    server, watch = _watch(cluster)
    try:
        answers = [watch.check() for _ in range(4)]
    finally:
        server.shutdown()
    assert answers == [None, None, None, None]
    assert "grant get on pods to the job's service account" in caplog.text


def test_the_watch_calls_back_once_when_the_step_ends():
    cluster = FakeCluster(running())
    cluster.step_pods["step-pod"] = step_pod("step-pod", "uid-step")
    from kubernetes import client

    server, api_client = serve(cluster)
    calls: list[str] = []
    watch = OwnerWatch(OWNER, client.CoreV1Api(api_client), calls.append, poll_s=0.05)
    watch.start()
    try:
        time.sleep(0.3)
        assert calls == [], "a running step is left alone"
        cluster.step_pods["step-pod"] = step_pod("step-pod", "uid-step", phase="Failed", main_exit=143)
        watch.join(5)
    finally:
        watch.stop()
        server.shutdown()
    assert not watch.is_alive() and len(calls) == 1 and "is Failed" in calls[0]


def test_the_environment_names_the_owner_whole_or_not_at_all():
    assert OwnerPod.from_env({}) is None
    assert OwnerPod.from_env(owner_env(OWNER)) == OWNER
    with pytest.raises(ValueError, match=f"{OWNER_UID_ENV}.* not set while {OWNER_NAME_ENV}"):
        OwnerPod.from_env({OWNER_NAME_ENV: "step-pod"})
    assert start_owner_watch(GracefulStop(), env={}) is None, "a job applied by hand is not watched"


# -- the node's side: a permanent exit ---------------------------------------------------------------------


def test_stop_for_good_before_training_exits_with_the_permanent_code(tmp_path):
    """Staging, resume download: the node ends at once, with a code the operator does not retry (1-127)."""
    import subprocess
    import sys

    script = (
        "import time\n"
        "from sam2.launch.training_node import GracefulStop\n"
        "stop = GracefulStop(); stop.install()\n"
        f"stop.stop_for_good({EXIT_OWNER_GONE})\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_OWNER_GONE, proc.stderr
    assert 1 <= EXIT_OWNER_GONE <= 127, "training-operator IsRetryableExitCode: >= 128 restarts the pod"


# -- the launcher's side -------------------------------------------------------------------------------------


def _request() -> TrainingRequest:
    return TrainingRequest(
        run_id="run-7",
        config="configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
        dataset_uri="s3://sam2-data/datasets/demo/v1",
        run_uri="s3://sam2-runs/run-7",
        num_nodes=3,
    )


def test_every_replica_the_launcher_renders_watches_the_step_pod():
    settings = ClusterSettings(namespace="team-a", image="i:1", owner_pod=("team-a", "step-pod", "uid-step"))
    job = PyTorchJobLauncher(settings, custom_api=object(), core_api=object()).render(_request())
    validate_against_crd(job)
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        pod = replica["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert OwnerPod.from_env(env) == OWNER, role
        assert pod["automountServiceAccountToken"] is True, f"{role}: no token, no watch"
        assert restricted_violations(pod) == [], role
    unowned = PyTorchJobLauncher(
        ClusterSettings(namespace="team-a", image="i:1"), custom_api=object(), core_api=object()
    ).render(_request())
    for replica in unowned["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["automountServiceAccountToken"] is False


def test_the_training_account_may_read_pods_and_nothing_else():
    """Least RBAC for the watch: get on pods, bound to the job's account; no delete, no list, no Secrets."""
    from pathlib import Path

    docs = list(yaml.safe_load_all((Path(__file__).parents[1] / "k8s" / "serviceaccount.yaml").read_text()))
    (role,) = [
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "sam2-training-owner-watch"
    ]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    (binding,) = [
        d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == role["metadata"]["name"]
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sam2-training"}]


def test_sigterm_deletes_the_job_before_waiting_for_the_log_stream(caplog):
    """KFP kills the step milliseconds after the signal: the delete must not wait behind the log thread's
    join (it waited up to 5 s, so the delete was never sent)."""
    cluster = FakeCluster(running())
    cluster.on_create = cluster.add_pods
    stuck = threading.Event()

    def endless_log(*args, **kwargs):  # a follow=True stream that keeps the connection open
        stuck.wait(30)
        raise api_error(500, "stream closed")

    cluster.read_namespaced_pod_log = endless_log
    sent: list[float] = []
    cluster.before_delete = lambda: sent.append(time.monotonic())
    signalled: list[float] = []

    def terminate() -> None:
        signalled.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(0.5, terminate)
    settings = ClusterSettings(
        namespace="team-a", image="i:1", poll_s=0.01, stream_logs=True, cleanup="never"
    )
    timer.start()
    caplog.set_level(logging.INFO)
    try:
        with pytest.raises(TrainingFailed, match="got SIGTERM"):
            PyTorchJobLauncher(settings, custom_api=cluster, core_api=cluster).launch(_request())
    finally:
        timer.cancel()
        stuck.set()
    assert sent and signalled
    assert sent[0] - signalled[0] < 0.5, f"the delete went out {sent[0] - signalled[0]:.2f}s after SIGTERM"


def test_a_node_that_starts_after_its_step_ended_stops_at_its_first_look():
    """A pod the operator (or a Job's backoff) starts after the step is gone ends before staging anything,
    not a poll interval later."""
    cluster = FakeCluster(running())
    from kubernetes import client

    server, api_client = serve(cluster)  # no step pod: it is gone
    calls: list[str] = []
    watch = OwnerWatch(OWNER, client.CoreV1Api(api_client), calls.append, poll_s=3600)
    watch.start()
    try:
        watch.join(10)
    finally:
        watch.stop()
        server.shutdown()
    assert calls == ["pod team-a/step-pod is gone"]
