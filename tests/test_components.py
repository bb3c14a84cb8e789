"""Components run for real through kfp.local (SubprocessRunner in this venv) on a real S3 server and MLflow."""

import json

import pytest
from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components.extract_frames import extract_frames
from components.promote import promote_model
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
def trained_model_stub(jf: float, run_uri: str, model: Output[Model], metrics: Output[Metrics]):
    """Stands in for train + evaluate: a model artifact with the metadata `train_model` writes."""
    model.metadata.update(
        {
            "uri": f"{run_uri}/checkpoints/checkpoint.pt",
            "run_uri": run_uri,
            "dataset_version": "v1",
            "dataset_uri": "s3://data/datasets/demo/v1",
            "training_config": "configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
            "training_overrides": "scratch.num_epochs=1",
            "init": "given",
        }
    )
    for key, value in (("J&F", jf), ("J", jf - 1), ("F", jf + 1)):
        metrics.log_metric(key, value)


@dsl.pipeline
def promote_after(jf: float, run_uri: str, tracking_uri: str) -> str:
    stub = trained_model_stub(jf=jf, run_uri=run_uri)
    promote = promote_model(
        model=stub.outputs["model"],
        metrics=stub.outputs["metrics"],
        dataset_name="demo",
        pipeline_run=run_uri,
        promotion_margin=1.0,
        mlflow_tracking_uri=tracking_uri,
    )
    return promote.outputs["decision"]


def test_promote_component_registers_and_decides_inside_the_step(kfp_local, tmp_path):
    from sam2.registry import MlflowModelRegistry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert promote_after(jf=50.0, run_uri="s3://runs/a", tracking_uri=uri).output == "champion"
    assert promote_after(jf=50.5, run_uri="s3://runs/b", tracking_uri=uri).output == "challenger"
    registry = MlflowModelRegistry(uri)
    assert registry.champion("demo") == ("1", 50.0)
    mv = registry.client.get_model_version("sam2-demo", "2")
    assert mv.source == "s3://runs/b/checkpoints/checkpoint.pt" and mv.tags["promotion"] == "challenger"
