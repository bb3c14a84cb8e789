"""The S3 layer against a real SeaweedFS server: URIs, round trips, checksums, markers, failures."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from s3_server import store_for

from sam2.storage import (
    MARKER_NAME,
    IncompletePublishError,
    ObjectStore,
    S3Settings,
    S3Uri,
    StorageAuthError,
    StorageIntegrityError,
    StorageUnreachableError,
    parse_s3_uri,
    sync_to_local,
    upload_folder,
)


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket/a/b.txt") == S3Uri("bucket", "a/b.txt")
    assert parse_s3_uri("s3://bucket") == S3Uri("bucket", "")
    assert str(parse_s3_uri("s3://bucket/datasets/demo/").join("v1", "/manifest.json")) == (
        "s3://bucket/datasets/demo/v1/manifest.json"
    )
    assert parse_s3_uri("s3://bucket/x").prefix == "x/" and S3Uri("b", "").prefix == ""
    for bad in ("http://bucket/key", "s3://", "/local/path"):
        with pytest.raises(ValueError, match="s3://bucket/key|no bucket"):
            parse_s3_uri(bad)


def test_settings_from_env_and_secret_never_shown() -> None:
    env = {
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
    }
    settings = S3Settings.from_env(env)
    assert settings.endpoint_url == "http://127.0.0.1:9" and settings.region == "us-east-1"
    assert S3Settings.from_env(settings.as_env()) == settings
    store = ObjectStore(settings)
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in repr(store) and "AKIDEXAMPLE" not in repr(store)
    with pytest.raises(StorageAuthError, match="AWS_SECRET_ACCESS_KEY"):
        S3Settings.from_env({"AWS_ACCESS_KEY_ID": "x"})
    with pytest.raises(ValueError, match="S3_ENDPOINT_URL"):
        ObjectStore(S3Settings("127.0.0.1:9000", "a", "b"))


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "manifest.json": b'{"version": "x"}',
        "JPEGImages/v1/00000.jpg": bytes(range(256)) * 40,
        "JPEGImages/v1/00001.jpg": b"\x00" * 3000,
        "Annotations/v1/00000.png": b"png-bytes",
        "deep/a/b/c/empty.bin": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_folder_round_trip_with_marker_and_resume(
    s3_store: ObjectStore, s3_bucket: str, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "src")
    uri = f"s3://{s3_bucket}/datasets/demo/v1"
    sent = s3_store.upload_folder(tmp_path / "src", uri)
    assert sent.transferred == len(files) and sent.skipped == 0
    marker = s3_store.read_marker(uri)
    assert sorted(marker["files"]) == sorted(files) and marker["files"]["manifest.json"]["size"] == 16
    assert sorted(s3_store.list_objects(uri)) == sorted([*files, MARKER_NAME])

    got = s3_store.sync_to_local(uri, tmp_path / "dst")
    assert got.transferred == len(files)
    for rel, data in files.items():
        assert (tmp_path / "dst" / rel).read_bytes() == data
    assert json.loads((tmp_path / "dst" / MARKER_NAME).read_text()) == marker

    # nothing changed: nothing moves either way; one changed file moves alone
    assert s3_store.upload_folder(tmp_path / "src", uri).transferred == 0
    assert s3_store.sync_to_local(uri, tmp_path / "dst").transferred == 0
    (tmp_path / "src" / "manifest.json").write_bytes(b'{"version": "y"}')
    assert s3_store.upload_folder(tmp_path / "src", uri).transferred == 1
    (tmp_path / "dst" / "JPEGImages/v1/00001.jpg").write_bytes(b"local damage")
    again = s3_store.sync_to_local(uri, tmp_path / "dst")
    assert again.transferred == 2 and (tmp_path / "dst" / "manifest.json").read_bytes() == b'{"version": "y"}'
    assert (tmp_path / "dst" / "JPEGImages/v1/00001.jpg").read_bytes() == b"\x00" * 3000


def test_excluded_paths_are_neither_uploaded_nor_listed(
    s3_store: ObjectStore, s3_bucket: str, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "src")
    (tmp_path / "src" / ".state" / "records").mkdir(parents=True)
    (tmp_path / "src" / ".state" / "records" / "v1.json").write_text("{}")
    (tmp_path / "src" / ".statefile").write_text("not in the folder .state, so kept")
    uri = f"s3://{s3_bucket}/datasets/clean/v1"
    s3_store.upload_folder(tmp_path / "src", uri, exclude=(".state", "deep/a"))
    kept = {rel: data for rel, data in files.items() if not rel.startswith("deep/a/")}
    expected = sorted([*kept, ".statefile"])
    assert sorted(s3_store.read_marker(uri)["files"]) == expected
    assert sorted(s3_store.list_objects(uri)) == sorted([*expected, MARKER_NAME])


def test_server_has_room_for_a_bucket_per_test(s3_server, s3_store: ObjectStore) -> None:
    """Each bucket is a SeaweedFS collection with volumes of its own. With SeaweedFS's defaults (seven new
    volumes per collection, slots derived from free disk) the suite's buckets exhausted the slots on CI
    ("no free volumes left", an S3 InternalError on upload) after a few dozen buckets."""
    status_url = f"http://127.0.0.1:{s3_server.ports['master']}/dir/status"

    def topology() -> dict:
        with urllib.request.urlopen(status_url, timeout=10) as answer:  # master API, /dir/status
            return json.load(answer)["Topology"]

    assert topology()["Max"] >= 1000
    before = topology()["Free"]
    for index in range(3):
        bucket = f"room-{uuid.uuid4().hex[:8]}-{index}"
        s3_store.ensure_bucket(bucket)
        s3_store.write_bytes(f"s3://{bucket}/x", b"x")
    assert before - topology()["Free"] == 3  # one volume per new bucket


def test_single_objects_and_checksums(s3_store: ObjectStore, s3_bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/runs/r1/metrics.json"
    s3_store.write_bytes(uri, b'{"J&F": 80}')
    assert s3_store.read_bytes(uri) == b'{"J&F": 80}' and s3_store.exists(uri)
    assert not s3_store.exists(f"s3://{s3_bucket}/runs/r1/missing")
    with pytest.raises(StorageIntegrityError, match="metrics.json"):
        s3_store.download_file(uri, tmp_path / "m.json", expected_sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
    assert s3_store.download_file(uri, tmp_path / "m.json") == 11


def test_unpublished_prefix_is_refused(s3_store: ObjectStore, s3_bucket: str, tmp_path: Path) -> None:
    s3_store.write_bytes(f"s3://{s3_bucket}/half/JPEGImages/v/00000.jpg", b"x")
    with pytest.raises(IncompletePublishError, match=r"half has no _SUCCESS marker"):
        s3_store.sync_to_local(f"s3://{s3_bucket}/half", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
    with pytest.raises(IncompletePublishError, match="after waiting"):
        s3_store.wait_for_marker(f"s3://{s3_bucket}/half", timeout_s=0.3, poll_s=0.1)
    # raw inputs may be fetched without a marker when asked explicitly
    assert (
        s3_store.sync_to_local(f"s3://{s3_bucket}/half", tmp_path / "raw", require_marker=False).transferred
        == 1
    )
    assert not (tmp_path / "raw" / MARKER_NAME).exists()


def test_env_shortcuts(s3_env: dict, s3_bucket: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    upload_folder(tmp_path / "src", f"s3://{s3_bucket}/env")
    assert sync_to_local(f"s3://{s3_bucket}/env", tmp_path / "dst").transferred == 5


def test_wrong_credentials_are_named_without_the_secret(
    s3_server, s3_bucket: str, tmp_path: Path, caplog
) -> None:
    wrong = ObjectStore(
        S3Settings(s3_server.endpoint_url, s3_server.access_key, "definitely-wrong-secret"), retries=0
    )
    with pytest.raises(StorageAuthError) as info:
        wrong.upload_folder(make_tree(tmp_path / "src") and tmp_path / "src", f"s3://{s3_bucket}/x")
    message = str(info.value)
    assert "rejected the credentials" in message and s3_server.endpoint_url in message
    assert "definitely-wrong-secret" not in message and s3_server.secret_key not in message
    assert s3_server.access_key not in message  # only a short prefix of the key id
    assert "definitely-wrong-secret" not in caplog.text


def test_unreachable_endpoint_is_named(tmp_path: Path) -> None:
    from sam2.utils.network import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    store = ObjectStore(S3Settings(endpoint, "AKID", "secret-value"), retries=1, backoff_s=0.05)
    with pytest.raises(StorageUnreachableError, match=rf"{endpoint} did not answer .*2 attempts") as info:
        store.read_bytes("s3://bucket/key")
    assert "secret-value" not in str(info.value)


def test_server_stopping_mid_upload_leaves_nothing_published(make_s3_server, tmp_path: Path) -> None:
    server = make_s3_server()
    store = store_for(server, workers=2, retries=1, backoff_s=0.05, timeout_s=3.0)
    src = tmp_path / "src"
    src.mkdir()
    for index in range(60):
        (src / f"{index:03d}.bin").write_bytes(bytes([index]) * 400_000)
    uri = "s3://crash/datasets/big/v1"
    store.ensure_bucket("crash")

    def kill_after_first_object() -> None:
        deadline = time.monotonic() + 60
        watcher = store_for(server, retries=0)
        while time.monotonic() < deadline:
            try:
                if watcher.list_objects(uri):
                    break
            except Exception:  # noqa: BLE001 - the upload may not have begun yet
                pass
            time.sleep(0.02)
        server.kill()

    killer = threading.Thread(target=kill_after_first_object)
    killer.start()
    with pytest.raises(StorageUnreachableError, match=server.endpoint_url):
        store.upload_folder(src, uri)
    killer.join()

    # restart the same server on the same data and ports: the half upload is not published
    server.start(timeout_s=90)
    assert not store.is_published(uri)
    assert 0 < len(store.list_objects(uri)) < 60
    with pytest.raises(IncompletePublishError):
        store.sync_to_local(uri, tmp_path / "reader")
    assert not (tmp_path / "reader").exists()
    # rerunning the upload finishes it, re-sending only what is missing
    result = store.upload_folder(src, uri)
    assert result.skipped > 0 and result.transferred + result.skipped == 60
    assert store.read_marker(uri)["num_files"] == 60


def test_retry_budget_bounds_an_unreachable_endpoint_and_is_named(monkeypatch) -> None:
    """Without an explicit retry count the store retries for SAM2_RETRY_BUDGET_S seconds, then names the
    endpoint, the attempts, the seconds and the setting."""
    from sam2.utils.network import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("SAM2_RETRY_BUDGET_S", "3")
    store = ObjectStore(S3Settings(endpoint, "AKID", "secret-value"), backoff_s=0.2)
    started = time.monotonic()
    with pytest.raises(StorageUnreachableError) as info:
        store.read_bytes("s3://bucket/key")
    took = time.monotonic() - started
    message = str(info.value)
    assert 2.5 <= took < 8, took
    assert endpoint in message and "SAM2_RETRY_BUDGET_S=3 s" in message and "over 3 s" in message
    monkeypatch.setenv("SAM2_RETRY_BUDGET_S", "soon")
    with pytest.raises(ValueError, match="SAM2_RETRY_BUDGET_S='soon'"):
        ObjectStore(S3Settings(endpoint, "AKID", "secret-value"))


def test_a_server_restart_within_the_budget_does_not_fail_a_write(make_s3_server, tmp_path: Path) -> None:
    """The server is down for 8 s while a file upload starts: it is retried and lands once it is back."""
    server = make_s3_server()
    store = store_for(server, retries=None, budget_s=120, backoff_s=0.2, timeout_s=5.0)
    store.ensure_bucket("outage")
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100_000)
    server.stop(grace_s=0.5)
    restarter = threading.Timer(8.0, lambda: server.start(timeout_s=90))
    restarter.start()
    started = time.monotonic()
    store.upload_file(path, "s3://outage/a/f.bin")
    restarter.join()
    assert time.monotonic() - started >= 8.0
    assert store.read_bytes("s3://outage/a/f.bin") == path.read_bytes()


def test_an_upload_cut_by_an_outage_leaves_no_multipart_upload_behind(make_s3_server, tmp_path: Path) -> None:
    """A multipart upload (24 MB, 5 MB parts) killed mid-way cannot be aborted by minio while the server is
    gone; the store aborts it when the server answers again, before uploading the file anew."""
    server = make_s3_server()
    store = store_for(server, retries=None, budget_s=120, backoff_s=0.2, timeout_s=5.0, workers=1)
    store.ensure_bucket("parts")
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * (24 * 1024 * 1024 // 256))

    def kill_mid_upload() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if store._client._list_multipart_uploads("parts", prefix="run/").uploads:
                    break
            except Exception:  # noqa: BLE001 - the upload may not have begun yet
                pass
            time.sleep(0.01)
        server.kill()
        time.sleep(3)
        server.start(timeout_s=90)

    killer = threading.Thread(target=kill_mid_upload)
    killer.start()
    store.upload_file(path, "s3://parts/run/big.bin")
    killer.join()
    assert store.read_bytes("s3://parts/run/big.bin") == path.read_bytes()
    assert store._client._list_multipart_uploads("parts", prefix="run/").uploads == []
