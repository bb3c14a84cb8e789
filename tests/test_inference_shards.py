"""Sharded inference: each shard's share of the val videos, and a merge that accepts only a complete set
(the merge component against a real S3 server, tests/s3_server.py)."""

import json
from pathlib import Path

import pytest
from kfp import dsl

from components.merge_predictions import merge_predictions
from sam2.contracts import DataSplits, ShardPredictions
from sam2.eval.inference_shards import (
    ShardMergeError,
    ShardReport,
    merge_shard_reports,
    plan_shards,
    report_name,
)
from sam2.storage import IncompletePublishError
from sam2.utils.sharding import round_robin_shard as shard_videos

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
    shard = ShardPredictions(
        uri=f"{run_uri}/predictions",
        checkpoint="s3://b/ckpt.pt",
        report_uri=report_uri,
        shard_index=index,
        num_shards=count,
        num_videos=len(videos),
    )
    return shard.to_metadata()


def _splits(data_uri: str, val_list_uri: str, num_val: int) -> DataSplits:
    """A split step's artifact whose val list is `val_list_uri`."""
    return DataSplits(
        uri=data_uri,
        dataset_name="demo",
        version="v1",
        num_videos=num_val,
        validation_uri=f"{data_uri}/validation",
        valid_list_uri=f"{data_uri}/validation/valid_videos.txt",
        num_good=num_val,
        num_bad=0,
        splits_uri=val_list_uri.rsplit("/", 1)[0],
        train_list_uri=val_list_uri.rsplit("/", 1)[0] + "/train.txt",
        val_list_uri=val_list_uri,
        num_train=0,
        num_val=num_val,
    )


def _merge(metas: list[dict], splits_meta: dict, out: Path) -> dsl.Dataset:
    shards = [dsl.Dataset(name="predictions", uri="unused", metadata=m) for m in metas]
    splits = dsl.Dataset(name="splits", uri="unused", metadata=splits_meta)
    predictions = dsl.Dataset(name="predictions", uri=str(out))
    merge_predictions.python_func(shards=shards, splits=splits, predictions=predictions)
    return predictions


def test_merge_component_publishes_every_shards_masks_as_one_folder(s3_env, s3_store, s3_bucket, tmp_path):
    run_uri = f"s3://{s3_bucket}/runs/r1"
    s3_store.write_bytes(f"{run_uri}/val.txt", "".join(f"{v}\n" for v in VAL).encode())
    splits_meta = _splits(run_uri, f"{run_uri}/val.txt", len(VAL)).to_metadata()
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
        _merge(
            metas,
            _splits(run_uri, f"{run_uri}/val.txt", len(VAL)).to_metadata(),
            tmp_path / "out" / "predictions",
        )
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


# ---- the DAG: a ParallelFor over the planned shards, merged before evaluation --------------------


def _compiled_docs(path=None):
    import yaml

    from pipelines.compile import COMPILED

    return list(yaml.safe_load_all(Path(path or COMPILED).read_text()))


def test_compiled_pipeline_runs_infer_as_a_parallel_for_merged_before_evaluate():
    spec = _compiled_docs()[0]
    tasks = spec["root"]["dag"]["tasks"]
    (loop_name,) = [name for name, task in tasks.items() if "parameterIterator" in task]
    loop = tasks[loop_name]
    items = loop["parameterIterator"]["items"]["inputParameter"]
    assert loop["inputs"]["parameters"][items]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "plan-infer-shards",
    }
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    infer = body["infer-videos"]["inputs"]["parameters"]
    assert infer["shard_index"]["componentInputParameter"] == loop["parameterIterator"]["itemInput"]
    count = loop["inputs"]["parameters"][infer["num_shards"]["componentInputParameter"]]
    assert count == {"componentInputParameter": "infer_shards"}  # each shard clamps it as the plan does
    merge = tasks["merge-predictions"]["inputs"]["artifacts"]["shards"]
    assert merge["taskOutputArtifact"]["producerTask"] == loop_name
    evaluate = tasks["evaluate-predictions"]["inputs"]["artifacts"]["predictions"]
    assert evaluate["taskOutputArtifact"] == {
        "outputArtifactKey": "predictions",
        "producerTask": "merge-predictions",
    }
    assert spec["root"]["inputDefinitions"]["parameters"]["infer_shards"]["defaultValue"] == 1
    limits = spec["deploymentSpec"]["executors"]["exec-evaluate-predictions"]["container"]["resources"]
    assert limits["cpuLimit"] == limits["cpuRequest"] == 4  # the quota evaluate sizes its pool from


