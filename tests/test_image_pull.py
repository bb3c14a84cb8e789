"""Images a cluster can pull from a private registry, and the Kueue label on the infer step's GPU pods.

Steps: the compiled pipeline gives every executor an `imagePullSecret` from the run parameter
`image_pull_secret` (kfp-kubernetes 2.17 set_image_pull_secrets; the KFP driver, kubeflow/pipelines
2.16.1/2.17.0 backend/src/v2/driver/k8s.go, resolves secretNameParameter into the pod's imagePullSecrets;
an empty name, the default, is skipped by the kubelet: kubernetes pkg/kubelet/kubelet_pods.go
getPullSecretsForPod). Service accounts: the kustomize component k8s/components/image-pull-secret.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sam2.launch.image_pull import add_image_pull_secrets, parse_image_pull_secrets

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "sam2_finetune.yaml"
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def _compiled(path: Path = COMPILED) -> tuple[dict, dict]:
    pipeline, platform = list(yaml.safe_load_all(path.read_text()))[:2]
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_secret_names_are_parsed_checked_and_added_once():
    assert parse_image_pull_secrets("") == ()
    assert parse_image_pull_secrets(" ghcr-pull, mirror.pull  ghcr-pull") == ("ghcr-pull", "mirror.pull")
    with pytest.raises(ValueError, match=r"image_pull_secrets: 'GHCR_pull' is not a Secret name"):
        parse_image_pull_secrets("GHCR_pull")
    pod = {"imagePullSecrets": [{"name": "cluster-wide"}]}
    add_image_pull_secrets(pod, ("ghcr-pull", "cluster-wide"))
    assert pod["imagePullSecrets"] == [{"name": "cluster-wide"}, {"name": "ghcr-pull"}]
    empty: dict = {}
    add_image_pull_secrets(empty, ())
    assert "imagePullSecrets" not in empty, "no empty list in a rendered pod"


def test_every_step_of_the_compiled_pipeline_pulls_with_the_run_parameters_secret():
    pipeline, executors = _compiled()
    parameter = pipeline["root"]["inputDefinitions"]["parameters"]["image_pull_secret"]
    assert parameter["parameterType"] == "STRING" and parameter["defaultValue"] == ""
    assert set(executors) == set(pipeline["deploymentSpec"]["executors"]), (
        "every executor has a platform spec"
    )
    for name, spec in executors.items():
        (secret,) = spec.get("imagePullSecret", [None])
        # Inside the ParallelFor (infer) the parameter reaches the task as its pipeline channel.
        source = secret["secretNameParameter"]["componentInputParameter"]
        assert source in ("image_pull_secret", "pipelinechannel--image_pull_secret"), name


def _compile(tmp_path: Path, **env: str) -> Path:
    out = tmp_path / "pipeline.yaml"
    clean = {k: v for k, v in os.environ.items() if k not in ("SAM2_KUEUE_QUEUE", "SAM2_PIPELINE_IMAGE")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.compile", "--output", str(out)],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _infer_executor(pipeline: dict) -> str:
    """The executor of the infer step (inside the ParallelFor's DAG)."""
    for component in pipeline["components"].values():
        for name, task in component.get("dag", {}).get("tasks", {}).items():
            if name.startswith("infer-videos"):
                return pipeline["components"][task["componentRef"]["name"]]["executorLabel"]
    raise AssertionError("no infer task in the compiled pipeline")


def test_with_a_kueue_queue_at_compile_time_the_infer_pods_carry_its_label(tmp_path):
    pipeline, executors = _compiled(_compile(tmp_path, SAM2_KUEUE_QUEUE="gpu-queue"))
    infer = _infer_executor(pipeline)
    assert executors[infer]["podMetadata"]["labels"][KUEUE_LABEL] == "gpu-queue"
    others = [name for name, spec in executors.items() if name != infer]
    assert all(KUEUE_LABEL not in spec["podMetadata"]["labels"] for spec in (executors[n] for n in others))
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert (
        params["scheduler"]["defaultValue"] == "kueue"
        and params["scheduler_queue"]["defaultValue"] == "gpu-queue"
    )


def test_without_a_queue_no_pod_carries_the_kueue_label():
    pipeline, executors = _compiled()
    assert all(KUEUE_LABEL not in spec["podMetadata"]["labels"] for spec in executors.values())
    assert pipeline["root"]["inputDefinitions"]["parameters"]["scheduler"]["defaultValue"] == "none"


def test_the_component_gives_both_service_accounts_the_pull_secret(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    k8s = os.path.relpath(ROOT / "k8s", overlay)
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{k8s}]\ncomponents: [{k8s}/components/image-pull-secret]\n"
    )
    proc = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    accounts = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all(proc.stdout)
        if d and d["kind"] == "ServiceAccount"
    }
    assert set(accounts) == {"sam2-pipeline", "sam2-training"}
    for account in accounts.values():
        assert account["imagePullSecrets"] == [{"name": "sam2-registry"}]


