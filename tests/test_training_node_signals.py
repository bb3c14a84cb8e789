"""SIGTERM on a training node (eviction, preemption, the job deleted): the node is PID 1 of its pod, which
ignores signals it has no handler for, so without `GracefulStop` the kubelet's SIGTERM did nothing until the
SIGKILL at terminationGracePeriodSeconds, losing every checkpoint since the last periodic mirror (exit 137).

Now the node forwards the signal to torchrun, uploads the newest local checkpoint where a restarted replica
resumes from, and exits 143 (retryable under restartPolicy ExitCode: >= 128, training-operator
pkg/util/train/train_util.go IsRetryableExitCode). The end-to-end test runs the real node (`python -m
sam2.launch.training_node`, torchrun, the micro model) against the SeaweedFS server of tests/s3_server.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from logged_process import LoggedProcess, publish_tiny_dataset
from training_loop_support import MICRO_MODEL_OVERRIDES, NUM_FRAMES, RESOLUTION, TRAIN_CONFIG, make_clips

from sam2.launch.pytorchjob import PyTorchJobSpec, render_pytorchjob
from sam2.launch.training_node import DEFAULT_STOP_GRACE_S, GracefulStop
from sam2.storage import incoming_uri
from sam2.utils.network import free_port

# What a training node passes on to the trainer (it sets the data set and the experiment folder itself).
NODE_OVERRIDES = [
    "dataset.val_file_list_txt=null",
    "dataset.multiplier=1",
    f"scratch.resolution={RESOLUTION}",
    f"scratch.num_frames={NUM_FRAMES}",
    "scratch.max_num_objects=2",
    "scratch.train_batch_size=1",
    "scratch.num_train_workers=0",
    "trainer.accelerator=cpu",
    "trainer.data.train.pin_memory=false",
    "trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path=null",
    *MICRO_MODEL_OVERRIDES,
]


def test_the_pods_grace_period_leaves_time_for_the_upload_after_torchrun_stopped():
    """The kubelet SIGKILLs at terminationGracePeriodSeconds (default 30 s, too short): every replica sets
    one that covers the node's wait for torchrun plus at least two minutes of checkpoint upload."""
    job = render_pytorchjob(PyTorchJobSpec(name="j", image="i:1", args=[], num_nodes=3))
    graces = {
        role: r["template"]["spec"].get("terminationGracePeriodSeconds")
        for role, r in job["spec"]["pytorchReplicaSpecs"].items()
    }
    assert set(graces) == {"Master", "Worker"}
    for role, grace in graces.items():
        assert isinstance(grace, int) and grace >= DEFAULT_STOP_GRACE_S + 120, (role, grace)


CHILD = """
import os, signal, subprocess, sys, time
out = sys.argv[1]
def count(signum, frame):
    with open(os.path.join(out, "signals"), "a") as f:
        f.write(f"{signum}\\n")
signal.signal(signal.SIGTERM, count)  # a torchrun that does not stop
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
with open(os.path.join(out, "worker.pid"), "w") as f:
    f.write(str(worker.pid))
open(os.path.join(out, "ready"), "w").close()
while True:
    time.sleep(0.1)
"""


