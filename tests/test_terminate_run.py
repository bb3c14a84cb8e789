""" "Terminate run" in the Kubeflow UI frees the job's GPUs, even though the step's Python gets no time to act.

How KFP terminates (cited, since no KFP backend runs here):
- kubeflow/pipelines 2.16.x-2.17.0 backend/src/apiserver/resource/resource_manager.go: TerminateRun marks
  the run and patches the workflow's activeDeadlineSeconds to 0; the step pod is not deleted, so the
  PyTorchJob's ownerReference to it never fires.
- argo-workflows v3.5+ cmd/argoexec/commands/emissary.go: the emissary runs the step's command in a process
  group of its own and forwards the signal to the whole group; KFP's launcher (backend/src/v2/component/
  launcher_v2.go, no signal.Notify under backend/src/v2) dies at once, the emissary returns, the main
  container ends, and our Python with it, milliseconds later.

The test plays that out with real processes: the step (the launcher, `PyTorchJobLauncher.launch`, in a
process group of its own) talks to tests/fake_cluster.py over HTTP with the real `kubernetes` client; the
job's pod runs the real `python -m sam2.launch.training_node` (torchrun, the micro model, SeaweedFS S3)
with the environment the launcher rendered into the job, and a kubeconfig for the same server. The step's
group gets SIGTERM, the step is SIGKILLed 5 ms later, and the API drops every delete, so only the node's own
watch (sam2/launch/owner_watch.py) can end the job; the fake kubelet then reports the step pod's `main`
container terminated, as the real one does once the container is gone.

The same for a TrainJob (Kubeflow Trainer v2, tests/fake_trainer.py at 2.3.0): the launcher's own
TrainingRuntime gives the node Job podFailurePolicy FailJob for exit codes 1-127, so the node's exit 3 fails
the Job, the JobSet and the TrainJob at once (batch/v1 podFailurePolicy; the Trainer's JobSet).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fake_cluster import FakeCluster, connection_reset, running, serve, step_pod
from fake_trainer import FakeTrainerCluster
from test_training_node_signals import NODE_OVERRIDES as SIGNAL_TEST_NODE_OVERRIDES
from training_loop_support import NUM_FRAMES, TRAIN_CONFIG, make_clips

from sam2.launch.owner_watch import EXIT_OWNER_GONE
from sam2.launch.pytorchjob import job_name_for
from sam2.utils.network import free_port

NAMESPACE, STEP_POD, STEP_UID = "team-a", "run-7-train-model-pod", "uid-step-7"
NAME = job_name_for("run-7")
OWNER_POLL_S = 1.0  # production: 30 s (owner_watch.DEFAULT_POLL_S); the bound below scales with it
BOUND_S = 90.0  # poll + torchrun's stop + the checkpoint upload, on this loaded 2-core machine
NODE_OVERRIDES = [*SIGNAL_TEST_NODE_OVERRIDES, "scratch.num_epochs=500"]

STEP = f"""
import logging, sys
from kubernetes import client, config
from sam2.launch.kubeflow import ClusterSettings, PyTorchJobLauncher
from sam2.launch.launcher import TrainingRequest
from sam2.launch.trainjob_launcher import TrainJobLauncher

