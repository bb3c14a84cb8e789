"""CPU thread counts for processes that share one machine (training workers, inference workers).

Every torch process starts with one intra-op thread per core. N such processes on one machine (local
training workers talking over gloo, inference workers sharing a video list) then run N x cores threads
that spin against each other: on 2 cores two gloo workers trained 12x slower than with one thread each.
The rule here: each of N processes on a machine gets max(1, cores // N) threads unless the user chose
with OMP_NUM_THREADS. "Cores" are the CPUs this process may run on (its affinity mask), lowered to the
cgroup CPU quota of a container (a pod with `limits.cpu: 4` on a 64-core node has 4). One process alone
on an unrestricted machine keeps torch's default (one thread per physical core).

torchrun sets OMP_NUM_THREADS=1 itself when it starts several processes per node and the variable is
unset. A child cannot tell that 1 from a user's, so it counts as chosen: torchrun workers keep one
thread each (no oversubscription; pass OMP_NUM_THREADS=<cores / processes> to torchrun for more).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

logger = logging.getLogger(__name__)

THREADS_ENV = "OMP_NUM_THREADS"
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpu_quota(root: Path = _CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup CPU bandwidth limit (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), or None."""
    try:
        text = (root / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max" and int(text[1]) > 0:
            return int(text[0]) / int(text[1])
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpu_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a container's CPU quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def user_thread_count() -> int | None:
    """OMP_NUM_THREADS as a positive integer when set (by the user, or by torchrun), else None.

    Raises ValueError naming the variable for a value that is not a positive integer.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{THREADS_ENV}={value!r} is not a positive integer; unset it or set e.g. 1")
    return count


def threads_per_process(processes: int) -> int:
    """The thread count each of `processes` torch processes on this machine should use when the user
    did not choose one: max(1, cores // processes)."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    return max(1, available_cpu_cores() // processes)


def plan_cpu_threads(processes: int, what: str, log: bool = True) -> int | None:
    """Decide the threads of `processes` processes about to share this machine, and log the decision.

    Returns the count to apply in each process (`apply_cpu_threads`), or None to keep what processes
    start with: OMP_NUM_THREADS when set, torch's default for one process on a machine it has to itself.
    `what` names the processes in the log line, e.g. "training process(es)"; pass `log=False` in all but
    one of several processes that each decide for themselves (torchrun workers), so the line appears once.
    Raises ValueError for an OMP_NUM_THREADS that is not a positive integer.
    """
    cores = available_cpu_cores()
    chosen = user_thread_count()
    threads: int | None = None
    if chosen is not None:
        how = f"{chosen} CPU thread(s) each, as {THREADS_ENV} says"
    elif processes == 1 and cores >= (os.cpu_count() or 1):
        how = f"torch's default CPU threads (set {THREADS_ENV} to choose)"
    else:
        threads = threads_per_process(processes)
        how = f"{threads} CPU thread(s) each (set {THREADS_ENV} to choose)"
    if log:
        logger.info("%d %s on %d cores: %s", processes, what, cores, how)
    return threads


def apply_cpu_threads(threads: int | None) -> int:
    """In a worker process: use `threads` intra-op threads (also for its own children, through
    OMP_NUM_THREADS); None keeps what the process started with. Returns the count now in effect."""
    import torch

    if threads is not None:
        os.environ[THREADS_ENV] = str(threads)
        torch.set_num_threads(threads)
    return torch.get_num_threads()
