"""Sharded inference: each shard's share of the val videos, and a merge that accepts only a complete set
(the merge component against a real S3 server, tests/s3_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp import dsl

from components.merge_predictions import merge_predictions
from sam2.eval.inference_shards import (
    ShardMergeError,
    ShardReport,
    merge_shard_reports,
    plan_shards,
    report_name,
    shard_videos,
)
from sam2.storage import IncompletePublishError

VAL = [f"v{i}" for i in range(5)]
NEW_ENTRY = {"key": "new", "label": "new", "checkpoint_uri": "s3://b/ckpt.pt", "model_config": "cfg.yaml"}


def listing(videos, frames=("00000.png", "00001.png")):
    return {f"{v}/{f}": {"size": 10, "sha256": "0" * 64} for v in videos for f in frames}


def report(index, count, videos, skipped=None):
    return ShardReport(
        index, count, videos, {"new": {"entry": NEW_ENTRY, "files": listing(videos)}}, skipped or {}
    )


def test_shards_split_the_sorted_videos_round_robin_without_overlap():
    shards = [shard_videos(list(reversed(VAL)), i, 2) for i in range(2)]
    assert shards == [["v0", "v2", "v4"], ["v1", "v3"]]
    assert plan_shards(4, 2) == 2 and plan_shards(1, 100) == 1 and plan_shards(3, 0) == 1
    with pytest.raises(ValueError, match="infer_shards must be >= 1"):
        plan_shards(0, 5)


def test_a_complete_shard_set_merges_into_one_listing_per_model():
    reports = [report(i, 2, shard_videos(VAL, i, 2)) for i in range(2)]
    merged = merge_shard_reports(VAL, reports)
    assert merged.listings["new"] == listing(VAL) and merged.entries["new"] == NEW_ENTRY
    assert merged.skipped == {}


def test_a_shard_set_that_lost_a_video_fails_naming_it():
    reports = [report(0, 2, ["v0", "v2", "v4"]), report(1, 2, ["v1"])]  # v3 lost
    with pytest.raises(ShardMergeError, match=r"1 val video\(s\) predicted by no shard: v3$"):
        merge_shard_reports(VAL, reports)


@pytest.mark.parametrize(
    ("reports", "message"),
    [
        (
            [report(0, 2, ["v0", "v2", "v4"])],
            r"shard\(s\) 1 of 2 did not report.*predicted by no shard: v1, v3",
        ),
        (
            [report(0, 2, ["v0", "v1", "v2", "v4"]), report(1, 2, ["v1", "v3"])],
            r"predicted more than once: v1 \(shards 0, 1\)",
        ),
        ([report(0, 1, [*VAL, "train7"])], r"not in the val list: train7"),
        ([report(0, 2, ["v0", "v2", "v4"]), report(0, 2, ["v1", "v3"])], r"shard\(s\) 1 of 2 did not report"),
        ([report(0, 2, VAL[:3]), report(1, 3, VAL[3:])], r"disagree on how many there are: \[2, 3\]"),
    ],
    ids=["missing shard", "duplicate video", "extra video", "repeated shard", "mixed counts"],
)
def test_an_incomplete_or_overlapping_shard_set_fails_naming_what_is_wrong(reports, message):
    with pytest.raises(ShardMergeError, match=message):
        merge_shard_reports(VAL, reports)


def test_a_video_a_shard_claims_but_wrote_no_masks_for_fails():
    bad = report(1, 2, ["v1", "v3"])
    bad.models["new"]["files"] = listing(["v1"])
    with pytest.raises(ShardMergeError, match=r"shard 1 lists video\(s\) it wrote no masks for: v3"):
        merge_shard_reports(VAL, [report(0, 2, ["v0", "v2", "v4"]), bad])


def test_a_reference_model_skipped_in_one_shard_is_skipped_overall():
    champion = {"key": "champion", "label": "champion", "checkpoint_uri": "s3://b/c.pt", "model_config": "c"}
    first = report(0, 2, ["v0", "v2", "v4"])
    first.models["champion"] = {"entry": champion, "files": listing(["v0", "v2", "v4"])}
    second = report(1, 2, ["v1", "v3"], skipped={"champion": "inference failed with exit status 1"})
    merged = merge_shard_reports(VAL, [first, second])
    assert set(merged.listings) == {"new"}
    assert merged.skipped == {"champion": "shard 1 of 2: inference failed with exit status 1"}


# ---- the merge component on a real S3 server ------------------------------------------------


def _write_shard(store, tmp_path: Path, run_uri: str, index: int, count: int, videos: list[str]) -> dict:
    """What one infer shard leaves behind: its masks under predictions/new/ (unpublished) and its report."""
    local = tmp_path / f"shard{index}" / "new"
    for video in videos:
        (local / video).mkdir(parents=True)
        for frame in ("00000.png", "00001.png"):
            (local / video / frame).write_bytes(f"{video}/{frame}".encode())
    files = store.upload_files(local, f"{run_uri}/predictions/new")
    rep = ShardReport(index, count, videos, {"new": {"entry": NEW_ENTRY, "files": files}})
    report_uri = f"{run_uri}/predictions/_shards/{report_name(index, count)}"
    store.write_bytes(report_uri, json.dumps(rep.to_dict()).encode())
    return {"uri": f"{run_uri}/predictions", "report_uri": report_uri, "checkpoint": "s3://b/ckpt.pt"}


def _merge(metas: list[dict], splits_meta: dict, out: Path) -> dsl.Dataset:
    shards = [dsl.Dataset(name="predictions", uri="unused", metadata=m) for m in metas]
    splits = dsl.Dataset(name="splits", uri="unused", metadata=splits_meta)
    predictions = dsl.Dataset(name="predictions", uri=str(out))
    merge_predictions.python_func(shards=shards, splits=splits, predictions=predictions)
    return predictions


def test_merge_component_publishes_every_shards_masks_as_one_folder(s3_env, s3_store, s3_bucket, tmp_path):
    run_uri = f"s3://{s3_bucket}/runs/r1"
    s3_store.write_bytes(f"{run_uri}/val.txt", "".join(f"{v}\n" for v in VAL).encode())
    splits_meta = {"val_list_uri": f"{run_uri}/val.txt"}
    metas = [_write_shard(s3_store, tmp_path, run_uri, i, 2, shard_videos(VAL, i, 2)) for i in range(2)]
    with pytest.raises(IncompletePublishError):  # the shards alone publish nothing
        s3_store.read_marker(f"{run_uri}/predictions/new")
    predictions = _merge(metas, splits_meta, tmp_path / "out" / "predictions")
    assert predictions.metadata["models"] == [{**NEW_ENTRY, "uri": f"{run_uri}/predictions/new"}]
    assert predictions.metadata["num_shards"] == 2 and predictions.metadata["skipped"] == {}
    got = tmp_path / "merged"
    s3_store.sync_to_local(f"{run_uri}/predictions/new", got)
    assert sorted(p.parent.name for p in got.rglob("00001.png")) == VAL
    assert (got / "v3" / "00001.png").read_bytes() == b"v3/00001.png"


def test_merge_component_fails_naming_the_lost_video_and_publishes_nothing(
    s3_env, s3_store, s3_bucket, tmp_path
):
    run_uri = f"s3://{s3_bucket}/runs/r2"
    s3_store.write_bytes(f"{run_uri}/val.txt", "".join(f"{v}\n" for v in VAL).encode())
    metas = [
        _write_shard(s3_store, tmp_path, run_uri, 0, 2, ["v0", "v2", "v4"]),
        _write_shard(s3_store, tmp_path, run_uri, 1, 2, ["v1"]),  # lost v3
    ]
    with pytest.raises(ShardMergeError, match="predicted by no shard: v3"):
        _merge(metas, {"val_list_uri": f"{run_uri}/val.txt"}, tmp_path / "out" / "predictions")
    assert not s3_store.is_published(f"{run_uri}/predictions/new")


def test_publishing_a_listing_checks_the_files_are_stored(s3_store, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/runs/r3/predictions/new"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    files = s3_store.upload_files(tmp_path, uri)
    with pytest.raises(IncompletePublishError, match="a/y.png"):
        s3_store.publish_listing(uri, {**files, "a/y.png": {"size": 1, "sha256": "0" * 64}})
    s3_store.publish_listing(uri, files)
    assert s3_store.read_marker(uri)["files"] == files
