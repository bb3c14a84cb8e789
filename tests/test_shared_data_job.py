"""The optional ReadWriteMany data claim (k8s/shared-data-pvc.yaml) reaches the PyTorchJob: every replica
mounts it where the pipeline's steps do and has SAM2_SHARED_DATA_DIR, so training_node stages the train
videos into that shared copy; without the setting the job is exactly what it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pod_security import restricted_violations
from pytorchjob_crd import validate_against_crd

from components.training_setup import cluster_settings
from pipelines import sam2_finetune
from sam2.launch import training_node
from sam2.launch.kubeflow import ClusterSettings, PyTorchJobLauncher
from sam2.launch.launcher import TrainingRequest
from sam2.launch.pytorchjob import (
    SCRATCH_HEADROOM_BYTES,
    SHARED_DATA_ENV,
    SHARED_DATA_MOUNT,
    PyTorchJobSpec,
    render_pytorchjob,
)

ROOT = Path(__file__).resolve().parents[1]
CLAIM = "sam2-shared-data"


def _pods(job: dict) -> dict[str, dict]:
    return {role: r["template"]["spec"] for role, r in job["spec"]["pytorchReplicaSpecs"].items()}


def _request(num_nodes: int = 3) -> TrainingRequest:
    return TrainingRequest("r", "c.yaml", "s3://d/datasets/demo/v1", "s3://r/r", num_nodes=num_nodes)


def test_the_job_and_the_steps_agree_with_training_node_on_the_variable_and_the_path():
    assert SHARED_DATA_ENV == training_node.SHARED_DATA_ENV
    assert SHARED_DATA_MOUNT == sam2_finetune.SHARED_DATA_MOUNT


@pytest.mark.parametrize("gpus", [1, 0])
def test_every_replica_mounts_the_claim_and_is_told_where(gpus):
    job = render_pytorchjob(
        PyTorchJobSpec(
            name="j",
            image="i:1",
            args=[],
            num_nodes=3,
            gpus_per_node=gpus,
            scratch_bytes=2**30,
            shared_data_pvc=CLAIM,
        )
    )
    validate_against_crd(job)
    pods = _pods(job)
    assert set(pods) == {"Master", "Worker"} and job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    for role, pod in pods.items():
        assert restricted_violations(pod) == [], role
        volumes = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert volumes == [{"name": "shared-data", "persistentVolumeClaim": {"claimName": CLAIM}}], role
        (container,) = pod["containers"]
        assert {"name": "shared-data", "mountPath": "/shared-data"} in container["volumeMounts"], role
        env = [e for e in container["env"] if e["name"] == "SAM2_SHARED_DATA_DIR"]
        assert env == [{"name": "SAM2_SHARED_DATA_DIR", "value": "/shared-data"}], role
        # the scratch emptyDir and the template's other volumes are still there
        assert {"dshm", "scratch", "tmp", "home"} <= {v["name"] for v in pod["volumes"]}, role


def test_without_the_claim_nothing_changes():
    base = dict(name="j", image="i:1", args=["--x"], num_nodes=2, scratch_bytes=2**30)
    plain = render_pytorchjob(PyTorchJobSpec(**base))
    assert plain == render_pytorchjob(PyTorchJobSpec(**base, shared_data_pvc=None))
    for pod in _pods(plain).values():
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert "SAM2_SHARED_DATA_DIR" not in {e["name"] for e in pod["containers"][0]["env"]}
    shared = render_pytorchjob(PyTorchJobSpec(**base, shared_data_pvc=CLAIM))
    assert shared != plain


def _scratch(pod: dict) -> tuple[str, str]:
    """The scratch emptyDir's sizeLimit and the container's ephemeral-storage request."""
    limit = {v["name"]: v for v in pod["volumes"]}["scratch"]["emptyDir"].get("sizeLimit", "")
    return limit, pod["containers"][0]["resources"]["requests"]["ephemeral-storage"]


def test_with_the_claim_the_scratch_is_sized_without_the_data_set():
    """The train videos go to the claim, so the scratch holds only checkpoints, logs and caches: the
    builder's checkpoint room, whatever the data set's size; without the claim the data is on it too."""
    train_bytes = 200 * 2**30
    base = dict(name="j", image="i:1", args=[], num_nodes=2, scratch_bytes=train_bytes)
    headroom_mib = SCRATCH_HEADROOM_BYTES // 2**20
    template_mib = 8 * 1024  # the template's own request: /tmp and $HOME
    for role, pod in _pods(render_pytorchjob(PyTorchJobSpec(**base, shared_data_pvc=CLAIM))).items():
        assert _scratch(pod) == (f"{headroom_mib}Mi", f"{headroom_mib + template_mib}Mi"), role
    data_mib = train_bytes * 11 // 10 // 2**20 + headroom_mib  # the data, 10% slack, the checkpoints
    for role, pod in _pods(render_pytorchjob(PyTorchJobSpec(**base))).items():
        assert _scratch(pod) == (f"{data_mib}Mi", f"{data_mib + template_mib}Mi"), role
    # Unknown size (scratch_bytes None): unbounded, claim or not, as before.
    for claim in (None, CLAIM):
        pod = _pods(render_pytorchjob(PyTorchJobSpec(name="j", image="i:1", args=[], shared_data_pvc=claim)))
        assert _scratch(pod["Master"]) == ("", "8Gi"), claim


def test_the_launcher_sizes_a_claim_jobs_scratch_without_the_train_videos():
    """The train step's `train_bytes` (TrainingRequest.scratch_bytes) no longer sizes the scratch when the
    cluster settings name the claim."""
    request = TrainingRequest(
        "r", "c.yaml", "s3://d/datasets/demo/v1", "s3://r/r", num_nodes=2, scratch_bytes=50 * 2**30
    )
    shared = ClusterSettings(namespace="n", image="i:1", shared_data_pvc=CLAIM)
    job = PyTorchJobLauncher(shared, object(), object()).render(request)
    assert {_scratch(p)[0] for p in _pods(job).values()} == {f"{SCRATCH_HEADROOM_BYTES // 2**20}Mi"}
    plain = PyTorchJobLauncher(ClusterSettings(namespace="n", image="i:1"), object(), object()).render(
        request
    )
    assert {_scratch(p)[0] for p in _pods(plain).values()} == {
        f"{(55 * 2**30 + SCRATCH_HEADROOM_BYTES) // 2**20}Mi"
    }


def test_a_bad_claim_name_or_mount_path_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="shared_data_pvc 'Shared_Data'"):
        render_pytorchjob(PyTorchJobSpec(name="j", image="i:1", args=[], shared_data_pvc="Shared_Data"))
    with pytest.raises(ValueError, match="shared_data_mount"):
        render_pytorchjob(
            PyTorchJobSpec(name="j", image="i:1", args=[], shared_data_pvc=CLAIM, shared_data_mount="data")
        )


def test_the_train_steps_setting_reaches_the_rendered_job():
    """components/train.py passes shared_data_pvc through cluster_settings to the launcher's render."""
    env = {"POD_NAME": "step", "POD_UID": "uid-1", "POD_NAMESPACE": "n"}
    settings = cluster_settings(
        "n", "i:1", "", 1.0, "on-success", "s3", env=env, shared_data_pvc=f" {CLAIM} "
    )
    assert settings.shared_data_pvc == CLAIM
    job = PyTorchJobLauncher(settings, object(), object()).render(_request())
    for role, pod in _pods(job).items():
        assert {"name": "shared-data", "persistentVolumeClaim": {"claimName": CLAIM}} in pod["volumes"], role
    assert cluster_settings("n", "i:1", "", 1.0, "on-success", "s3", env=env).shared_data_pvc is None
    unset = PyTorchJobLauncher(ClusterSettings(namespace="n", image="i:1"), object(), object()).render(
        _request()
    )
    assert all("persistentVolumeClaim" not in v for pod in _pods(unset).values() for v in pod["volumes"])


def _train_input(path: Path) -> dict:
    spec = next(yaml.safe_load_all(path.read_text()))
    return spec["root"]["dag"]["tasks"]["train-model"]["inputs"]["parameters"]["shared_data_pvc"]


def test_the_pipeline_passes_its_compile_time_claim_to_the_train_step(tmp_path):
    out = tmp_path / "shared.yaml"
    env = {**os.environ, "SAM2_SHARED_DATA_PVC": CLAIM}
    subprocess.run(
        [sys.executable, "-m", "pipelines.compile", "--output", str(out)], check=True, env=env, cwd=ROOT
    )
    assert _train_input(out) == {"runtimeValue": {"constant": CLAIM}}
    # the committed pipeline (compiled without a claim) passes none
    assert _train_input(ROOT / "pipelines" / "sam2_finetune.yaml") == {"runtimeValue": {"constant": ""}}
