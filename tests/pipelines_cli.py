"""`python -m pipelines.run` as a user runs it, for the cluster tests: in a fresh HOME with no kubeconfig,
and none of the developer's KFP_*, MOSE_* or SAM2_INIT* settings unless a test passes them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_pipelines_cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The finished CLI process (stdout and stderr as text); `env` is added to the cleaned environment."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KFP_", "KF_PIPELINES", "MOSE_", "SAM2_INIT"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pipelines.run", *args],
        cwd=ROOT,
        env=base | {"HOME": str(home), "KUBECONFIG": str(home / "none")} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
