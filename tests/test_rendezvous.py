"""The c10d rendezvous the PyTorchJob's nodes use: a node that is killed and restarted rejoins the job.

Two real `torchrun` agents on 127.0.0.1 run a gloo all-reduce loop, started with the command
`sam2.launch.training_node.torchrun_command` builds from the environment the PyTorchJob template sets
(PET_RDZV_BACKEND=c10d, PET_MAX_RESTARTS, PET_RDZV_CONF=join_timeout=...). Node 1 is SIGKILLed mid-run (an
OOM kill; under restartPolicy ExitCode the operator replaces the pod) and started again: node 0's agent sees
it waiting at the rendezvous and restarts its worker (TORCHELASTIC_RESTART_COUNT 1) instead of hanging in
the all-reduce until the process-group timeout; both finish. The store lives in the master's agent: losing
the master ends the other agents too (RendezvousConnectionError), which this does not cover.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sam2.launch.pytorchjob import PyTorchJobSpec, render_pytorchjob
from sam2.launch.training_node import TRAIN_MODULE, NodeTopology, torchrun_command
from sam2.utils.network import free_port

WORKER = """
import os, time
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
node, restart = os.environ["NODE"], os.environ["TORCHELASTIC_RESTART_COUNT"]
stop_file = os.path.join(os.environ["MARKERS"], "stop")
for step in range(3000):  # until the test says stop, all nodes at the same step
    value = torch.tensor([1.0, float(os.path.exists(stop_file))])
    dist.all_reduce(value)
    assert value[0].item() == dist.get_world_size() == 2
    with open(os.path.join(os.environ["MARKERS"], f"node{node}.tmp"), "w") as f:
        f.write(f"{restart} {step}")
    os.replace(os.path.join(os.environ["MARKERS"], f"node{node}.tmp"), os.path.join(os.environ["MARKERS"], f"node{node}"))
    if value[1].item() > 0:
        break
    time.sleep(0.1)
