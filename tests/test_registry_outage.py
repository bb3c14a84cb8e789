"""An unreachable MLflow tracking server during promotion: waited for SAM2_RETRY_BUDGET_S (a restart within
it goes unnoticed), then one line naming the server, the tries and the seconds, exit 201 (retryable) instead
of MLflow's own ~4 min of retries ending in a raw MlflowException."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sam2.promotion.registry import MlflowModelRegistry
from sam2.utils.cli_errors import EXIT_UNREACHABLE, exit_code_for
from sam2.utils.network import free_port
from sam2.utils.retry import ServiceUnreachableError


def test_an_unreachable_tracking_server_fails_after_the_budget_in_one_line(monkeypatch, tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("SAM2_RETRY_BUDGET_S", "3")
    started = time.monotonic()
    with pytest.raises(ServiceUnreachableError) as info:
        MlflowModelRegistry(url, lock_dir=tmp_path)
    took = time.monotonic() - started
    message = str(info.value)
    assert 2.5 <= took < 15, took
    assert f"MLflow tracking server {url} unreachable while connecting to the model registry" in message
    assert "SAM2_RETRY_BUDGET_S=3" in message and "MLFLOW_TRACKING_URI" in message
    assert "\n" not in message
    assert exit_code_for(info.value) == EXIT_UNREACHABLE


@pytest.mark.slow  # a real `mlflow server` started while the registry waits (20-60 s here)
def test_a_tracking_server_that_comes_back_within_the_budget_is_used(monkeypatch, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("SAM2_RETRY_BUDGET_S", "240")
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--backend-store-uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"--default-artifact-root={tmp_path / 'artifacts'}",
        "--workers=1",
    ]
    procs: list[subprocess.Popen] = []
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    starter = threading.Timer(5.0, lambda: procs.append(subprocess.Popen(cmd, stdout=log, stderr=log)))
    starter.start()
    try:
        started = time.monotonic()
        registry = MlflowModelRegistry(url, lock_dir=tmp_path)
        assert time.monotonic() - started >= 5.0
        assert registry.champion("demo") is None  # a real request to the server that came back
    finally:
        starter.join()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()
