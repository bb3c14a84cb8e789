"""A training node killed (SIGKILL: the kubelet after the grace period, the OOM killer, node loss) in the
middle of mirroring its checkpoints to S3 leaves a whole checkpoint set a restarted node resumes from.

The mirror used to publish with `upload_folder`, which removes the folder's `_SUCCESS` marker first: a kill
during the upload left `checkpoints/` unmarked and the restarted node started from scratch. It now goes
through `ObjectStore.replace_folder` (new set published whole under `checkpoints.incoming/`, then moved in),
and the node resumes through `resume_checkpoints`. Here a real subprocess runs the node's own mirror
(`_CheckpointMirror.sync_once`) against the SeaweedFS server of tests/s3_server.py and is SIGKILLed before
each of its S3 write requests in turn; after every kill a fresh node's resume path must find the previous
set or the new one, byte for byte, never a mix, and the next publish must leave the plain layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sam2.launch import training_node
from sam2.launch.training_node import ResumeError, _CheckpointMirror, _Location, resume_checkpoints
from sam2.storage import MARKER_NAME, incoming_uri

# Runs the node's mirror once on a store whose Minio client journals each write request and, before the
# PAUSE_AT-th one, says so and sleeps until the test kills the process.
CHILD = """
import os, sys, time
from pathlib import Path
from sam2.launch.training_node import _CheckpointMirror, _Location
from sam2.storage import ObjectStore

WRITES = {"put_object", "fput_object", "remove_object", "remove_objects", "copy_object", "compose_object"}
ckpt_dir, staging, uri, journal, pause_at = sys.argv[1:6]
pause_at = int(pause_at)


class Journaling:
    def __init__(self, client):
        self._client, self._count = client, 0

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name not in WRITES:
            return attr

        def call(bucket, key, *args, **kwargs):
            self._count += 1
            with open(journal, "a") as out:
                out.write(f"{name} {key}\\n")
            if self._count == pause_at:
                Path(journal + ".paused").touch()
                time.sleep(600)
            return attr(bucket, key, *args, **kwargs)

        return call


store = ObjectStore(workers=1, retries=0)
store._client = Journaling(store._client)
mirror = _CheckpointMirror(Path(ckpt_dir), _Location(uri, store), 3600, Path(staging))
print(mirror.sync_once())
Path(journal + ".done").touch()
"""

# Runs the node's mirror once and SIGKILLs itself KILL_AFTER seconds into it (0: never), wherever it is then:
# between two requests or in the middle of a file's bytes (a multipart upload).
TIMED_CHILD = """
import os, signal, sys, threading, time
from pathlib import Path
from sam2.launch.training_node import _CheckpointMirror, _Location
from sam2.storage import ObjectStore

ckpt_dir, staging, uri, kill_after = sys.argv[1:5]
mirror = _CheckpointMirror(Path(ckpt_dir), _Location(uri, ObjectStore(retries=0)), 3600, Path(staging))
if float(kill_after):
    threading.Timer(float(kill_after), os.kill, (os.getpid(), signal.SIGKILL)).start()
started = time.monotonic()
mirror.sync_once()
print(f"{time.monotonic() - started:.3f}")
"""


def _checkpoint(path: Path, epoch: int, seed: int, numel: int = 40_000) -> bytes:
    """A torch checkpoint (epoch, steps, weights), written as the trainer does; returns its bytes."""
    generator = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"epoch": epoch, "steps": 2 * epoch, "model": {"w": torch.randn(numel, generator=generator)}}, path
    )
    return path.read_bytes()


def _sets(root: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The node's checkpoint folder before (`old`) and after (`new`) a few more epochs: checkpoint.pt moves
    on, the kept checkpoint_1.pt stays the same, checkpoint_2.pt is new."""
    old = {
        "checkpoint.pt": _checkpoint(root / "old" / "checkpoint.pt", 1, 1),
        "checkpoint_1.pt": _checkpoint(root / "old" / "checkpoint_1.pt", 1, 1),
    }
    new = {
        "checkpoint.pt": _checkpoint(root / "new" / "checkpoint.pt", 2, 2),
        "checkpoint_1.pt": _checkpoint(root / "new" / "checkpoint_1.pt", 1, 1),
        "checkpoint_2.pt": _checkpoint(root / "new" / "checkpoint_2.pt", 2, 2),
    }
    return old, new


