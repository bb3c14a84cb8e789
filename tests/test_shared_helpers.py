"""The helpers in sam2/utils/ that several modules share: one file checksum, one file lock, one free
port, one round-robin split and one code version string for MLflow, KFP versions and image tags."""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import shutil
import socket
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from makefile_dry_run import make_dry_run

from sam2.utils.code_version import code_version
from sam2.utils.file_hashing import CHUNK_BYTES, sha256_of_file
from sam2.utils.file_lock import FileLockTimeout, exclusive_file_lock
from sam2.utils.network import free_port
from sam2.utils.sharding import round_robin_shard

ROOT = Path(__file__).resolve().parents[1]


def test_file_checksum_is_the_sha256_of_the_bytes_and_reports_each_chunk(tmp_path):
    data = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # two full chunks and a partial one
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    seen: list[int] = []
    assert sha256_of_file(path, seen.append) == hashlib.sha256(data).hexdigest()
    assert seen == [CHUNK_BYTES, CHUNK_BYTES, len(data) - 2 * CHUNK_BYTES]
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_of_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def _hold_lock(path: str, held: multiprocessing.synchronize.Event, release_s: float) -> None:
    with exclusive_file_lock(path, timeout_s=5):
        held.set()
        time.sleep(release_s)


def test_file_lock_waits_for_another_process_then_times_out_naming_the_lock(tmp_path):
    lock = tmp_path / "sub" / "x.lock"
    ctx = multiprocessing.get_context("spawn")
    held = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(lock), held, 1.0))
    holder.start()
    try:
        assert held.wait(60)
        with exclusive_file_lock(lock, timeout_s=30, poll_s=0.02) as waited:
            assert waited > 0.2  # it waited for the holder to let go, not merely opened the file
    finally:
        holder.join(30)
    held = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(lock), held, 3.0))
    holder.start()
    try:
        assert held.wait(60)
        with pytest.raises(FileLockTimeout, match=re.escape(str(lock))), exclusive_file_lock(lock, 0.2):
            pass
        with (
            pytest.raises(KeyError, match="custom"),
            exclusive_file_lock(lock, 0.2, timeout_error=lambda p, t: KeyError(f"custom {p} {t}")),
        ):
            pass
    finally:
        holder.join(30)
    assert issubclass(FileLockTimeout, TimeoutError)  # callers that catch TimeoutError keep working


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_round_robin_shards_cover_the_sorted_items_once_whatever_their_order():
    items = ["v3", "v0", "v4", "v1", "v2"]
    shards = [round_robin_shard(items, i, 2) for i in range(2)]
    assert shards == [["v0", "v2", "v4"], ["v1", "v3"]]
    assert round_robin_shard(reversed(items), 1, 2) == ["v1", "v3"]
    with pytest.raises(ValueError, match="shard index 2 is not in 0..1"):
        round_robin_shard(items, 2, 2)


def test_code_version_is_one_string_for_mlflow_kfp_and_the_image_tag(tmp_path):
    """MLflow's code_version (sam2.promotion.rules), KFP version names (pipelines.cluster) and `make image`'s tag
    are the same string, valid as an image tag."""
    from pipelines import cluster
    from sam2.promotion import rules

    current = code_version()
    assert rules.code_version is code_version and cluster.code_version is code_version
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", current), current
    if (ROOT / ".git").exists() and shutil.which("git") and shutil.which("make"):
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        assert re.fullmatch(rf"{re.escape(version('sam2-kubeflow'))}-{commit}(-dirty)?", current), current
        dry_run = make_dry_run("image", "REGISTRY=r.example.com/team")
        assert f"-t r.example.com/team/sam2-kubeflow:{code_version()} " in dry_run
    # outside a checkout (a wheel in site-packages), even inside someone else's repository
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "site-packages").mkdir()
    assert code_version(tmp_path / "site-packages") == version("sam2-kubeflow")
