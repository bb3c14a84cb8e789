"""The nodes of a rendered TrainJob, run as the Trainer would run them, train on two nodes and survive one
node killed and started again.

The TrainJob is the launcher's (TrainJobLauncher.render) for Kubeflow Trainer v2.3.0's torch-distributed
runtime; its node pod is built as the Trainer builds it (tests/fake_trainer.py, node_job). Each node is a
process with exactly that pod's `node` container: its command and args, its env (the rendered values, the
S3 Secret's keys resolved as the kubelet does, PET_NODE_RANK from the pod's job-completion-index annotation,
which is the node's index), and its volume mounts at their paths (bind mounts of a fresh folder per node,
in a mount namespace of its own, `unshare --mount`), plus the image's own environment (docker/Dockerfile:
HOME, PYTHONUNBUFFERED, PYTHONDONTWRITEBYTECODE, working directory /scratch). Nothing else is added. The
PET_* variables are the torch plugin's (kubeflow/trainer v2.3.0 pkg/runtime/framework/plugins/torch/torch.go,
EnforceMLPolicy; pkg/constants/constants.go: PET_MASTER_PORT 29500). PET_MASTER_ADDR
`<job>-node-0-0.<job>` is the JobSet's headless Service name of node 0 (JobSet sets each pod's hostname
`<job>-node-0-<i>` and subdomain `<job>`); here /etc/hosts (bound in the node's namespace) maps it to
127.0.0.1, where node 0 listens.

The training is the micro SAM 2 model of the other node tests (tests/training_loop_support.py) on a tiny data
set in the local SeaweedFS server: what matters is the nodes' wiring, not the model's size.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import trainer_crds
from fake_trainer import COMPLETION_INDEX, node_job
from logged_process import LoggedProcess, publish_tiny_dataset
from test_rendezvous import _kill_tree
from test_training_node_signals import NODE_OVERRIDES
from training_loop_support import NUM_FRAMES, TRAIN_CONFIG, make_clips

from sam2.launch.cluster_settings import ClusterSettings
from sam2.launch.launcher import TrainingRequest
from sam2.launch.trainjob import RUNTIME_PATCHES
from sam2.launch.trainjob_launcher import TrainJobLauncher

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # the test's environment stands in for the image's `python`
IMAGE_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": "/home/sam2",
}  # docker/Dockerfile
IMAGE_WORKDIR = "/scratch"
EPOCHS = 8


@pytest.fixture
def tiny_dataset(tmp_path, s3_env, s3_store, s3_bucket) -> str:
    """Two short clips and their train list, published in the local S3 server."""
    return publish_tiny_dataset(tmp_path / "data", s3_store, s3_bucket, NUM_FRAMES, make_clips)


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--uts", "--propagation", "private", "true"], capture_output=True
    )
    return probe.returncode == 0


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _node_env(container: dict, index: int, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's env as the kubelet resolves it for the pod of completion index `index`."""
    env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", **IMAGE_ENV}
    annotations = {COMPLETION_INDEX: str(index)}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            path = source["fieldRef"]["fieldPath"]
            key = path.removeprefix("metadata.annotations['").removesuffix("']")
            env[item["name"]] = annotations[key]
    return env


class _Pod(LoggedProcess):
    """One node: the container's command in a mount namespace with its volumes bound at their paths."""

    def __init__(
        self, container: dict, env: dict[str, str], volumes: Path, hosts: Path, hostname: str, log: Path
    ) -> None:
        binds = []
        tmp_mount = None
        for mount in container["volumeMounts"]:
            source = volumes / mount["name"]
            source.mkdir(parents=True, exist_ok=True)
            if mount["mountPath"] == "/tmp":
                tmp_mount = source  # last: it hides the other sources, which live under /tmp
                continue
            binds.append(f"mount --bind {source} {mount['mountPath']}")
        binds.append(f"mount --bind {hosts} /etc/hosts")
        if tmp_mount is not None:
            binds.append(f"mount --bind {tmp_mount} /tmp")
        script = " && ".join([*binds, f"hostname {hostname}", f"cd {IMAGE_WORKDIR}", 'exec "$@"'])
        super().__init__(
            ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script, "node"]
            + container["command"]
            + container["args"],
            env,
            log,
            cwd="/",
        )

    def kill(self) -> None:
        """SIGKILL every process of the pod, as the kubelet ends a container: the node and its descendants
        (torchrun runs in a session of its own, so the node's process group is not enough)."""
        _kill_tree(self.proc.pid)
        self.proc.wait(30)


def _epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


