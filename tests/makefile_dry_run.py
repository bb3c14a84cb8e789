"""`make -n` in the repository: the commands a Makefile target would run, without running them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_dry_run(*args: str, always: bool = False) -> str:
    """The commands `make <args>` would run (`always`: also those of targets that are up to date);
    skips the test where `make` is not installed."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    flags = ["-n", "--no-print-directory", *(["-B"] if always else [])]
    proc = subprocess.run(["make", *flags, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
