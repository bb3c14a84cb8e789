"""`python -m pipelines.run` refuses bad settings before anything starts: one `error:` line naming the
setting, exit 2, no traceback, nothing submitted or run (sam2/utils/cli_errors.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_pipeline_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KFP_", "SAM2_INIT", "MOSE_ROOT"))}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**base, "KFP_HOST": "", **env},
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    "setting, named",
    [
        ("nosuch=1", "no parameter 'nosuch'"),
        ("epochs=abc", "--set epochs='abc': epochs is an integer parameter"),
        ("promotion_margin=high", "promotion_margin is a float parameter"),
        ("allow_random_init=maybe", "allow_random_init is a boolean parameter"),
    ],
)
def test_a_bad_set_is_refused_before_the_pipeline_starts(setting: str, named: str, tmp_path: Path) -> None:
    proc = run_pipeline_cli("--set", setting, env={"HOME": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert named in one_error_line(proc)
    assert "pipeline finished" not in proc.stdout


def test_a_local_path_as_the_initial_checkpoint_is_refused_before_starting(tmp_path: Path) -> None:
    weights = tmp_path / "sam2.1_hiera_tiny.pt"
    weights.write_bytes(b"weights")
    proc = run_pipeline_cli(
        "--dataset",
        "mose",
        env={"MOSE_ROOT": "s3://sam2-data/raw/mose/", "SAM2_INIT_CHECKPOINT_URI": str(weights)},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert "SAM2_INIT_CHECKPOINT_URI" in line and str(weights) in line and "s3://" in line


@pytest.mark.parametrize("token", ["", "not-a-real-token"])
def test_kfp_host_at_a_server_that_is_not_kfp_names_kfp_host(token: str, s3_server) -> None:
    """KFP_HOST pointing at the S3 server: its 403/501 XML answer was read as a namespace problem."""
    proc = run_pipeline_cli("submit", env={"KFP_HOST": s3_server.endpoint_url, "KFP_TOKEN": token})
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert "check KFP_HOST" in line and s3_server.endpoint_url in line and "KFP_NAMESPACE" not in line