@pytest.mark.slow  # two real nodes, one killed and replaced; about 2 min here
def test_the_rendered_trainjob_nodes_train_on_two_nodes_and_a_replaced_node_resumes(
    tmp_path, tiny_dataset, s3_server, s3_store, s3_bucket
):
    if not _unshare_works():
        pytest.skip("needs root and `unshare --mount` to mount the pod's volumes at their paths")
    if not _port_free(29500):
        pytest.skip("port 29500 (the torch plugin's PET_MASTER_PORT) is taken on this machine")
    run_uri = f"s3://{s3_bucket}/runs/trainjob-e2e"
    ckpts_uri = f"{run_uri}/checkpoints"
    request = TrainingRequest(
        run_id="tj-e2e",
        config=TRAIN_CONFIG,
        dataset_uri=tiny_dataset,
        run_uri=run_uri,
        num_nodes=2,
        procs_per_node=1,
        use_gpus=False,
        overrides=(*NODE_OVERRIDES, f"scratch.num_epochs={EPOCHS}"),
        mirror_interval_s=1.0,
    )
    settings = ClusterSettings(namespace="team-a", image="i:1", s3_endpoint_url=s3_server.endpoint_url)
    rendered = TrainJobLauncher(settings, custom_api=object(), core_api=object()).render(
        request, RUNTIME_PATCHES
    )
    assert rendered.runtime_fields == {}, "v2.3.0's runtimePatches carry the whole pod"
    trainjob = rendered.trainjob
    trainer_crds.validate(trainjob, "2.3.0")
    pod = node_job(trainjob, trainer_crds.torch_distributed("2.3.0"), "2.3.0")["template"]
    (container,) = pod["spec"]["containers"]
    name = trainjob["metadata"]["name"]
    secrets = {
        "sam2-s3-credentials": {
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        }
    }
    # Each pod's hostname is <job>-node-0-<i> with subdomain <job>, the JobSet's headless Service, whose DNS
    # answers each pod's address: node i is 127.0.0.<i+1> here (the loopback answers all of 127/8), so the
    # c10d store lives on node 0 alone and torchrun ranks the nodes by name, as in the cluster.
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "".join(f"127.0.0.{i + 1} {name}-node-0-{i}.{name} {name}-node-0-{i}\n" for i in range(2))
        + Path("/etc/hosts").read_text()
    )
    created = [p for p in ("/scratch", "/home/sam2") if not Path(p).exists()]
    for path in created:
        Path(path).mkdir(parents=True)
    pods: list[_Pod] = []
    try:
        envs = [_node_env(container, i, secrets) for i in range(2)]
        assert envs[1]["PET_NODE_RANK"] == "1" and envs[0]["PET_MASTER_ADDR"] == f"{name}-node-0-0.{name}"
        assert envs[0]["PET_MASTER_PORT"] == "29500" and envs[0]["PET_NNODES"] == "2"
        pods = [
            _Pod(
                container,
                envs[i],
                tmp_path / f"node{i}",
                hosts,
                f"{name}-node-0-{i}",
                tmp_path / f"node{i}.log",
            )
            for i in range(2)
        ]
        local0 = tmp_path / "node0" / "scratch" / "experiment" / "checkpoints" / "checkpoint.pt"
        mirrored = tmp_path / "mirrored.pt"

        def mirrored_epoch() -> int:
            if not s3_store.is_published(ckpts_uri):
                return -1
            s3_store.download_file(f"{ckpts_uri}/checkpoint.pt", mirrored)
            return _epoch(mirrored)

        deadline = time.monotonic() + 300
        while mirrored_epoch() < 2:
            assert all(p.proc.poll() is None for p in pods), pods[0].text()[-3000:] + pods[1].text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint mirrored: " + pods[0].text()[-3000:]
            time.sleep(0.5)
        pods[1].kill()  # node 1's pod is gone (OOM kill, node failure): SIGKILL to all its processes
        killed_at = mirrored_epoch()
        # The replacement pod starts with empty volumes once the rank-0 mirror holds node 0's newest local
        # checkpoint (node 0's training waits for node 1 at the collective, then at the rendezvous).
        deadline = time.monotonic() + 120
        while not (local0.is_file() and mirrored_epoch() == _epoch(local0)):
            assert time.monotonic() < deadline, "the mirror did not catch up with node 0"
            time.sleep(0.5)
        resumed_epoch = mirrored_epoch()
        assert 2 <= killed_at <= resumed_epoch < EPOCHS
        replacement = tmp_path / "node1-replaced"
        pods[1] = _Pod(
            container, envs[1], replacement, hosts, f"{name}-node-0-1", tmp_path / "node1-replaced.log"
        )
        codes = [p.wait(600) for p in pods]
        assert codes == [0, 0], pods[0].text()[-4000:] + "\n----\n" + pods[1].text()[-4000:]
    finally:
        for p in pods:
            p.kill()
        for path in created:
            with contextlib.suppress(OSError):
                Path(path).rmdir()
    replaced = pods[1].text()
    assert f"resuming from {ckpts_uri}" in replaced, replaced[-3000:]
    trainer_log = (
        tmp_path / "node1-replaced" / "scratch" / "experiment" / "logs" / "log_rank1.txt"
    ).read_text()
    assert f"epoch {resumed_epoch}," in trainer_log, trainer_log[-2000:]
    assert mirrored_epoch() == EPOCHS, "node 0 published the final checkpoint"
