"""The pipeline definition: the committed YAML is current and loads, parameters are documented, presets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import sam2_finetune as pipeline_module
from pipelines.compile import COMPILED, compile_pipeline
from pipelines.presets import PresetError, load_preset

ROOT = Path(__file__).resolve().parents[1]


def test_compiled_pipeline_is_current(tmp_path, monkeypatch):
    monkeypatch.delenv("SAM2_PIPELINE_IMAGE", raising=False)
    fresh = compile_pipeline(tmp_path / "fresh.yaml")
    committed = list(yaml.safe_load_all(COMPILED.read_text()))
    assert list(yaml.safe_load_all(fresh.read_text())) == committed, (
        "pipelines/sam2_finetune.yaml is stale: run `make pipeline-compile` and commit it"
    )


def test_compiled_pipeline_loads_with_kfp_and_has_every_step():
    from kfp import components

    loaded = components.load_component_from_file(str(COMPILED))
    assert loaded.name == "sam2-finetune"
    spec = yaml.safe_load(COMPILED.read_text().split("\n---\n")[0])
    tasks = set(spec["root"]["dag"]["tasks"])
    assert tasks == {
        "extract-frames",
        "validate-dataset",
        "split-dataset",
        "train-model",
        "resolve-reference-models",
        "plan-infer-shards",
        "for-loop-1",  # the ParallelFor of infer-videos over the shards
        "merge-predictions",
        "evaluate-predictions",
        "score-regression-set",
        "promote-model",
        "condition-2",  # dsl.If(deploy): deploy-model
    }
    deploy = spec["root"]["dag"]["tasks"]["condition-2"]
    assert "pipelinechannel--deploy" in deploy["triggerPolicy"]["condition"]
    assert set(spec["components"]["comp-condition-2"]["dag"]["tasks"]) == {"deploy-model"}
    assert set(spec["root"]["outputDefinitions"]["parameters"]) == {
        "decision",
        "model_version",
        "jf",
        "run_uri",
        "dataset_uri",
        "comparison",
    }


def test_compiled_pipeline_wires_secrets_resources_and_caching():
    docs = list(yaml.safe_load_all(COMPILED.read_text()))
    spec, platform = docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, executor in platform.items():
        secret_envs = [s for s in executor.get("secretAsEnv", [])]
        keys = {k["envVar"] for s in secret_envs for k in s["keyToEnv"]}
        if name == "exec-deploy-model":  # talks to the Kubernetes API only: no object storage, no Secret
            assert not secret_envs, name
            continue
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys, name
    text = COMPILED.read_text()
    assert "AWS_SECRET_ACCESS_KEY=" not in text and "minioadmin" not in text
    tasks = spec["root"]["dag"]["tasks"]
    # Extract is keyed on where the data is, not what it is (new files at the same s3:// URI): never cached.
    # It hashes the content into the data set version, which keys the cached steps after it.
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"validate-dataset", "split-dataset"}
    # The data set version flows into the cached data steps and training: it is part of their cache key.
    for task in ("validate-dataset", "split-dataset", "train-model"):
        version = tasks[task]["inputs"]["parameters"]["dataset_version"]
        assert version["taskOutputParameter"]["producerTask"] == "extract-frames"
    infer = spec["deploymentSpec"]["executors"]["exec-infer-videos"]["container"]["resources"]
    assert infer["accelerator"]["resourceCount"] == "1"
    # The PyTorchJob's pods read the same Secret the pipeline's own steps do.
    secret = tasks["train-model"]["inputs"]["parameters"]["s3_secret_name"]
    assert secret["componentInputParameter"] == "s3_secret_name"


def test_the_training_job_reads_the_secret_the_pipeline_was_given():
    from components.training_setup import cluster_settings
    from sam2.launch.kubeflow import PyTorchJobLauncher
    from sam2.launch.launcher import TrainingRequest

    settings = cluster_settings("team-ns", "img:1", "http://s3:9000", 1.0, "never", "team-s3")
    launcher = PyTorchJobLauncher(settings, custom_api=object(), core_api=object())
    job = launcher.render(TrainingRequest("r1", "cfg.yaml", "s3://d/v1", "s3://runs/r1"))
    assert job["metadata"]["namespace"] == "team-ns"
    env = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
    assert refs["AWS_ACCESS_KEY_ID"] == refs["AWS_SECRET_ACCESS_KEY"] == "team-s3"


def _train_image_input(spec: dict) -> str:
    return spec["root"]["dag"]["tasks"]["train-model"]["inputs"]["parameters"]["image"]["runtimeValue"][
        "constant"
    ]


def test_the_training_job_runs_the_image_the_pipeline_was_compiled_with(tmp_path):
    """SAM2_PIPELINE_IMAGE is read at compile time; in the train step's pod it is unset, so the image must
    reach the PyTorchJob as a compiled-in input, not through component_image() there."""
    from components.images import DEFAULT_IMAGE, IMAGE_ENV
    from components.training_setup import cluster_settings
    from sam2.launch.kubeflow import PyTorchJobLauncher
    from sam2.launch.launcher import TrainingRequest

    out = tmp_path / "custom.yaml"
    env = {k: v for k, v in os.environ.items() if k != IMAGE_ENV} | {IMAGE_ENV: "registry.example/sam2:dev"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.compile", "--output", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    spec = yaml.safe_load(out.read_text().split("\n---\n")[0])
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/sam2:dev"}
    image = _train_image_input(spec)
    assert image == "registry.example/sam2:dev"
    committed = yaml.safe_load(COMPILED.read_text().split("\n---\n")[0])
    assert _train_image_input(committed) == DEFAULT_IMAGE
    # What the train step then does with it (in its pod, where SAM2_PIPELINE_IMAGE is not set).
    settings = cluster_settings("team-ns", image, "", 1.0, "never", "team-s3")
    job = PyTorchJobLauncher(settings, custom_api=object(), core_api=object()).render(
        TrainingRequest("r1", "cfg.yaml", "s3://d/v1", "s3://runs/r1", num_nodes=2)
    )
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["containers"][0]["image"] == "registry.example/sam2:dev"


def test_component_image_is_overridable(monkeypatch):
    from components.images import DEFAULT_IMAGE, component_image

    monkeypatch.delenv("SAM2_PIPELINE_IMAGE", raising=False)
    assert component_image() == DEFAULT_IMAGE
    monkeypatch.setenv("SAM2_PIPELINE_IMAGE", "registry.example/sam2:dev")
    assert component_image() == "registry.example/sam2:dev"


def test_every_pipeline_parameter_is_documented():
    import inspect

    import docstring_parser

    # Documented in the pipeline function's Args: (kfp turns them into the compiled inputs' descriptions).
    func = pipeline_module.sam2_finetune.pipeline_func
    documented = {p.arg_name: p.description for p in docstring_parser.parse(func.__doc__).params}
    for name in inspect.signature(func).parameters:
        assert (documented.get(name) or "").strip(), (
            f"pipeline parameter {name!r} is not documented in pipelines/sam2_finetune.py"
        )


def test_demo_preset_is_small_and_self_contained():
    args = load_preset("demo", environ={})
    assert args["source_uri"] == "demo:" and args["dataset_name"] == "demo"
    assert args["model_size"] == "t" and args["epochs"] == 1 and args["gpus_per_node"] == 0
    assert "scratch.resolution=128" in args["training_overrides"]
    accepted = set(pipeline_module.sam2_finetune.component_spec.inputs)
    assert set(args) <= accepted, set(args) - accepted


def test_demo_training_overrides_reach_the_training_config():
    """The demo trains from random weights: its overrides (some address list entries of the recipe's
    transforms) must land where meant, or the demo silently trains with the fine-tuning recipe."""
    from sam2.build_sam import model_configs
    from sam2.training.train import compose_training_config

    args = load_preset("demo", environ={})
    cfg = compose_training_config(model_configs(args["model_size"])[1], args["training_overrides"].split())
    assert cfg.scratch.num_frames == args["validate_num_frames"] >= 2
    assert cfg.scratch.base_lr >= 1e-4 and cfg.scratch.vision_lr >= 1e-4  # from scratch, not 5e-6
    affine = cfg.vos.train_transforms[0].transforms[1]
    assert affine._target_.endswith("RandomAffine") and affine.degrees == 0 and affine.shear == 0
    assert cfg.model.image_encoder.trunk.drop_path_rate == 0.0


def test_mose_preset_needs_its_data(tmp_path):
    with pytest.raises(PresetError, match="MOSE_ROOT"):
        load_preset("mose", environ={})
    with pytest.raises(PresetError, match="does not exist"):
        load_preset("mose", environ={"MOSE_ROOT": str(tmp_path / "nope")})
    # Something that exists but that extraction cannot read as MOSE fails here, naming what is missing.
    with pytest.raises(PresetError, match="holds no JPEGImages/ folder.*set MOSE_ROOT to"):
        load_preset("mose", environ={"MOSE_ROOT": str(tmp_path)})
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PresetError, match=r"notes.txt is a file but not an archive \(\.tar"):
        load_preset("mose", environ={"MOSE_ROOT": str(tmp_path / "notes.txt")})
    train = tmp_path / "MOSE" / "train"
    (train / "JPEGImages" / "v0").mkdir(parents=True)
    with pytest.raises(PresetError, match="no Annotations/ next to it"):
        load_preset("mose", environ={"MOSE_ROOT": str(tmp_path)})
    (train / "Annotations" / "v0").mkdir(parents=True)
    args = load_preset(
        "mose", environ={"MOSE_ROOT": str(tmp_path), "SAM2_INIT_CHECKPOINT_URI": "s3://m/b.pt"}
    )
    assert args["source_uri"] == str(tmp_path) and args["init_checkpoint_uri"] == "s3://m/b.pt"
    (tmp_path / "train.tar.gz").write_bytes(b"")
    assert load_preset("mose", environ={"MOSE_ROOT": str(tmp_path / "train.tar.gz")})["source_uri"] == str(
        tmp_path / "train.tar.gz"
    )
    assert (
        load_preset("mose", environ={"MOSE_ROOT": "s3://data/mose.tar"})["source_uri"] == "s3://data/mose.tar"
    )


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(PresetError, match="demo, mose"):
        load_preset("davis", environ={})


@pytest.mark.parametrize("mose_root", [None, "empty-folder"])
def test_pipeline_run_for_mose_without_data_fails_at_once_with_instructions(tmp_path, mose_root):
    env = {k: v for k, v in os.environ.items() if k not in ("MOSE_ROOT", "KFP_HOST")}
    if mose_root:
        (tmp_path / mose_root).mkdir()
        env["MOSE_ROOT"] = str(tmp_path / mose_root)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.run", "run", "--dataset", "mose"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "MOSE_ROOT" in proc.stderr and "JPEGImages" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".local").exists()


def test_submit_and_schedule_need_a_host_and_a_six_field_cron(tmp_path):
    from pipelines.cluster import check_cron

    env = {k: v for k, v in os.environ.items() if k != "KFP_HOST"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.run", "submit", "--dataset", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "KFP_HOST" in proc.stderr
    with pytest.raises(ValueError, match="six fields"):
        check_cron("0 3 * * 0")
    assert check_cron("0 0 3 * * 0") == "0 0 3 * * 0"


def test_makefile_has_the_pipeline_targets():
    text = (ROOT / "Makefile").read_text()
    for target in ("pipeline-compile:", "pipeline-run:", "pipeline-submit:", "pipeline-schedule:"):
        assert target in text


def test_service_targets_named_in_the_makefile_and_readme_exist():
    """`make services-up` starts only what its prerequisites start; docs name no target that is missing."""
    import re

    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+):", makefile, flags=re.M))
    readme = (ROOT / "README.md").read_text()
    for text, where in ((makefile, "Makefile"), (readme, "README.md")):
        for named in set(re.findall(r"\bservices-(?:up|down)(?:-[a-z0-9]+)?\b", text)):
            assert named in targets, f"{where} names `make {named}`, which the Makefile does not define"
    (prereqs,) = re.findall(r"^services-up:(.*)$", makefile, flags=re.M)
    assert prereqs.split() == ["services-up-s3"]
    (row,) = [line for line in readme.splitlines() if line.startswith("| `make services-up`")]
    started = row.split("|")[2]
    assert "S3" in started and not re.search(r"(S3 server|starts?)[^|;]*MLflow", started), row


def test_the_local_summary_prints_every_model_scored_in_the_run(capsys):
    from pipelines.run import _print_local_summary

    outputs = {
        "jf": 9.5,
        "model_version": "sam2-demo/2",
        "decision": "challenger",
        "run_uri": "s3://runs/r2",
        "comparison": "baseline not scored: training started from random weights; champion J&F   9.50  "
        "champion sam2-demo v1 (new minus champion: +0.00); new      J&F   9.50  new; decision by rule head-to-head",
    }
    _print_local_summary(outputs, {"dataset_name": "demo", "init_checkpoint_uri": ""}, 60.0)
    out = capsys.readouterr().out
    assert "\n  baseline not scored: training started from random weights\n" in out
    assert "\n  champion J&F   9.50  champion sam2-demo v1 (new minus champion: +0.00)\n" in out
    assert "\n  new      J&F   9.50  new\n" in out and "\n  decision by rule head-to-head\n" in out