def _mirror(ckpt_dir: Path, uri: str, store, staging: Path) -> list[str]:
    return _CheckpointMirror(ckpt_dir, _Location(uri, store), 3600, staging).sync_once()


def _run_child(tmp: Path, ckpt_dir: Path, uri: str, pause_at: int, env: dict[str, str]) -> list[str]:
    """Run the mirror in a subprocess; SIGKILL it before its `pause_at`-th write (0: let it finish).
    Returns the journal of write requests it started ("<method> <key>")."""
    journal = tmp / f"journal-{pause_at}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(ckpt_dir),
            str(tmp / f"staging-{pause_at}"),
            uri,
            str(journal),
            str(pause_at),
        ],
        env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    flag = Path(f"{journal}.paused" if pause_at else f"{journal}.done")
    deadline = time.monotonic() + 60
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mirror child (pause at {pause_at}) ended early: {proc.communicate()[0][-3000:]}")
        time.sleep(0.01)
    if pause_at:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    if pause_at:
        assert proc.returncode == -signal.SIGKILL
    return journal.read_text().splitlines()


def _resumed(source: _Location, dest: Path) -> tuple[str | None, dict[str, bytes]]:
    used = resume_checkpoints(source, dest)
    return used, {p.name: p.read_bytes() for p in sorted(dest.glob("*.pt"))}


def test_the_normal_mirror_keeps_the_published_layout_and_sends_only_changed_files(
    tmp_path, s3_store, s3_bucket
):
    old, new = _sets(tmp_path)
    uri = f"s3://{s3_bucket}/runs/r/checkpoints"
    assert _mirror(tmp_path / "old", uri, s3_store, tmp_path / "staging") == sorted(old)
    s3_store.counters.reset()
    assert _mirror(tmp_path / "new", uri, s3_store, tmp_path / "staging") == sorted(new)
    sent = s3_store.counters.snapshot()
    changed = len(new["checkpoint.pt"]) + len(new["checkpoint_2.pt"])
    marker_bytes = sent["bytes_uploaded"] - changed
    assert sent["objects_uploaded"] == 4 and 0 < marker_bytes < 4096, sent  # 2 files + 2 markers

    # What every other consumer reads is unchanged: the marked folder and checkpoint.pt by its key.
    marker = s3_store.read_marker(uri)
    assert marker["files"] == {
        n: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in new.items()
    }
    assert not s3_store.list_objects(incoming_uri(uri)), "the incoming copy is deleted once moved in"
    s3_store.download_file(f"{uri}/checkpoint.pt", tmp_path / "read" / "checkpoint.pt")
    assert (tmp_path / "read" / "checkpoint.pt").read_bytes() == new["checkpoint.pt"]
    s3_store.sync_to_local(uri, tmp_path / "synced")
    assert {p.name: p.read_bytes() for p in (tmp_path / "synced").glob("*.pt")} == new

    used, files = _resumed(_Location(uri, s3_store), tmp_path / "node" / "checkpoints")
    assert used == uri and files == new
    assert (
        json.loads((tmp_path / "node" / "checkpoints" / MARKER_NAME).read_text())["files"] == marker["files"]
    )


