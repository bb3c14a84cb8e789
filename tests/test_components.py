"""Components run for real through kfp.local (SubprocessRunner in this venv) on a real S3 server and MLflow."""

import json

import pytest
from kfp import dsl
from kfp.dsl import Dataset, Model, Output

from components.evaluate import evaluate_predictions
from components.extract_frames import extract_frames
from components.infer import infer_videos
from components.merge_predictions import merge_predictions
from components.promote import promote_model
from components.resolve_models import resolve_reference_models
from components.split import split_dataset
from components.validate import validate_dataset
from pipelines.local_run import import_kfp_local
from sam2.data.layout import STATE_DIR


@pytest.fixture()
def kfp_local(tmp_path):
    local = import_kfp_local()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    return local


@dsl.pipeline
def data_steps(bucket: str) -> str:
    extract = extract_frames(
        source_uri="demo:", dataset_name="demo", data_bucket=bucket, demo_videos=4, demo_frames=5
    )
    validate = validate_dataset(
        dataset_name="demo", data_bucket=bucket, dataset_version=extract.outputs["Output"], num_frames=2
    )
    split = split_dataset(
        validated=validate.outputs["validated"], dataset_version=extract.outputs["Output"], val_fraction=0.25
    )
    return split.outputs["Output"]


def test_data_steps_publish_a_versioned_split_data_set(kfp_local, s3_env, s3_store, s3_bucket):
    task = data_steps(bucket=s3_bucket)
    splits_uri = task.output
    assert splits_uri.startswith(f"s3://{s3_bucket}/datasets/demo/") and "/splits/seed0-val0.25" in splits_uri
    data_uri = splits_uri.split("/splits/")[0]
    version = data_uri.rsplit("/", 1)[1]
    manifest = json.loads(s3_store.read_bytes(f"{data_uri}/manifest.json"))
    assert manifest["version"] == version and manifest["num_videos"] == 4
    # the extractor's resume state (.sam2_prep/) stays in the step's work folder, out of the data set
    published = s3_store.list_objects(data_uri)
    assert "JPEGImages/demo_000/00000.jpg" in published
    assert not [key for key in published if key.startswith(STATE_DIR)]
    train = s3_store.read_bytes(f"{splits_uri}/train.txt").decode().split()
    val = s3_store.read_bytes(f"{splits_uri}/val.txt").decode().split()
    assert len(val) == 1 and len(train) == 3 and not set(train) & set(val)
    report = json.loads(s3_store.read_bytes(f"{data_uri}/validation/frames2-exclude/validation_report.json"))
    assert report["num_good"] == 4
    # Same input, same version, same prefix: a second extraction reuses the published data set.
    again = data_steps(bucket=s3_bucket).output
    assert again == splits_uri


@dsl.component(base_image="unused", install_kfp_package=False)
def trained_model_stub(jf: float, run_uri: str, model: Output[Model], comparison: Output[Dataset]):
    """Stands in for train + evaluate: a model artifact with the metadata `train_model` writes and the
    comparison `evaluate_predictions` writes, with the new model scored alone (no champion scored)."""
    import json

    from sam2.contracts import TrainedModel

    trained = TrainedModel(
        uri=f"{run_uri}/checkpoints/checkpoint.pt",
        run_uri=run_uri,
        model_config="configs/sam2.1/sam2.1_hiera_t.yaml",
        dataset_version="v1",
        dataset_uri="s3://data/datasets/demo/v1",
        training_config="configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
        training_overrides="scratch.num_epochs=1",
    )
    model.metadata.update(trained.to_metadata())
    scores = {"label": "new", "checkpoint_uri": trained.uri, "version": None}
    scores |= {"J&F": jf, "J": jf - 1, "F": jf + 1, "per_video": {"v1": jf}}
    with open(comparison.path, "w") as handle:
        json.dump(
            {
                "dataset_version": "v1",
                "videos": ["v1"],
                "models": {"new": scores},
                "skipped": {"champion": "not scored in this test"},
            },
            handle,
        )