logging.basicConfig(level=logging.INFO)
kind, kubeconfig, dataset_uri, run_uri, poll = sys.argv[1:6]
config.load_kube_config(config_file=kubeconfig)
settings = ClusterSettings(
    namespace="team-a", image="registry.example/sam2:1", poll_s=0.2, stream_logs=False,
    owner_pod=("team-a", "{STEP_POD}", "{STEP_UID}"), owner_poll_s=float(poll), api_retry_s=600,
)
request = TrainingRequest(
    run_id="run-7", config="{TRAIN_CONFIG}", dataset_uri=dataset_uri, run_uri=run_uri, num_nodes=1, use_gpus=False,
    overrides=tuple(sys.argv[6:]), mirror_interval_s=3600,
)
launcher = PyTorchJobLauncher if kind == "pytorchjob" else TrainJobLauncher
launcher(settings, client.CustomObjectsApi(), client.CoreV1Api()).launch(request)
"""


class FakeKubelet:
    """Runs each pod the fake operator (or the fake Trainer's Job controller) creates as a real training
    node with the job's rendered container (command, args, env); reports its exit to the controller
    (FakeCluster.exit_pod, FakeTrainerCluster.exit_node) and SIGTERMs it when its job is deleted (the
    garbage collector deletes the pods; the kubelet signals their containers)."""

    def __init__(self, cluster: FakeCluster, tmp: Path, kubeconfig: Path, s3_env: dict[str, str]) -> None:
        self.cluster, self.tmp, self.kubeconfig, self.s3_env = cluster, tmp, kubeconfig, s3_env
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.exits: dict[str, tuple[int, float]] = {}
        cluster.before_delete = self.signal_all
        if isinstance(cluster, FakeTrainerCluster):
            new_pod = cluster._new_pod

            def create_node(name: str, index: int, job: dict):  # the Job controller made a node pod
                made = new_pod(name, index, job)
                (container,) = [c for c in job["template"]["spec"]["containers"] if c["name"] == "node"]
                report = lambda code: cluster.exit_node(name, index, code)  # noqa: E731
                self.start(made.metadata.name, container, report)
                return made

            cluster._new_pod = create_node
        else:
            cluster.on_create = self.create

    def create(self, job_name: str) -> None:
        job = self.cluster.jobs[job_name]
        for pod in self.cluster.add_pods(job_name):
            role = "Master" if "-master-" in pod.metadata.name else "Worker"
            (container,) = job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]["containers"]
            name = pod.metadata.name
            self.start(name, container, lambda code, name=name: self.cluster.exit_pod(name, code))

    def start(self, pod_name: str, container: dict, report) -> None:
        scratch = self.tmp / pod_name
        args = [str(scratch) if a == "/scratch" else a for a in container["args"]]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env.update(self.s3_env)  # the secretKeyRef values
        env.update(
            {
                "PATH": os.environ["PATH"],
                "HOME": str(self.tmp),
                "KUBECONFIG": str(self.kubeconfig),
                "PET_NNODES": "1",
                "PET_NODE_RANK": "0",
                "PET_NPROC_PER_NODE": "1",
                "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": str(free_port()),
                "CUDA_VISIBLE_DEVICES": "",
                "OMP_NUM_THREADS": "1",
                "TORCHELASTIC_ERROR_FILE": str(self.tmp / f"{pod_name}-error.json"),
            }
        )
        log = (self.tmp / f"{pod_name}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, *container["command"][1:], *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.procs[pod_name] = proc
        threading.Thread(target=self._report, args=(pod_name, proc, report), daemon=True).start()

    def _report(self, pod_name: str, proc: subprocess.Popen[str], report) -> None:
        code = proc.wait()
        self.exits[pod_name] = (code, time.monotonic())
        with contextlib.suppress(KeyError, ValueError):
            report(code)

    def signal_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def log(self, pod_name: str) -> str:
        return (self.tmp / f"{pod_name}.log").read_text(errors="replace")

    def kill_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def _kubeconfig(path: Path, host: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: fake, cluster: {{server: '{host}'}}}}]\n"
        "users: [{name: step, user: {token: not-checked}}]\n"
        f"contexts: [{{name: fake, context: {{cluster: fake, user: step, namespace: {NAMESPACE}}}}}]\n"
        "current-context: fake\n"
    )
    return path


@pytest.fixture
def tiny_dataset(tmp_path, s3_env, s3_store, s3_bucket) -> str:
    data = tmp_path / "data"
    make_clips(data, {"a": NUM_FRAMES, "b": NUM_FRAMES})
    (data / "splits").mkdir()
    (data / "splits" / "train.txt").write_text("a\nb\n")
    uri = f"s3://{s3_bucket}/datasets/tiny/v1"
    s3_store.upload_folder(data, uri)
    return uri


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_terminate_kills_the_step_at_once_and_the_job_still_ends_with_a_resumable_checkpoint(
    kind, tmp_path, tiny_dataset, s3_env, s3_store, s3_bucket
):
    cluster = FakeCluster(running()) if kind == "pytorchjob" else FakeTrainerCluster("2.3.0")
    jobs = cluster.jobs if kind == "pytorchjob" else cluster.trainjobs
    cluster.step_pods[STEP_POD] = step_pod(STEP_POD, STEP_UID)
    server, api_client = serve(cluster)
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", api_client.configuration.host)
    env_s3 = {k: v for k, v in s3_env.items() if k.startswith(("AWS_", "S3_"))}
    kubelet = FakeKubelet(cluster, tmp_path, kubeconfig, env_s3)
    run_uri = f"s3://{s3_bucket}/runs/run-7"
    step = subprocess.Popen(
        [
            sys.executable,
            "-c",
            STEP,
            kind,
            str(kubeconfig),
            tiny_dataset,
            run_uri,
            str(OWNER_POLL_S),
            *NODE_OVERRIDES,
        ],
        env={**os.environ, **env_s3},
        stdout=(tmp_path / "step.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not kubelet.procs:  # the controller creates the job's (one) pod
            assert step.poll() is None, (tmp_path / "step.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no pod within 240 s"
            time.sleep(0.1)
        (master,) = kubelet.procs
        local_ckpt = tmp_path / master / "experiment" / "checkpoints" / "checkpoint.pt"
        while not local_ckpt.is_file():
            assert step.poll() is None, (tmp_path / "step.log").read_text()[-3000:]
            assert master not in kubelet.exits, kubelet.log(master)[-3000:]
            assert time.monotonic() < deadline, "no checkpoint on the node within 240 s"
            time.sleep(0.1)
        assert "watching the pipeline step's pod team-a/" + STEP_POD in kubelet.log(master)

        # KFP's terminate: the API never gets the step's delete (dropped), the group gets SIGTERM, the step
        # is gone 5 ms later; the kubelet then reports the step pod's main container terminated.
        cluster.fail_next["delete"] = [connection_reset() for _ in range(10_000)]
        os.killpg(step.pid, signal.SIGTERM)
        terminated = time.monotonic()
        time.sleep(0.005)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(step.pid, signal.SIGKILL)
        step.wait(10)
        cluster.step_pods[STEP_POD] = step_pod(STEP_POD, STEP_UID, phase="Failed", main_exit=143)
        assert NAME in jobs and not cluster.deleted, "the step's delete must not have landed"

        proc = kubelet.procs[master]
        proc.wait(BOUND_S + 60)
        code, ended = kubelet.exits.get(master) or (proc.returncode, time.monotonic())
    finally:
        kubelet.kill_all()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(step.pid, signal.SIGKILL)
        server.shutdown()
    took = ended - terminated
    log = kubelet.log(master)
    assert code == EXIT_OWNER_GONE, log[-5000:]
    assert f"the pipeline step is over (pod {NAMESPACE}/{STEP_POD} is Failed)" in log, log[-3000:]
    assert took < BOUND_S, f"the job ended {took:.1f}s after terminate"
    # The controller fails the job for the permanent exit: the Training Operator under restartPolicy
    # ExitCode (cleanPodPolicy Running would delete the rest); the Job's podFailurePolicy FailJob, then the
    # JobSet and the TrainJob.
    status = cluster.status if kind == "pytorchjob" else {"conditions": cluster.conditions[NAME]}
    conditions = {c["type"] for c in status["conditions"] if c["status"] == "True"}
    if kind == "pytorchjob":
        assert conditions == {"Failed"}, status
    else:
        assert "Failed" in conditions and not conditions & {"Running", "Succeeded", "Complete"}, status
    print(f"\nterminate -> {kind}'s node exited {code} after {took:.1f}s (owner poll {OWNER_POLL_S:g}s)")

    # The newest checkpoint the node had is in S3, complete (marked), where a retried run resumes from.
    ckpts_uri = f"{run_uri}/checkpoints"
    assert s3_store.is_published(ckpts_uri)
    stored = tmp_path / "stored.pt"
    s3_store.download_file(f"{ckpts_uri}/checkpoint.pt", stored)
    saved = torch.load(stored, map_location="cpu", weights_only=False)
    newest = torch.load(local_ckpt, map_location="cpu", weights_only=False)
    assert (saved["epoch"], saved["steps"]) == (newest["epoch"], newest["steps"])
    assert saved["epoch"] >= 1