def test_a_mirror_killed_before_any_of_its_writes_leaves_a_whole_set_to_resume_from(
    tmp_path, s3_store, s3_bucket, s3_env, caplog
):
    old, new = _sets(tmp_path)
    # The whole protocol, once, uninterrupted: the order of its write requests.
    full_uri = f"s3://{s3_bucket}/runs/full/checkpoints"
    _mirror(tmp_path / "old", full_uri, s3_store, tmp_path / "staging")
    journal = _run_child(tmp_path, tmp_path / "new", full_uri, 0, s3_env)
    prefix = "runs/full/checkpoints"
    assert journal == [
        f"remove_object {prefix}.incoming/_SUCCESS",
        f"fput_object {prefix}.incoming/checkpoint.pt",
        f"fput_object {prefix}.incoming/checkpoint_2.pt",
        f"put_object {prefix}.incoming/_SUCCESS",  # from here on the new set is complete
        f"remove_object {prefix}/_SUCCESS",
        f"copy_object {prefix}/checkpoint.pt",
        f"copy_object {prefix}/checkpoint_2.pt",
        f"put_object {prefix}/_SUCCESS",
        f"remove_object {prefix}.incoming/_SUCCESS",
        f"remove_object {prefix}.incoming/checkpoint.pt",
        f"remove_object {prefix}.incoming/checkpoint_2.pt",
    ]
    new_complete_at = journal.index(f"put_object {prefix}.incoming/_SUCCESS") + 1

    seen = set()
    for pause_at in range(1, len(journal) + 1):
        uri = f"s3://{s3_bucket}/runs/kill-{pause_at}/checkpoints"
        _mirror(tmp_path / "old", uri, s3_store, tmp_path / "staging")
        _run_child(tmp_path, tmp_path / "new", uri, pause_at, s3_env)

        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sam2.launch.training_node"):
            used, files = _resumed(_Location(uri, s3_store), tmp_path / f"node-{pause_at}" / "checkpoints")
        want = new if pause_at > new_complete_at else old
        assert files == want, f"killed before write {pause_at} ({journal[pause_at - 1]}): resumed a mixed set"
        state = torch.load(tmp_path / f"node-{pause_at}" / "checkpoints" / "checkpoint.pt", weights_only=True)
        assert state["epoch"] == (2 if want is new else 1)
        assert any(f"resuming from {used}" in r.getMessage() for r in caplog.records), caplog.text
        seen.add((used.endswith(".incoming"), want is new))

        # The next mirror (the restarted node's) finishes or discards what was left and ends in the plain layout.
        _mirror(tmp_path / "new", uri, s3_store, tmp_path / "staging")
        assert s3_store.read_marker(uri)["files"].keys() == new.keys()
        assert not s3_store.list_objects(incoming_uri(uri))
        used, files = _resumed(_Location(uri, s3_store), tmp_path / f"again-{pause_at}" / "checkpoints")
        assert used == uri and files == new
    # Killed while the new set was being moved in, the node resumed from the incoming copy.
    assert seen == {(False, False), (True, True), (False, True)}, seen


