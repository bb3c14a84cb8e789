"""Start a training run and wait for it: the interface, and the local `torchrun` implementation.

A `JobLauncher` takes a `TrainingRequest` (what to train on, where outputs go, how many nodes and
processes) and blocks until training ended. `LocalTorchrunLauncher` runs every node as a separate
`python -m sam2.launch.training_node` process on this machine, wired together exactly as the training
operator wires pods (`PET_*` variables, rendezvous on 127.0.0.1), so two local "nodes" exercise the
multi-node path. `sam2.launch.kubeflow.PyTorchJobLauncher` runs the same nodes as a PyTorchJob; a Kubeflow
Trainer v2 (TrainJob) launcher would be a third implementation of the same protocol.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from sam2.utils.network import free_port

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRequest:
    """One training run. URIs are `s3://` prefixes (or local folders for local runs)."""

    run_id: str
    config: str
    dataset_uri: str
    run_uri: str
    train_list: str = "splits/train.txt"
    num_nodes: int = 1
    procs_per_node: int = 1
    use_gpus: bool = True
    init_checkpoint_uri: str | None = None
    overrides: tuple[str, ...] = ()
    mirror_interval_s: float = 300.0
    # The data set's size in bytes (from its manifest): a PyTorchJob sizes its scratch volume and
    # ephemeral-storage request from it (sam2.launch.pytorchjob.scratch_size_bytes); None: unbounded.
    scratch_bytes: int | None = None

    def node_args(self) -> list[str]:
        """Arguments of `python -m sam2.launch.training_node` for this request (the same on every node)."""
        args = [
            "--config",
            self.config,
            "--dataset-uri",
            self.dataset_uri,
            "--run-uri",
            self.run_uri,
            "--train-list",
            self.train_list,
            "--mirror-interval-s",
            str(self.mirror_interval_s),
        ]
        if self.init_checkpoint_uri:
            args += ["--init-checkpoint-uri", self.init_checkpoint_uri]
        return args + list(self.overrides)


@dataclass(frozen=True)
class TrainingResult:
    """Where the outputs of a finished run are."""

    run_id: str
    checkpoints_uri: str
    tensorboard_uri: str
    seconds: float
    details: dict[str, str] = field(default_factory=dict)


class TrainingFailed(RuntimeError):
    """Training ended without success; the message carries the reason and the end of the log."""


class JobLauncher(Protocol):
    """Runs a `TrainingRequest` to completion (blocking) or raises `TrainingFailed` / `TimeoutError`."""

    def launch(self, request: TrainingRequest) -> TrainingResult: ...


def _pump(stream: IO[str], prefix: str, tail: deque[str]) -> None:
    for line in stream:
        tail.append(line.rstrip("\n"))
        logger.info("%s %s", prefix, line.rstrip("\n"))


class LocalTorchrunLauncher:
    """`JobLauncher` on this machine: one `training_node` process per node, rendezvous on 127.0.0.1."""

    def __init__(self, scratch_root: str | os.PathLike[str], timeout_s: float = 6 * 3600.0) -> None:
        self.scratch_root = Path(scratch_root)
        self.timeout_s = timeout_s

    def launch(self, request: TrainingRequest) -> TrainingResult:
        """Run every node; if one fails, stop the others and raise `TrainingFailed` with its log tail."""
        if request.num_nodes < 1 or request.procs_per_node < 1:
            raise ValueError(
                f"num_nodes and procs_per_node must be >= 1, got {request.num_nodes} / {request.procs_per_node}"
            )
        start = time.monotonic()
        port = free_port()
        procs: list[tuple[subprocess.Popen[str], deque[str], threading.Thread]] = []
        for rank in range(request.num_nodes):
            env = {
                **os.environ,
                "PET_NNODES": str(request.num_nodes),
                "PET_NODE_RANK": str(rank),
                "PET_NPROC_PER_NODE": str(request.procs_per_node),
                "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": str(port),
                "PYTHONUNBUFFERED": "1",
            }
            if not request.use_gpus:
                env["CUDA_VISIBLE_DEVICES"] = ""
                # All nodes share this machine's cores: split them instead of oversubscribing.
                threads = max(1, (os.cpu_count() or 1) // (request.num_nodes * request.procs_per_node))
                env.setdefault("OMP_NUM_THREADS", str(threads))
            scratch = self.scratch_root / request.run_id / f"node{rank}"
            cmd = [sys.executable, "-m", "sam2.launch.training_node", "--scratch-dir", str(scratch)]
            cmd += request.node_args()
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
            tail: deque[str] = deque(maxlen=60)
            pump = threading.Thread(target=_pump, args=(proc.stdout, f"[node{rank}]", tail), daemon=True)
            pump.start()
            procs.append((proc, tail, pump))
        logger.info(
            "started %d local node(s) for run %s (rendezvous 127.0.0.1:%d)", len(procs), request.run_id, port
        )

        failed: tuple[int, int] | None = None
        deadline = start + self.timeout_s
        while any(p.poll() is None for p, _, _ in procs):
            for rank, (proc, _, _) in enumerate(procs):
                code = proc.poll()
                if code not in (None, 0) and failed is None:
                    failed = (rank, code)
            if failed is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        timed_out = failed is None and any(p.poll() is None for p, _, _ in procs)
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _, pump in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            pump.join(timeout=5)
        if failed is None:
            failed = next(((r, p.returncode) for r, (p, _, _) in enumerate(procs) if p.returncode != 0), None)
        if timed_out:
            raise TimeoutError(
                f"local training run {request.run_id} exceeded {self.timeout_s:.0f}s; nodes stopped"
            )
        if failed is not None:
            rank, code = failed
            tail = "\n".join(procs[rank][1])
            raise TrainingFailed(
                f"local training node {rank} of run {request.run_id} exited with status {code}; last log lines:\n"
                f"{tail}"
            )
        seconds = time.monotonic() - start
        return TrainingResult(
            request.run_id,
            f"{request.run_uri.rstrip('/')}/checkpoints",
            f"{request.run_uri.rstrip('/')}/tensorboard",
            seconds,
            {"launcher": "local-torchrun", "nodes": str(request.num_nodes)},
        )