def test_a_stuck_torchrun_gets_the_signal_once_and_is_killed_with_its_workers_after_the_grace(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(CHILD)

    def send_two_signals() -> None:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)  # logged, not forwarded again, and not fatal here

    stop = GracefulStop(grace_s=1.5)
    stop.install()
    sender = threading.Thread(target=send_two_signals, daemon=True)
    try:
        sender.start()
        started = time.monotonic()
        code = stop.run_torchrun([sys.executable, str(script), str(tmp_path)], None)
        waited = time.monotonic() - started
    finally:
        stop.restore()
        sender.join(5)
    assert stop.signum == signal.SIGTERM
    assert code == -signal.SIGKILL, "killed once the grace was over"
    assert waited < 30, waited
    assert (tmp_path / "signals").read_text().split() == [str(int(signal.SIGTERM))], "forwarded exactly once"
    worker = int((tmp_path / "worker.pid").read_text())
    deadline = time.monotonic() + 10
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(worker), "the worker (a session of its own) outlived the stop"


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _node_env(port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PET_NNODES": "1",
        "PET_NODE_RANK": "0",
        "PET_NPROC_PER_NODE": "1",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(port),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


class _Node(LoggedProcess):
    """`python -m sam2.launch.training_node` in a session of its own, its log collected line by line."""

    def __init__(
        self, args: list[str], log: Path, entry: Sequence[str] = ("-m", "sam2.launch.training_node")
    ) -> None:
        super().__init__([sys.executable, *entry, *args], _node_env(free_port()), log)

    def wait_for(self, predicate, what: str, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what}: not seen (exit {self.proc.poll()}); log:\n{self.text()[-5000:]}")
            time.sleep(0.02)

    def kill_all(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def tiny_dataset(tmp_path, s3_env, s3_store, s3_bucket) -> str:
    return publish_tiny_dataset(tmp_path / "data", s3_store, s3_bucket, NUM_FRAMES, make_clips)


def _node_args(dataset_uri: str, run_uri: str, scratch: Path, epochs: int) -> list[str]:
    return [
        "--config",
        TRAIN_CONFIG,
        "--dataset-uri",
        dataset_uri,
        "--run-uri",
        run_uri,
        "--scratch-dir",
        str(scratch),
        "--mirror-interval-s",
        "3600",  # the periodic mirror never runs: only the stop can have uploaded a checkpoint
        *NODE_OVERRIDES,
        f"scratch.num_epochs={epochs}",
    ]


def _resume_on_a_fresh_node(tiny_dataset, run_uri: str, tmp_path: Path, epochs: int) -> _Node:
    """A replacement pod: an empty scratch (``scratch2``) resumes the run and must finish with exit 0."""
    again = _Node(
        _node_args(tiny_dataset, run_uri, tmp_path / "scratch2", epochs=epochs), tmp_path / "node2.log"
    )
    try:
        code = again.wait(300)
    finally:
        again.kill_all()
    assert code == 0, again.text()[-5000:]
    return again


def test_sigterm_uploads_the_newest_checkpoint_exits_143_and_a_restarted_node_resumes_from_it(
    tmp_path, tiny_dataset, s3_store, s3_bucket
):
    run_uri = f"s3://{s3_bucket}/runs/evicted"
    ckpts_uri = f"{run_uri}/checkpoints"
    local_ckpt = tmp_path / "scratch1" / "experiment" / "checkpoints" / "checkpoint.pt"
    node = _Node(_node_args(tiny_dataset, run_uri, tmp_path / "scratch1", epochs=500), tmp_path / "node1.log")
    try:
        node.wait_for(local_ckpt.is_file, "a checkpoint on the node's scratch")
        assert not s3_store.is_published(ckpts_uri), "nothing uploaded before the signal"
        signalled = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        node.wait_for(lambda: "uploading the newest checkpoints" in node.text(), "the upload starting")
        node.proc.send_signal(signal.SIGTERM)  # a second SIGTERM must not cut the upload short
        code = node.wait()
        stop_s = time.monotonic() - signalled
    finally:
        node.kill_all()
    log = node.text()
    assert code == 143, log[-5000:]
    assert "got SIGTERM: stopping torchrun" in log
    assert "got SIGTERM while stopping (after SIGTERM): the checkpoint upload goes on" in log
    assert "uploaded checkpoint.pt to" in log, log[-3000:]
    assert stop_s < 60, f"the stop took {stop_s:.1f} s"

    # What is in S3 is the newest checkpoint the node had when it stopped.
    assert s3_store.is_published(ckpts_uri)
    stored = tmp_path / "stored.pt"
    s3_store.download_file(f"{ckpts_uri}/checkpoint.pt", stored)
    saved = torch.load(stored, map_location="cpu", weights_only=False)
    newest = torch.load(local_ckpt, map_location="cpu", weights_only=False)
    assert (saved["epoch"], saved["steps"]) == (newest["epoch"], newest["steps"])
    assert 1 <= saved["epoch"] < 500

    # A replacement pod (empty scratch) resumes from it and trains the one epoch left.
    epoch = saved["epoch"]
    again = _resume_on_a_fresh_node(tiny_dataset, run_uri, tmp_path, epochs=epoch + 1)
    assert f"resuming from {ckpts_uri}, the complete set published there" in again.text()
    trainer_log = (tmp_path / "scratch2" / "experiment" / "logs" / "log_rank0.txt").read_text()
    assert f"epoch {epoch}, step {saved['steps']}" in trainer_log, trainer_log[-3000:]
    s3_store.download_file(f"{ckpts_uri}/checkpoint.pt", stored)
    final = torch.load(stored, map_location="cpu", weights_only=False)
    assert final["epoch"] == epoch + 1 and final["steps"] == saved["steps"] + 2  # 2 videos, batch 1


# The real node, whose Minio client stops before its first server-side copy once a checkpoint set has been
# published: the second mirror has uploaded the new set whole under checkpoints.incoming/ and removed
# checkpoints/_SUCCESS. The test then SIGKILLs the node's session (node, torchrun, workers), as the kubelet
# does after the grace period or the OOM killer does.
STOP_WHILE_MOVING_IN = """
import sys, time
from pathlib import Path
import minio
from sam2.launch import training_node

flag = Path(sys.argv.pop(1))
published = []
put_object, copy_object = minio.Minio.put_object, minio.Minio.copy_object


def put(self, bucket, key, *args, **kwargs):
    result = put_object(self, bucket, key, *args, **kwargs)
    if key.endswith("/checkpoints/_SUCCESS"):
        published.append(key)
    return result


def copy(self, bucket, key, *args, **kwargs):
    if published:
        flag.touch()
        time.sleep(600)
    return copy_object(self, bucket, key, *args, **kwargs)


minio.Minio.put_object, minio.Minio.copy_object = put, copy
sys.exit(training_node.main(sys.argv[1:]))
"""


@pytest.mark.slow  # 40-50 s here (two real nodes); tests/test_checkpoint_replace.py kills every write in seconds
def test_a_node_sigkilled_in_the_middle_of_a_mirror_upload_is_resumed_from_the_new_set(
    tmp_path, tiny_dataset, s3_store, s3_bucket
):
    """Before: the mirror removed checkpoints/_SUCCESS first, so this kill left no marker and the restarted
    node trained from scratch although S3 held whole checkpoints."""
    run_uri = f"s3://{s3_bucket}/runs/killed"
    ckpts_uri = f"{run_uri}/checkpoints"
    flag = tmp_path / "moving-in"
    args = _node_args(tiny_dataset, run_uri, tmp_path / "scratch1", epochs=500)
    args[args.index("--mirror-interval-s") + 1] = "0.5"
    node = _Node([str(flag), *args], tmp_path / "node1.log", entry=("-c", STOP_WHILE_MOVING_IN))
    try:
        node.wait_for(flag.exists, "the second mirror moving its set in")
        os.killpg(node.proc.pid, signal.SIGKILL)
        assert node.wait(30) == -signal.SIGKILL
    finally:
        node.kill_all()
    assert not s3_store.is_published(ckpts_uri), "the kill came after checkpoints/_SUCCESS was removed"
    incoming = incoming_uri(ckpts_uri)
    stored = tmp_path / "incoming.pt"
    s3_store.download_file(
        f"{incoming}/checkpoint.pt",
        stored,
        s3_store.read_marker(incoming)["files"]["checkpoint.pt"]["sha256"],
    )
    saved = torch.load(stored, map_location="cpu", weights_only=False)
    assert saved["epoch"] >= 2, "the second mirror's set (the first one published epoch 1 or later)"

    epoch = saved["epoch"]
    again = _resume_on_a_fresh_node(tiny_dataset, run_uri, tmp_path, epochs=epoch + 1)
    assert (
        f"resuming from {incoming}, the newest complete set: it was uploaded whole, then the writer stopped "
        f"while moving it into {ckpts_uri}" in again.text()
    ), again.text()[-5000:]
    trainer_log = (tmp_path / "scratch2" / "experiment" / "logs" / "log_rank0.txt").read_text()
    assert f"epoch {epoch}, step {saved['steps']}" in trainer_log, trainer_log[-3000:]
    # Its own publish ends in the plain layout every consumer reads.
    assert s3_store.is_published(ckpts_uri) and not s3_store.list_objects(incoming)
    s3_store.download_file(f"{ckpts_uri}/checkpoint.pt", stored)
    final = torch.load(stored, map_location="cpu", weights_only=False)
    assert final["epoch"] == epoch + 1 and final["steps"] == saved["steps"] + 2


def test_sigterm_while_staging_exits_143_at_once(tmp_path, tiny_dataset, s3_bucket):
    """Before torchrun there is nothing new to upload (staging resumes from its stamps): exit at once."""
    scratch = tmp_path / "scratch"
    (scratch / "data").mkdir(parents=True)
    with (scratch / "data" / ".staging.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is staging: the node waits on it
        node = _Node(
            _node_args(tiny_dataset, f"s3://{s3_bucket}/runs/r", scratch, epochs=1), tmp_path / "node.log"
        )
        try:
            node.wait_for(lambda: "staging 2 train videos" in node.text(), "the node waiting to stage")
            time.sleep(0.5)
            node.proc.send_signal(signal.SIGTERM)
            code = node.wait(30)
        finally:
            node.kill_all()
    assert code == 143, node.text()[-3000:]
    assert "got SIGTERM before training started: exiting 143" in node.text()


def _private_dataset(server, tmp_path: Path) -> tuple[object, str]:
    """The tiny data set on a private SeaweedFS ``server`` (which the test stops and starts)."""
    from s3_server import store_for

    store = store_for(server)
    data = tmp_path / "data"
    make_clips(data, {"a": NUM_FRAMES, "b": NUM_FRAMES})
    (data / "splits").mkdir()
    (data / "splits" / "train.txt").write_text("a\nb\n")
    uri = "s3://outage/datasets/tiny/v1"
    store.upload_folder(data, uri)
    return store, uri


@pytest.mark.slow  # ~2 min: a real node, and the server down for 60 s
@pytest.mark.parametrize("budget_s, outage_s", [(300, 60), (8, 60)])
def test_an_s3_outage_during_the_final_publish(make_s3_server, tmp_path, monkeypatch, budget_s, outage_s):
    """The S3 server is stopped for 60 s as the node starts its final publish. Within the retry budget
    (default 300 s) the node waits and publishes its last checkpoint once the server is back (exit 0);
    past a shorter budget it exits 201, retryable under restartPolicy ExitCode, with one line naming the
    endpoint and no traceback, and nothing is marked complete that is not."""
    server = make_s3_server()
    store, dataset_uri = _private_dataset(server, tmp_path)
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SAM2_RETRY_BUDGET_S", str(budget_s))
    run_uri = "s3://outage/runs/r1"
    ckpts_uri = f"{run_uri}/checkpoints"
    node = _Node(_node_args(dataset_uri, run_uri, tmp_path / "scratch", epochs=2), tmp_path / "node.log")
    restarted = threading.Event()
    try:
        node.wait_for(lambda: "publishing the final checkpoints" in node.text(), "the final publish")
        server.kill()
        stopped = time.monotonic()

        def restart() -> None:
            time.sleep(max(0.0, outage_s - (time.monotonic() - stopped)))
            server.start(timeout_s=120)
            restarted.set()

        threading.Thread(target=restart, daemon=True).start()
        code = node.wait(budget_s + outage_s + 240)
        restarted.wait(180)
    finally:
        node.kill_all()
    log = node.text()
    local = torch.load(
        tmp_path / "scratch" / "experiment" / "checkpoints" / "checkpoint.pt",
        map_location="cpu",
        weights_only=False,
    )
    assert "Traceback" not in log, log[-5000:]
    if budget_s > outage_s:
        assert code == 0, log[-5000:]
        assert time.monotonic() - stopped >= outage_s
        assert store.is_published(ckpts_uri)
        stored = tmp_path / "stored.pt"
        store.download_file(f"{ckpts_uri}/checkpoint.pt", stored)
        saved = torch.load(stored, map_location="cpu", weights_only=False)
        assert (saved["epoch"], saved["steps"]) == (local["epoch"], local["steps"]) == (2, 4)
    else:
        assert code == 201, log[-5000:]
        errors = [line for line in log.splitlines() if " ERROR training_node: error: " in line]
        assert len(errors) == 1 and server.endpoint_url in errors[0], log[-3000:]
        assert "SAM2_RETRY_BUDGET_S=8 s" in errors[0]
        assert not store.is_published(ckpts_uri), "no checkpoint set is marked complete"
        assert not store.is_published(incoming_uri(ckpts_uri))