def test_shared_data_claim_is_mounted_into_the_data_reading_steps_when_compiled_with_one(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "shared.yaml"
    env = {**__import__("os").environ, "SAM2_SHARED_DATA_PVC": "sam2-shared-data"}
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--output", str(out)], check=True, env=env)
    spec, platform = _compiled_docs(out)[0], _compiled_docs(out)[1]["platforms"]["kubernetes"]
    executors = platform["deploymentSpec"]["executors"]
    for name in ("validate-dataset", "split-dataset", "infer-videos", "evaluate-predictions"):
        mounts = executors[f"exec-{name}"]["pvcMount"]
        assert [(m["constant"], m["mountPath"]) for m in mounts] == [("sam2-shared-data", "/shared-data")], (
            name
        )
        env_vars = spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]["env"]
        assert {"name": "SAM2_SHARED_DATA_DIR", "value": "/shared-data"} in env_vars, name
    assert "pvcMount" not in executors["exec-train-model"]
    # the committed pipeline mounts nothing
    committed = _compiled_docs()[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert not [name for name, executor in committed.items() if "pvcMount" in executor]


# ---- kfp.local: the sharded part of the DAG, for real ----------------------------------------


@dsl.component(base_image="unused", install_kfp_package=False)
def _given_inputs(
    data_uri: str, checkpoint_uri: str, run_uri: str, splits: dsl.Output[dsl.Dataset], model: dsl.Output[dsl.Model],
    references: dsl.Output[dsl.Dataset],
):  # fmt: skip
    """Stands in for split, train and resolve-reference-models: their artifacts' metadata."""
    from sam2.contracts import DataSplits, ReferenceModels, TrainedModel

    split = DataSplits(
        uri=data_uri, dataset_name="demo", version="v1", num_videos=2, validation_uri=f"{data_uri}/validation",
        valid_list_uri=f"{data_uri}/validation/valid_videos.txt", num_good=2, num_bad=0,
        splits_uri=f"{data_uri}/splits/s0", train_list_uri=f"{data_uri}/splits/s0/train.txt",
        val_list_uri=f"{data_uri}/splits/s0/val.txt", num_train=0, num_val=2,
    )  # fmt: skip
    splits.metadata.update(split.to_metadata())
    trained = TrainedModel(
        uri=checkpoint_uri, run_uri=run_uri, model_config="configs/sam2.1/sam2.1_hiera_t.yaml"
    )
    model.metadata.update(trained.to_metadata())
    references.metadata.update(ReferenceModels(skipped={"baseline": "not in this test"}).to_metadata())


@dsl.pipeline
def _sharded_inference(data_uri: str, checkpoint_uri: str, run_uri: str, infer_shards: int) -> float:
    from components.evaluate import evaluate_predictions
    from components.infer import infer_videos
    from components.plan_infer_shards import plan_infer_shards

    given = _given_inputs(data_uri=data_uri, checkpoint_uri=checkpoint_uri, run_uri=run_uri)
    shards = plan_infer_shards(splits=given.outputs["splits"], infer_shards=infer_shards)
    with dsl.ParallelFor(shards.output) as index:
        infer = infer_videos(
            model=given.outputs["model"],
            splits=given.outputs["splits"],
            references=given.outputs["references"],
            inference_args="--device cpu --hydra_overrides ++model.image_size=128",
            shard_index=index,
            num_shards=infer_shards,
        )
    merge = merge_predictions(
        shards=dsl.Collected(infer.outputs["predictions"]), splits=given.outputs["splits"]
    )
    evaluate = evaluate_predictions(
        predictions=merge.outputs["predictions"], splits=given.outputs["splits"], model=given.outputs["model"]
    )
    return evaluate.outputs["Output"]


@pytest.mark.slow  # ~1-2 min on 2 cores: two inference shards with the tiny model, then evaluation
def test_two_inference_shards_run_through_kfp_local_and_are_merged_for_evaluation(
    s3_env, s3_store, s3_bucket, tmp_path, monkeypatch
):
    import torch
    from test_data_movement import VAL, publish_dataset

    from pipelines.local_run import import_kfp_local
    from sam2.build_sam import build_sam2

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("SAM2_SCRATCH", str(tmp_path / "scratch"))
    data_uri = publish_dataset(s3_store, s3_bucket, tmp_path / "src")
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    torch.save(
        {"model": build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu").state_dict()}, ckpt
    )
    checkpoint_uri = f"s3://{s3_bucket}/models/tiny.pt"
    s3_store.upload_file(ckpt, checkpoint_uri)
    run_uri = f"s3://{s3_bucket}/runs/sharded"
    local = import_kfp_local()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    jf = _sharded_inference(
        data_uri=data_uri, checkpoint_uri=checkpoint_uri, run_uri=run_uri, infer_shards=2
    ).output
    assert 0.0 <= jf <= 100.0
    reports = sorted(s3_store.list_objects(f"{run_uri}/predictions/_shards"))
    assert reports == [report_name(0, 2), report_name(1, 2)]
    shard_videos_seen = [
        json.loads(s3_store.read_bytes(f"{run_uri}/predictions/_shards/{r}"))["videos"] for r in reports
    ]
    assert shard_videos_seen == [[VAL[0]], [VAL[1]]]
    merged = s3_store.read_marker(f"{run_uri}/predictions/new")["files"]
    assert {rel.split("/")[0] for rel in merged if not rel.startswith(".")} == set(
        VAL
    )  # (and the tool's notes)
    metrics = json.loads(s3_store.read_bytes(f"{run_uri}/metrics.json"))
    assert sorted(metrics["per_video"]) == VAL and metrics["J&F"] == pytest.approx(jf, abs=1e-3)