@dsl.pipeline
def promote_after(jf: float, run_uri: str, tracking_uri: str) -> str:
    stub = trained_model_stub(jf=jf, run_uri=run_uri)
    promote = promote_model(
        model=stub.outputs["model"],
        comparison=stub.outputs["comparison"],
        dataset_name="demo",
        pipeline_run=run_uri,
        promotion_margin=1.0,
        mlflow_tracking_uri=tracking_uri,
    )
    return promote.outputs["decision"]


def test_promote_component_registers_and_decides_inside_the_step(kfp_local, tmp_path, s3_env, s3_bucket):
    from sam2.promotion.registry import MlflowModelRegistry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = f"s3://{s3_bucket}"
    assert promote_after(jf=50.0, run_uri=f"{runs}/a", tracking_uri=uri).output == "champion"
    assert promote_after(jf=50.5, run_uri=f"{runs}/b", tracking_uri=uri).output == "challenger"
    registry = MlflowModelRegistry(uri)
    assert registry.champion("demo") == ("1", 50.0)
    mv = registry.client.get_model_version("sam2-demo", "2")
    assert mv.source == f"{runs}/b/mlflow_model" and mv.tags["promotion"] == "challenger"
    # The champion was not scored in that run: the registered J&F decided, and the tags say so.
    assert (
        mv.tags["promotion_rule"] == "fallback" and "not scored in this test" in mv.tags["promotion_reason"]
    )


@dsl.component(base_image="unused", install_kfp_package=False)
def tiny_trained_model(run_uri: str, model: Output[Model], random_init: bool = False) -> str:
    """Stands in for train: the tiny model with random weights written by our package, as a trained
    checkpoint at <run>/checkpoints/checkpoint.pt and as the 'given' initial checkpoint (the baseline);
    with `random_init`, as a model trained from random weights (no initial checkpoint, no baseline)."""
    from components.runtime import write_pointer
    from sam2.build_sam import model_configs
    from sam2.contracts import TrainedModel
    from sam2.storage import ObjectStore
    from sam2.training.random_init import random_init_checkpoint

    model_cfg, train_cfg = model_configs("t")
    init = random_init_checkpoint(model_cfg, f"{run_uri}/init/init.pt", seed=0)
    checkpoint = f"{run_uri}/checkpoints/checkpoint.pt"
    store = ObjectStore()
    store.write_bytes(checkpoint, store.read_bytes(init))
    trained = TrainedModel(
        uri=checkpoint,
        run_uri=run_uri,
        model_config=model_cfg,
        training_config=train_cfg,
        training_overrides="scratch.num_epochs=1 scratch.resolution=128",
        init_checkpoint="" if random_init else init,
        random_init=random_init,
        dataset_uri="s3://data/datasets/demo/v1",
        dataset_version="v1",
        train_seconds=1.0,
    )
    model.metadata.update(trained.to_metadata())
    write_pointer(model.path, dict(model.metadata))
    return "" if random_init else init


TINY_INFERENCE = "--device cpu --hydra_overrides ++model.image_size=128"