print(f"done node={node} restart={restart}", flush=True)
dist.destroy_process_group()
"""


def test_c10d_command_takes_the_endpoint_from_the_operators_master_address():
    topo = NodeTopology(2, 1, 4)
    env = {"PET_RDZV_BACKEND": "c10d", "PET_MASTER_ADDR": "job-master-0", "PET_MASTER_PORT": "23456"}
    cmd = torchrun_command("c.yaml", topo, ["a=1"], env)
    assert cmd[3:5] == ["--rdzv-endpoint", "job-master-0:23456"]
    assert "--rdzv-endpoint" not in torchrun_command("c.yaml", topo, [], {"PET_MASTER_ADDR": "x"})
    own = {**env, "PET_RDZV_ENDPOINT": "etcd:2379"}
    assert "--rdzv-endpoint" not in torchrun_command("c.yaml", topo, [], own), "torchrun reads it itself"
    with pytest.raises(ValueError, match="PET_MASTER_ADDR"):
        torchrun_command("c.yaml", topo, [], {"PET_RDZV_BACKEND": "c10d"})


def test_rank_zero_stays_on_the_master_pod():
    """c10d ranks nodes by sorted host name; the operator names pods <job>-master-0, <job>-worker-<i>."""
    hosts = ["sam2-train-r-worker-1", "sam2-train-r-master-0", "sam2-train-r-worker-0"]
    assert sorted(hosts)[0] == "sam2-train-r-master-0"


def _template_rendezvous_env() -> dict[str, str]:
    """The rendezvous settings of the shipped PyTorchJob's pods (what the cluster runs)."""
    job = render_pytorchjob(PyTorchJobSpec(name="rejoin-test", image="i:1", args=[], num_nodes=2))
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return {k: v for k, v in env.items() if k.startswith(("PET_", "TORCH_"))}


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def _kill_tree(pid: int) -> None:
    for target in [pid, *_descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


@pytest.mark.slow  # about 30-60 s: four torchrun starts on 2 cores
def test_a_killed_node_restarts_and_rejoins_without_waiting_for_a_timeout(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    markers = tmp_path / "markers"
    markers.mkdir()
    port = free_port()
    base = {
        **os.environ,
        **_template_rendezvous_env(),  # c10d, its id, join timeout, restarts, no shared store
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "1",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "MARKERS": str(markers),
    }

    def start(node: int, log: Path) -> subprocess.Popen:
        # On a cluster only the master's address is the endpoint, so its agent hosts the c10d store; here
        # both nodes are 127.0.0.1, so say which one hosts it.
        conf = f"{base['PET_RDZV_CONF']},is_host={'true' if node == 0 else 'false'}"
        env = {**base, "PET_NODE_RANK": str(node), "NODE": str(node), "PET_RDZV_CONF": conf}
        cmd = torchrun_command("unused.yaml", NodeTopology(2, node, 1), [], env)
        cmd = cmd[: cmd.index(TRAIN_MODULE) - 1] + [str(script)]  # the worker loop instead of training
        return subprocess.Popen(
            cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def step_of(node: int) -> tuple[int, int] | None:
        path = markers / f"node{node}"
        text = path.read_text() if path.exists() else ""
        return tuple(map(int, text.split())) if text.count(" ") == 1 else None

    def wait_for(predicate, what: str, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
                pytest.fail(f"{what} did not happen within {seconds}s:\n{logs[-4000:]}")
            time.sleep(0.2)

    started = time.monotonic()
    node0 = start(0, tmp_path / "node0.log")
    node1 = start(1, tmp_path / "node1-first.log")
    try:
        wait_for(lambda: (step_of(1) or (0, 0))[1] >= 3, "the first rendezvous and three steps")
        _kill_tree(node1.pid)  # the whole pod goes: the agent and its worker (in a session of its own)
        assert node1.wait(30) == -signal.SIGKILL
        node1 = start(1, tmp_path / "node1-second.log")
        wait_for(lambda: (step_of(0) or (0, 0)) >= (1, 3), "node 0 restarting its worker and three steps")
        (markers / "stop").touch()
        assert node0.wait(180) == 0, (tmp_path / "node0.log").read_text()[-4000:]
        assert node1.wait(60) == 0, (tmp_path / "node1-second.log").read_text()[-4000:]
    finally:
        for proc in (node0, node1):
            if proc.poll() is None:
                _kill_tree(proc.pid)
    assert "done node=0 restart=1" in (tmp_path / "node0.log").read_text(), "node 0 restarted its worker"
    assert "done node=1 restart=0" in (tmp_path / "node1-second.log").read_text()
    assert time.monotonic() - started < 240, "nobody waited out a process-group timeout (30 min)"


def _torch_error_file(tmp_path: Path, exc: BaseException) -> dict[str, str]:
    """The error file torch's own @record handler writes for `exc` (its real format)."""
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    path = tmp_path / "torchrun-error.json"
    os.environ["TORCHELASTIC_ERROR_FILE"] = str(path)
    try:
        try:
            raise exc
        except BaseException as raised:  # noqa: BLE001 - recorded as torchrun's agent records it
            ErrorHandler().record_exception(raised)
    finally:
        del os.environ["TORCHELASTIC_ERROR_FILE"]
    return {"TORCHELASTIC_ERROR_FILE": str(path)}


def test_exit_codes_keep_config_errors_permanent_and_make_a_lost_rendezvous_retryable(tmp_path):
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError

    from sam2.launch.training_node import EXIT_RENDEZVOUS_LOST, exit_code_for_torchrun_failure

    lost = _torch_error_file(
        tmp_path, RendezvousConnectionError("The connection to the C10d store has failed.")
    )
    assert exit_code_for_torchrun_failure(1, lost) == EXIT_RENDEZVOUS_LOST >= 128
    worker_error = _torch_error_file(tmp_path, ValueError("scratch.num_frames must be >= 1"))
    assert exit_code_for_torchrun_failure(1, worker_error) == 1, "a Python error stays permanent (1-127)"
    assert exit_code_for_torchrun_failure(1, {}) == 1
    assert exit_code_for_torchrun_failure(-9, {}) == 137, "torchrun killed by SIGKILL: 128 + 9, retryable"


@pytest.mark.slow  # about 20 s: torchrun waits out its store timeout
def test_a_node_whose_master_is_gone_exits_retryable(tmp_path):
    """A real torchrun agent that cannot reach the rendezvous store (the master pod is gone) dies of
    RendezvousConnectionError; training_node's exit code for that is >= 128, so the operator replaces it."""
    from sam2.launch.training_node import EXIT_RENDEZVOUS_LOST, exit_code_for_torchrun_failure

    script = tmp_path / "never.py"
    script.write_text("raise SystemExit('the worker must not start')\n")
    error_file = tmp_path / "torchrun-error.json"
    env = {
        **os.environ,
        **_template_rendezvous_env(),
        "PET_RDZV_CONF": "join_timeout=5,read_timeout=5,is_host=false",
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "1",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(free_port()),  # nothing listens: the master is gone
        "TORCHELASTIC_ERROR_FILE": str(error_file),
    }
    cmd = torchrun_command("unused.yaml", NodeTopology(2, 1, 1), [], env)
    cmd = cmd[: cmd.index(TRAIN_MODULE) - 1] + [str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert exit_code_for_torchrun_failure(proc.returncode, env) == EXIT_RENDEZVOUS_LOST
