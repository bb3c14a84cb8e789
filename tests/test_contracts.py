"""The artifact contracts between pipeline steps (sam2.contracts): what a producer writes, a consumer reads
back with its types, and a mismatch fails naming the artifact and the key."""

import json

import pytest
from google.protobuf import json_format, struct_pb2

from sam2.contracts import (
    CONTRACT_VERSION_KEY,
    RANDOM_INIT_NOTE,
    ContractError,
    DataSplits,
    Predictions,
    ReferenceModels,
    ShardPredictions,
    TrainedModel,
    ValidatedDataset,
)
from sam2.promotion.comparison import BASELINE, ComparedModel

VALIDATED = ValidatedDataset(
    uri="s3://data/datasets/demo/v1",
    dataset_name="demo",
    version="v1",
    num_videos=4,
    validation_uri="s3://data/datasets/demo/v1/validation/frames8-exclude",
    valid_list_uri="s3://data/datasets/demo/v1/validation/frames8-exclude/valid_videos.txt",
    num_good=4,
    num_bad=0,
)


def _through_kfp(metadata: dict) -> dict:
    """The metadata as the next step sees it: KFP carries it as a protobuf Struct (numbers become floats)."""
    struct = struct_pb2.Struct()
    struct.update(json.loads(json.dumps(metadata)))
    return json_format.MessageToDict(struct)


def test_splits_round_trip_through_a_protobuf_struct_with_their_types():
    splits = DataSplits.of(
        VALIDATED,
        splits_uri=f"{VALIDATED.uri}/splits/seed0-val0.25",
        train_list_uri=f"{VALIDATED.uri}/splits/seed0-val0.25/train.txt",
        val_list_uri=f"{VALIDATED.uri}/splits/seed0-val0.25/val.txt",
        num_train=3,
        num_val=1,
        train_bytes=123456,
    )
    seen = _through_kfp(splits.to_metadata())
    assert isinstance(seen["num_val"], float)  # what a consumer used to have to int() itself
    back = DataSplits.from_metadata(seen)
    assert back == splits and isinstance(back.num_val, int) and isinstance(back.train_bytes, int)
    assert back.contract_version == 1 and seen[CONTRACT_VERSION_KEY] == 1


def test_trained_model_says_random_init_as_a_flag_and_keeps_launcher_details():
    model = TrainedModel(
        uri="s3://runs/r1/checkpoints/checkpoint.pt",
        run_uri="s3://runs/r1",
        model_config="configs/sam2.1/sam2.1_hiera_b+.yaml",
        random_init=True,
        train_seconds=12.5,
        launcher={"job_name": "sam2-r1", "replicas": 2},
    )
    meta = model.to_metadata()
    assert meta["random_init"] is True and "init" not in meta
    assert meta["launcher_job_name"] == "sam2-r1" and "launcher" not in meta
    back = TrainedModel.from_metadata(_through_kfp(meta))
    assert back.random_init is True and back.launcher == {"job_name": "sam2-r1", "replicas": 2.0}
    assert back.init_note == RANDOM_INIT_NOTE and back.model_size == "b+"
    given = TrainedModel(uri="u", run_uri="r", model_config="configs/sam2.1/sam2.1_hiera_t.yaml")
    assert given.init_note == "given" and given.model_size == "t"


def test_a_model_artifact_written_before_the_flag_reads_its_init_text():
    old = {"uri": "u", "run_uri": "r", "model_config": "c", "init": "RANDOM WEIGHTS (...)"}
    assert TrainedModel.from_metadata(old).random_init is True
    assert TrainedModel.from_metadata({**old, "init": "given"}).random_init is False


def test_references_carry_typed_models():
    refs = ReferenceModels(
        models=[ComparedModel(BASELINE, "s3://m/init.pt", "configs/sam2.1/sam2.1_hiera_t.yaml", "baseline")],
        skipped={"champion": "no champion registered yet"},
    )
    back = ReferenceModels.from_metadata(_through_kfp(refs.to_metadata()))
    assert back == refs and isinstance(back.models[0], ComparedModel)


def test_a_missing_key_names_the_artifact_and_the_key():
    meta = VALIDATED.to_metadata()
    del meta["valid_list_uri"]
    with pytest.raises(ContractError, match=r"validated \(validate_dataset\).*'valid_list_uri'"):
        ValidatedDataset.from_metadata(meta)
    with pytest.raises(ContractError, match=r"splits \(split_dataset\).*'splits_uri'"):
        DataSplits.from_metadata(VALIDATED.to_metadata())


def test_a_wrong_type_and_a_newer_contract_are_refused():
    with pytest.raises(ContractError, match=r"'num_good' is 2\.5"):
        ValidatedDataset.from_metadata({**VALIDATED.to_metadata(), "num_good": 2.5})
    with pytest.raises(ContractError, match="contract version 2"):
        ValidatedDataset.from_metadata({**VALIDATED.to_metadata(), CONTRACT_VERSION_KEY: 2})


def test_metadata_without_a_version_reads_as_version_one_and_unknown_keys_are_ignored():
    meta = {k: v for k, v in VALIDATED.to_metadata().items() if k != CONTRACT_VERSION_KEY}
    assert ValidatedDataset.from_metadata({**meta, "dataset_version": "v1"}) == VALIDATED


def test_predictions_entries_by_model_key():
    shard = ShardPredictions(
        uri="s3://runs/r1/predictions",
        checkpoint="s3://runs/r1/checkpoints/checkpoint.pt",
        report_uri="s3://runs/r1/predictions/_shards/0000-of-0001.json",
        shard_index=0,
        num_shards=1,
        num_videos=2,
    )
    assert ShardPredictions.from_metadata(_through_kfp(shard.to_metadata())) == shard
    entry = {"key": "new", "checkpoint_uri": shard.checkpoint, "uri": f"{shard.uri}/new", "label": "new"}
    merged = Predictions(
        uri=shard.uri, checkpoint=shard.checkpoint, models=[entry], num_shards=1, num_videos=2
    )
    assert Predictions.from_metadata(_through_kfp(merged.to_metadata())).entries() == {"new": entry}