# -- the training job's pods ------------------------------------------------------------------------------------


def _request():
    from sam2.launch.launcher import TrainingRequest

    return TrainingRequest("run-1", "c.yaml", "s3://d/v", "s3://r/run-1", num_nodes=3)


def _found(node, key: str) -> list:
    if isinstance(node, dict):
        return ([node[key]] if key in node else []) + [v for x in node.values() for v in _found(x, key)]
    if isinstance(node, list):
        return [v for x in node for v in _found(x, key)]
    return []


def test_the_train_steps_secret_reaches_every_pod_of_either_job_kind():
    from components.training_setup import cluster_settings
    from sam2.launch.kubeflow import PyTorchJobLauncher
    from sam2.launch.trainjob import TRAINER_APIS
    from sam2.launch.trainjob_launcher import TrainJobLauncher

    env = {"POD_NAME": "step", "POD_UID": "uid-1", "POD_NAMESPACE": "team-a"}
    settings = cluster_settings(
        "team-a", "i:1", "", 1.0, "never", "s3", image_pull_secrets="ghcr-pull", env=env
    )
    assert settings.image_pull_secrets == ("ghcr-pull",)
    job = PyTorchJobLauncher(settings, custom_api=object(), core_api=object()).render(_request())
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        assert replica["template"]["spec"]["imagePullSecrets"] == [{"name": "ghcr-pull"}], role
    for api in TRAINER_APIS:
        rendered = TrainJobLauncher(settings, custom_api=object(), core_api=object(), api=api).render(
            _request(), api
        )
        assert _found(rendered.trainjob, "imagePullSecrets") == [[{"name": "ghcr-pull"}]], api
    unset = cluster_settings("team-a", "i:1", "", 1.0, "never", "s3", env=env)
    job = PyTorchJobLauncher(unset, custom_api=object(), core_api=object()).render(_request())
    assert not _found(job, "imagePullSecrets")
    with pytest.raises(ValueError, match="image_pull_secrets: 'Bad_Name'"):
        cluster_settings("team-a", "i:1", "", 1.0, "never", "s3", image_pull_secrets="Bad_Name", env=env)


def test_the_pipeline_passes_its_secret_and_queue_timeout_to_the_train_step():
    pipeline, _ = _compiled()
    for component in [pipeline["root"], *pipeline["components"].values()]:
        tasks = component.get("dag", {}).get("tasks", {})
        if "train-model" in tasks:
            inputs = tasks["train-model"]["inputs"]["parameters"]
            assert inputs["image_pull_secrets"] == {"componentInputParameter": "image_pull_secret"}
            assert inputs["queue_timeout_minutes"] == {"componentInputParameter": "queue_timeout_minutes"}
            break
    else:
        raise AssertionError("no train-model task")
    default = pipeline["root"]["inputDefinitions"]["parameters"]["queue_timeout_minutes"]["defaultValue"]
    assert default == 0.0, "0 waits as long as the queue does"