def test_a_mirror_killed_at_any_instant_even_mid_file_leaves_the_old_or_the_new_set(
    tmp_path, s3_store, s3_bucket, s3_env
):
    """SIGKILL at moments spread over a whole mirror of a 24 MB checkpoint (a 5-part multipart upload, then
    its server-side copy): a single object is never half written, so the resumed set is one of the two."""
    old, _ = _sets(tmp_path)
    big = {
        "checkpoint.pt": _checkpoint(tmp_path / "big" / "checkpoint.pt", 3, 3, numel=6_000_000),
        "checkpoint_1.pt": _checkpoint(tmp_path / "big" / "checkpoint_1.pt", 1, 1),
    }
    env = {**os.environ, **s3_env, "OMP_NUM_THREADS": "1"}

    def mirror_in_child(uri: str, kill_after: float) -> subprocess.CompletedProcess:
        _mirror(tmp_path / "old", uri, s3_store, tmp_path / "staging")
        staging = tmp_path / f"staging-{kill_after}"
        cmd = [sys.executable, "-c", TIMED_CHILD, str(tmp_path / "big"), str(staging), uri, str(kill_after)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    done = mirror_in_child(f"s3://{s3_bucket}/runs/timed/checkpoints", 0)
    assert done.returncode == 0, done.stderr[-3000:]
    seconds = float(done.stdout.split()[-1])
    outcomes = []
    for i, fraction in enumerate((0.15, 0.35, 0.55, 0.75, 0.95)):
        uri = f"s3://{s3_bucket}/runs/timed-{i}/checkpoints"
        killed = mirror_in_child(uri, max(0.01, seconds * fraction))
        assert killed.returncode in (-signal.SIGKILL, 0), killed.stderr[-3000:]
        _, files = _resumed(_Location(uri, s3_store), tmp_path / f"node-{i}" / "checkpoints")
        assert files in (old, big), (
            f"killed {fraction:.0%} into a {seconds:.2f} s mirror: resumed a mixed set"
        )
        outcomes.append("new" if files == big else "old")
    print(f"mirror {seconds:.2f} s; resumed after kills at 15..95%: {outcomes}")


def test_the_newest_set_failing_verification_falls_back_to_the_previous_one(
    tmp_path, s3_store, s3_bucket, s3_env, caplog, monkeypatch
):
    monkeypatch.setattr(training_node, "RESUME_RETRY_S", 0.05)
    old, new = _sets(tmp_path)
    uri = f"s3://{s3_bucket}/runs/r/checkpoints"
    _mirror(tmp_path / "old", uri, s3_store, tmp_path / "staging")
    _run_child(tmp_path, tmp_path / "new", uri, 5, s3_env)  # killed with the new set complete, not moved in
    # The incoming checkpoint.pt is overwritten with other bytes (its marker still lists the real ones).
    (tmp_path / "other.pt").write_bytes(b"not the checkpoint" * 100)
    s3_store.upload_file(tmp_path / "other.pt", f"{incoming_uri(uri)}/checkpoint.pt")
    with caplog.at_level(logging.INFO, logger="sam2.launch.training_node"):
        used, files = _resumed(_Location(uri, s3_store), tmp_path / "node" / "checkpoints")
    assert used == uri and files == old
    assert f"cannot resume from {incoming_uri(uri)}" in caplog.text
    assert "the newer set failed verification" in caplog.text

    # With the previous set damaged too there is nothing safe: a clear error, no fresh start on top of them.
    s3_store.upload_file(tmp_path / "other.pt", f"{uri}/checkpoint.pt")
    with pytest.raises(ResumeError, match="no checkpoint set under .* passed verification"):
        resume_checkpoints(_Location(uri, s3_store), tmp_path / "node2" / "checkpoints")
    assert not (tmp_path / "node2" / "checkpoints" / "checkpoint.pt").exists()


def test_a_node_reading_while_rank_0_replaces_the_set_lists_the_sets_again(
    tmp_path, s3_store, s3_bucket, monkeypatch, caplog
):
    """A replaced worker node resumes while node rank 0 goes on mirroring: the set it listed can be replaced
    under it (its checkpoint.pt then fails the old marker's checksum). It lists the sets again."""
    old, new = _sets(tmp_path)
    uri = f"s3://{s3_bucket}/runs/r/checkpoints"
    _mirror(tmp_path / "old", uri, s3_store, tmp_path / "staging")
    fetch, fetched = s3_store.fetch_version, []

    def fetch_while_rank_0_mirrors(version, local_dir):
        if not fetched:
            _mirror(tmp_path / "new", uri, s3_store, tmp_path / "staging-rank0")
        fetched.append(version.uri)
        return fetch(version, local_dir)

    monkeypatch.setattr(s3_store, "fetch_version", fetch_while_rank_0_mirrors)
    monkeypatch.setattr(training_node, "RESUME_RETRY_S", 0.05)
    with caplog.at_level(logging.INFO, logger="sam2.launch.training_node"):
        used, files = _resumed(_Location(uri, s3_store), tmp_path / "node" / "checkpoints")
    assert used == uri and files == new and fetched == [uri, uri]
    assert "listing them again" in caplog.text


def test_objects_without_a_marker_are_not_resumed_from(tmp_path, s3_store, s3_bucket, caplog):
    """What an interrupted upload of the old code left: checkpoint.pt stored, no marker. Not verified as a
    set, so not used, and the log says so."""
    old, _ = _sets(tmp_path)
    uri = f"s3://{s3_bucket}/runs/r/checkpoints"
    s3_store.upload_file(tmp_path / "old" / "checkpoint.pt", f"{uri}/checkpoint.pt")
    with caplog.at_level(logging.INFO, logger="sam2.launch.training_node"):
        used, files = _resumed(_Location(uri, s3_store), tmp_path / "node" / "checkpoints")
    assert used is None and files == {}
    assert "holds 1 object(s) but no complete checkpoint set" in caplog.text