@dsl.pipeline
def score_and_promote(bucket: str, run_uri: str, tracking_uri: str, random_init: bool = False) -> str:
    extract = extract_frames(
        source_uri="demo:", dataset_name="demo", data_bucket=bucket, demo_videos=3, demo_frames=4
    )
    validate = validate_dataset(
        dataset_name="demo", data_bucket=bucket, dataset_version=extract.outputs["Output"], num_frames=2
    )
    split = split_dataset(
        validated=validate.outputs["validated"], dataset_version=extract.outputs["Output"], val_fraction=0.34
    )
    trained = tiny_trained_model(run_uri=run_uri, random_init=random_init)
    refs = resolve_reference_models(
        dataset_name="demo",
        model_size="t",
        init_checkpoint_uri=trained.outputs["Output"],
        mlflow_tracking_uri=tracking_uri,
    )
    with dsl.ParallelFor([0]) as shard:  # one shard, wired as the pipeline wires any number
        infer = infer_videos(
            model=trained.outputs["model"],
            splits=split.outputs["splits"],
            references=refs.outputs["references"],
            inference_args=TINY_INFERENCE,
            shard_index=shard,
        )
    merge = merge_predictions(
        shards=dsl.Collected(infer.outputs["predictions"]), splits=split.outputs["splits"]
    )
    evaluate = evaluate_predictions(
        predictions=merge.outputs["predictions"],
        splits=split.outputs["splits"],
        model=trained.outputs["model"],
    )
    promote = promote_model(
        model=trained.outputs["model"],
        comparison=evaluate.outputs["comparison"],
        dataset_name="demo",
        pipeline_run=run_uri,
        allow_random_init=True,
        inference_args=TINY_INFERENCE,
        mlflow_tracking_uri=tracking_uri,
    )
    return promote.outputs["comparison"]


@pytest.mark.slow  # two runs of the scoring steps with three tiny models: about 2 min on 2 busy cores
def test_new_champion_and_baseline_are_scored_on_the_same_videos_and_logged(
    kfp_local, tmp_path, s3_env, s3_store, s3_bucket, monkeypatch
):
    from mlflow import MlflowClient

    from sam2.promotion.registry import MlflowModelRegistry

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env["S3_ENDPOINT_URL"])  # run artifacts live in S3

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The first version starts from random weights (allow_random_init): no zero-shot baseline, so the
    # baseline gate does not apply and the first rule makes it champion. Started from these same weights,
    # a version would tie its baseline and the gate would keep it challenger (tests/test_promotion_gate.py).
    first = score_and_promote(
        bucket=s3_bucket, run_uri=f"s3://{s3_bucket}/run-a", tracking_uri=uri, random_init=True
    ).output
    assert "champion not scored: no champion registered yet" in first and "decision by rule first" in first
    second = score_and_promote(bucket=s3_bucket, run_uri=f"s3://{s3_bucket}/run-b", tracking_uri=uri).output
    # The same weights again: the champion scored in this run on the same videos, difference exactly 0.
    assert "new minus champion: +0.00" in second and "decision by rule head-to-head" in second
    comparison = json.loads(s3_store.read_bytes(f"s3://{s3_bucket}/run-b/comparison.json"))
    assert set(comparison["models"]) == {"new", "champion", "baseline"}
    assert comparison["models"]["champion"]["version"] == "1"
    videos = comparison["videos"]
    assert len(videos) == 1 and all(set(m["per_video"]) == set(videos) for m in comparison["models"].values())
    report = s3_store.read_bytes(f"s3://{s3_bucket}/run-b/report.md").decode()
    for key in ("baseline", "champion", "new"):
        assert f"| {key}: " in report

    registry = MlflowModelRegistry(uri)
    assert registry.champion("demo")[0] == "1"
    mv = registry.client.get_model_version("sam2-demo", "2")
    assert mv.tags["promotion"] == "challenger" and mv.tags["promotion_rule"] == "head-to-head"
    assert mv.tags["h2h.champion_version"] == "1" and mv.tags["h2h.dataset_version"]
    assert mv.source == f"s3://{s3_bucket}/run-b/mlflow_model"
    assert mv.tags["checkpoint_uri"] == f"s3://{s3_bucket}/run-b/checkpoints/checkpoint.pt"
    run = MlflowClient(uri).get_run(mv.run_id)
    assert run.data.params["model_size"] == "t" and run.data.params["config.scratch.resolution"] == "128"
    assert {"new_J_and_F", "champion_J_and_F", "baseline_J_and_F"} <= set(run.data.metrics)
    assert run.data.tags["promotion"] == "challenger"
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(mv.run_id)}
    assert {"report", "metrics.json", "comparison.json", "config"} <= artifacts
