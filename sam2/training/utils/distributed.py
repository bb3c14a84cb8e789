"""Process-group setup for training: one process, local workers, or torchrun / PyTorchJob pods.

Rank and world size come from the `env://` variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) that torchrun, the Kubeflow training operator and our own launcher set.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job and which device it trains on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from err


def setup_distributed(
    accelerator: str, backend: str | None = None, timeout_mins: float = 30
) -> DistributedContext:
    """Pick the device and, when WORLD_SIZE > 1, join the process group over env://.

    accelerator: "cuda" or "cpu"; backend: None picks nccl on cuda and gloo on cpu.
    Raises ValueError for an unknown accelerator or a cuda request on a machine without CUDA.
    """
    rank, world_size, local_rank = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if accelerator == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "trainer.accelerator=cuda but this machine has no CUDA device; "
                "pass trainer.accelerator=cpu to train on the CPU (with gloo between processes)"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    elif accelerator == "cpu":
        device = torch.device("cpu")
        logger.info("rank %d trains on the CPU with %d thread(s)", rank, torch.get_num_threads())
    else:
        raise ValueError(f"trainer.accelerator must be 'cuda' or 'cpu', got {accelerator!r}")

    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if accelerator == "cuda" else "gloo")
        if backend == "nccl" and accelerator == "cpu":
            raise ValueError(
                "trainer.distributed.backend=nccl needs trainer.accelerator=cuda; use gloo on cpu"
            )
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_mins),
        )
        logger.info("joined process group: rank %d of %d (%s)", rank, world_size, backend)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True only when `flag` holds on every rank (a collective: every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(1.0 if flag else 0.0, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0.5)


def broadcast_object(obj: Any, device: torch.device, src: int = 0) -> Any:
    """Rank `src`'s `obj` (any picklable value) on every rank (a collective: every rank must call it);
    `obj` itself without a process group. `device` is this rank's device (cuda for nccl)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
