"""Each step fetches only what it reads, a node stages its videos once: counted on a real S3 server
(SeaweedFS, tests/s3_server.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from s3_server import store_for
from training_data_synth import make_davis

from sam2.contracts import DataSplits
from sam2.data.manifest import manifest_from_disk
from sam2.data.staging import (
    STAMP_DIR,
    StagingError,
    dataset_dir,
    fetch_val_split,
    selection_bytes,
    stage_videos,
)
from sam2.storage import MARKER_NAME, ObjectStore
from sam2.utils.cpu_threads import _cgroup_cpu_quota, available_cpu_cores

TRAIN = ["t0", "t1", "t2", "t3"]
VAL = ["v0", "v1"]


def publish_dataset(store: ObjectStore, bucket: str, root: Path, name: str = "ds") -> str:
    """A small DAVIS-layout data set with its manifest, published with the train/val lists beside it."""
    make_davis(root, {video: 3 for video in TRAIN + VAL}, num_objects=1, size=(32, 48))
    manifest_from_disk(root)
    uri = f"s3://{bucket}/datasets/{name}/v1"
    store.upload_folder(root, uri)
    lists = root.parent / f"{name}-splits"
    lists.mkdir()
    (lists / "train.txt").write_text("".join(f"{v}\n" for v in TRAIN))
    (lists / "val.txt").write_text("".join(f"{v}\n" for v in VAL))
    store.upload_folder(lists, f"{uri}/splits/s0")
    return uri


def files_of(marker: dict, videos: list[str], parts: tuple[str, ...]) -> dict[str, int]:
    return {
        rel: info["size"]
        for rel, info in marker["files"].items()
        if any(rel.startswith(f"{part}/{video}/") for part in parts for video in videos)
    }


@pytest.fixture
def dataset(s3_store, s3_bucket, tmp_path):
    uri = publish_dataset(s3_store, s3_bucket, tmp_path / "src")
    splits = DataSplits(
        uri=uri,
        dataset_name="demo",
        version=uri.rsplit("/", 1)[1],
        num_videos=len(TRAIN + VAL),
        validation_uri=f"{uri}/validation",
        valid_list_uri=f"{uri}/validation/valid_videos.txt",
        num_good=len(TRAIN + VAL),
        num_bad=0,
        splits_uri=f"{uri}/splits/s0",
        train_list_uri=f"{uri}/splits/s0/train.txt",
        val_list_uri=f"{uri}/splits/s0/val.txt",
        num_train=len(TRAIN),
        num_val=len(VAL),
    )
    return uri, splits


@pytest.mark.parametrize(
    "parts", [("JPEGImages", "Annotations"), ("Annotations",)], ids=["infer", "evaluate"]
)
def test_a_step_asked_for_val_videos_downloads_no_train_video(s3_server, s3_store, dataset, tmp_path, parts):
    uri, splits = dataset
    store = store_for(s3_server)  # a fresh store: its counters hold this step's traffic only
    data, val_list = fetch_val_split(store, splits, tmp_path / "work", parts=parts)
    assert val_list.read_text().split() == VAL
    marker = s3_store.read_marker(uri)
    expected = files_of(marker, VAL, parts)
    on_disk = {
        p.relative_to(data).as_posix()
        for p in data.rglob("*")
        if p.is_file() and not p.relative_to(data).as_posix().startswith((".", STAMP_DIR))
    }
    assert on_disk == {*expected, "manifest.json"}
    counts = store.counters.snapshot()
    # the val files, the manifest, the val list and the marker
    marker_size = len(json.dumps(marker, indent=1, sort_keys=True).encode())
    val_list_size = len(val_list.read_bytes())
    assert counts["objects_downloaded"] == len(expected) + 1 + 1 + 1
    assert counts["bytes_downloaded"] == (
        sum(expected.values()) + marker["files"]["manifest.json"]["size"] + val_list_size + marker_size
    )
    assert counts["bytes_uploaded"] == 0 and counts["objects_uploaded"] == 0
    train_bytes = sum(files_of(marker, TRAIN, ("JPEGImages", "Annotations")).values())
    assert counts["bytes_downloaded"] < train_bytes  # the whole set would be over three times as much

    # A second step on the same folder finds the stamps and downloads no data file again.
    again = store_for(s3_server)
    fetch_val_split(again, splits, tmp_path / "work", parts=parts)
    assert again.counters.snapshot()["objects_downloaded"] == 2  # the val list and the marker


def _stage_as_local_rank(settings, uri, dest, videos, local_rank, barrier, results):
    os.environ["LOCAL_RANK"] = str(local_rank)
    store = ObjectStore(settings, retries=1, backoff_s=0.1, workers=2)
    barrier.wait()  # both start staging at the same moment
    result = stage_videos(store, uri, dest, videos)
    results.put((local_rank, result.fetched, result.reused, store.counters.snapshot()))


def test_two_local_ranks_on_one_node_download_once(s3_server, s3_store, dataset, tmp_path):
    uri, _ = dataset
    dest = tmp_path / "node0" / "data"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_stage_as_local_rank, args=(s3_store.settings, uri, dest, TRAIN, rank, barrier, results)
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    marker = s3_store.read_marker(uri)
    train_files = files_of(marker, TRAIN, ("JPEGImages", "Annotations"))
    data_objects = [counts["objects_downloaded"] for *_, counts in got]
    # one process downloaded every train file (+ manifest + marker), the other only read the marker
    assert sorted(data_objects) == [1, len(train_files) + 2]
    assert sorted((fetched, reused) for _, fetched, reused, _ in got) == [
        (0, 2 * len(TRAIN)),
        (2 * len(TRAIN), 0),
    ]
    total = sum(counts["bytes_downloaded"] for *_, counts in got)
    marker_size = len(json.dumps(marker, indent=1, sort_keys=True).encode())
    assert total == sum(train_files.values()) + marker["files"]["manifest.json"]["size"] + 2 * marker_size
    assert not (dest / "JPEGImages" / VAL[0]).exists()


def test_interrupted_staging_resumes_with_what_is_missing(s3_server, dataset, tmp_path):
    uri, _ = dataset
    dest = tmp_path / "data"
    stage_videos(store_for(s3_server), uri, dest, TRAIN)
    # as if the process died while fetching t1's frames: one frame and the stamp are missing
    (dest / "JPEGImages" / "t1" / "00001.jpg").unlink()
    (dest / STAMP_DIR / "JPEGImages" / "t1").unlink()
    store = store_for(s3_server)
    result = stage_videos(store, uri, dest, TRAIN)
    assert (result.fetched, result.reused) == (1, 2 * len(TRAIN) - 1)
    # marker + the one missing frame; the present frames of t1 are checked, not fetched again
    assert store.counters.snapshot()["objects_downloaded"] == 2
    assert (dest / "JPEGImages" / "t1" / "00001.jpg").is_file()


def test_published_files_that_disagree_with_the_manifest_fail_naming_the_video(s3_store, s3_bucket, tmp_path):
    root = tmp_path / "src"
    make_davis(root, {"good": 2, "bad": 2}, num_objects=1, size=(32, 48))
    manifest_from_disk(root)
    (root / "JPEGImages" / "bad" / "00001.jpg").unlink()  # the manifest still lists two frames
    uri = f"s3://{s3_bucket}/datasets/broken/v1"
    s3_store.upload_folder(root, uri)
    with pytest.raises(StagingError, match=r"JPEGImages/bad \(1 files published\).*re-run extract-frames"):
        stage_videos(s3_store, uri, tmp_path / "dst", ["good", "bad"])
    assert not (tmp_path / "dst" / "JPEGImages").exists()  # nothing fetched before the check
    stage_videos(s3_store, uri, tmp_path / "dst", ["good"])
    with pytest.raises(StagingError, match="not in its manifest.json: nope"):
        stage_videos(s3_store, uri, tmp_path / "dst", ["good", "nope"])


def test_selective_sync_and_counters(s3_store, s3_bucket, tmp_path):
    root = tmp_path / "src"
    for rel in ("a/x/1.bin", "a/x/2.bin", "a/xy/1.bin", "b/1.bin", "top.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode() * 10)
    uri = f"s3://{s3_bucket}/sel"
    store = store_for_settings(s3_store)
    store.upload_folder(root, uri)
    up = store.counters.reset()
    assert up["objects_uploaded"] == 5 + 1  # five files and the marker
    result = store.sync_to_local(uri, tmp_path / "dst", include=["a/x", "top.json", "missing"])
    got = sorted(
        p.relative_to(tmp_path / "dst").as_posix() for p in (tmp_path / "dst").rglob("*") if p.is_file()
    )
    assert got == ["a/x/1.bin", "a/x/2.bin", "top.json"]  # "a/x" is a folder, not a prefix of "a/xy"
    assert result.transferred == 3 and not (tmp_path / "dst" / MARKER_NAME).exists()
    counts = store.counters.snapshot()
    assert counts["objects_downloaded"] == 3 + 1  # and the marker
    assert counts["bytes_downloaded"] - len(store.read_bytes(store.marker_uri(uri))) == sum(
        len(rel.encode() * 10) for rel in ("a/x/1.bin", "a/x/2.bin", "top.json")
    )


def store_for_settings(store: ObjectStore) -> ObjectStore:
    return ObjectStore(store.settings, retries=1, backoff_s=0.1, workers=4)


def test_scratch_size_comes_from_the_marker(s3_store, dataset):
    uri, _ = dataset
    marker = s3_store.read_marker(uri)
    manifest = json.loads(s3_store.read_bytes(f"{uri}/manifest.json"))
    expected = sum(files_of(marker, TRAIN, ("JPEGImages", "Annotations")).values())
    assert selection_bytes(marker, manifest, TRAIN) == expected + marker["files"]["manifest.json"]["size"]


def test_shared_volume_folder_is_per_data_set_version(tmp_path, monkeypatch):
    monkeypatch.delenv("SAM2_SHARED_DATA_DIR", raising=False)
    assert dataset_dir("s3://b/datasets/d/v1", tmp_path / "w") == tmp_path / "w" / "data"
    monkeypatch.setenv("SAM2_SHARED_DATA_DIR", str(tmp_path / "shared"))
    assert dataset_dir("s3://b/datasets/d/v1", tmp_path / "w") == tmp_path / "shared" / "b" / "datasets/d/v1"


def test_cpu_budget_follows_the_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert _cgroup_cpu_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert _cgroup_cpu_quota(v1) == 4.0
    assert 1 <= available_cpu_cores() <= len(os.sched_getaffinity(0))


def test_split_step_reads_annotations_and_manifest_only(s3_env, s3_store, s3_bucket, tmp_path, monkeypatch):
    from kfp import dsl

    from components.split import split_dataset
    from sam2.contracts import ValidatedDataset

    uri = publish_dataset(s3_store, s3_bucket, tmp_path / "src")
    valid = tmp_path / "valid"
    valid.mkdir()
    (valid / "valid_videos.txt").write_text("".join(f"{v}\n" for v in TRAIN + VAL))
    s3_store.upload_folder(valid, f"{uri}/validation/x")
    monkeypatch.setenv("SAM2_SCRATCH", str(tmp_path / "scratch"))
    checked = ValidatedDataset(
        uri=uri,
        dataset_name="demo",
        version="v1",
        num_videos=len(TRAIN + VAL),
        validation_uri=f"{uri}/validation/x",
        valid_list_uri=f"{uri}/validation/x/valid_videos.txt",
        num_good=len(TRAIN + VAL),
        num_bad=0,
    )
    validated = dsl.Dataset(name="validated", uri="unused", metadata=checked.to_metadata())
    splits = dsl.Dataset(name="splits", uri=str(tmp_path / "out" / "splits"))
    split_dataset.python_func(validated=validated, dataset_version="v1", splits=splits, val_fraction=0.34)
    (work,) = (tmp_path / "scratch").glob("sam2-split-*")
    fetched = {p.relative_to(work / "data").parts for p in (work / "data").rglob("*") if p.is_file()}
    assert {parts[0] for parts in fetched} == {"Annotations", "manifest.json"}  # no frame
    assert {parts[1] for parts in fetched if parts[0] == "Annotations"} == set(TRAIN + VAL)
    marker = s3_store.read_marker(uri)
    manifest = json.loads(s3_store.read_bytes(f"{uri}/manifest.json"))
    train = s3_store.read_bytes(splits.metadata["train_list_uri"]).decode().split()
    assert len(train) == 4 and splits.metadata["train_bytes"] == selection_bytes(marker, manifest, train)


@pytest.mark.slow  # ~30 s: a SeaweedFS server and six step processes
def test_data_movement_benchmark_runs_at_a_toy_size(tmp_path):
    """benchmarks/data_movement.py end to end on 5 videos (this tree only; no shard timing): every step
    runs and the storage layer's counters equal the count taken at the S3 client."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "benchmarks/data_movement.py", "--videos", "5", "--frames", "3", "--shards", "",
         "--work", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "evaluate done" in proc.stdout
    assert "ObjectStore counters equal the client-level count in every step (after)." in proc.stdout
