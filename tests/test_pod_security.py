"""Every pod the project ships or creates passes the `restricted` Pod Security Standard (tests/pod_security.py,
written from kubernetes.io/docs/concepts/security/pod-security-standards/): the PyTorchJob's Master and
Worker in each rendering, the MinIO and MLflow deployments, and the pipeline's component pods as far as
the compiled pipeline determines them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pod_security import restricted_violations

from sam2.launch.kubeflow import ClusterSettings, PyTorchJobLauncher
from sam2.launch.launcher import TrainingRequest
from sam2.launch.owner_watch import OWNER_NAME_ENV
from sam2.launch.pytorchjob import PyTorchJobSpec, render_pytorchjob

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "sam2_finetune.yaml"
# What the KFP backend's driver adds to every component container, whatever the spec says (kfp-kubernetes
# 2.17 kfp/kubernetes/security_context.py: "Platform security defaults (allowPrivilegeEscalation=false,
# drop ALL capabilities, seccompProfile=RuntimeDefault) are enforced separately").
KFP_BACKEND_DEFAULTS = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# kfp-kubernetes platform-spec fields that add volumes, and the pod volume type each becomes.
KFP_VOLUME_FIELDS = {
    "secretAsVolume": "secret",
    "configMapAsVolume": "configMap",
    "pvcMount": "persistentVolumeClaim",
    "emptyDirMounts": "emptyDir",
    "genericEphemeralVolume": "ephemeral",
}


def _job_pods(job: dict) -> list[tuple[str, dict]]:
    return [(role, r["template"]["spec"]) for role, r in job["spec"]["pytorchReplicaSpecs"].items()]


RENDERINGS = {
    "template": lambda: yaml.safe_load((ROOT / "k8s" / "pytorchjob.yaml").read_text()),
    "gpu 4 nodes x 8": lambda: render_pytorchjob(
        PyTorchJobSpec(name="j", image="i:1", args=[], num_nodes=4, gpus_per_node=8, scratch_bytes=10**12)
    ),
    "cpu": lambda: render_pytorchjob(
        PyTorchJobSpec(name="j", image="i:1", args=[], num_nodes=2, gpus_per_node=0, cpu_procs_per_node=2)
    ),
    "volcano": lambda: render_pytorchjob(
        PyTorchJobSpec(name="j", image="i:1", args=[], num_nodes=2, scheduler="volcano", queue="q")
    ),
    "kueue + placement": lambda: PyTorchJobLauncher(
        ClusterSettings(
            namespace="n",
            image="i:1",
            scheduler="kueue",
            queue="q",
            node_selector={"gpu": "h100"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            priority_class="p",
            owner_pod=("n", "step", "uid-1"),
        ),
        object(),
        object(),
    ).render(TrainingRequest("r", "c.yaml", "s3://d/v", "s3://r/r", num_nodes=3)),
}


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_every_pytorchjob_pod_is_restricted(rendering):
    job = RENDERINGS[rendering]()
    for role, pod in _job_pods(job):
        assert restricted_violations(pod) == [], f"{rendering} {role}"
        (container,) = pod["containers"]
        # A token only where the nodes watch their pipeline step's pod (sam2/launch/owner_watch.py).
        watches = any(e["name"] == OWNER_NAME_ENV for e in container.get("env", []))
        assert watches is (rendering == "kueue + placement"), rendering
        assert pod["automountServiceAccountToken"] is watches and pod["serviceAccountName"] == "sam2-training"
        # Not a PSS rule, but the template's promise: a read-only root with writable emptyDirs.
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for path in ("/scratch", "/tmp", "/home/sam2", "/dev/shm"):
            assert "emptyDir" in volumes[mounts[path]], path


@pytest.mark.parametrize("manifest", ["minio.yaml", "mlflow.yaml"])
def test_the_k8s_deployments_are_restricted(manifest):
    (deployment,) = [
        d for d in yaml.safe_load_all((ROOT / "k8s" / manifest).read_text()) if d["kind"] == "Deployment"
    ]
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsUser"] >= 10000, "a high UID (no clash with host users)"
    for container in pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert "cpu" in container["resources"]["limits"]


def _component_pods(compiled: Path) -> dict[str, dict]:
    """Each executor's pod as far as the compiled pipeline says: its container's securityContext from the
    kubernetes platform spec plus the backend's defaults, and volumes of the types the spec adds."""
    pipeline, *rest = list(yaml.safe_load_all(compiled.read_text()))
    platform = (rest[0] if rest else {}).get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
    configs = platform.get("executors", {})
    pods = {}
    for name in pipeline["deploymentSpec"]["executors"]:
        config = configs.get(name, {})
        given = {
            k: (int(v) if k in ("runAsUser", "runAsGroup") else v)
            for k, v in config.get("securityContext", {}).items()
        }
        volumes = []
        for field, kind in KFP_VOLUME_FIELDS.items():
            for i, _ in enumerate(config.get(field) or []):
                volumes.append({"name": f"{field}-{i}", kind: {}})
        pods[name] = {
            "containers": [{"name": "main", "securityContext": {**KFP_BACKEND_DEFAULTS, **given}}],
            "volumes": volumes,
            "_given": given,
        }
    return pods


def test_every_component_pod_of_the_compiled_pipeline_is_restricted():
    pods = _component_pods(COMPILED)
    assert len(pods) >= 7
    for name, pod in pods.items():
        given = pod.pop("_given")
        # What the spec must state itself (the backend does not): a non-root user, the image's.
        assert given.get("runAsNonRoot") is True and given.get("runAsUser", 0) != 0, name
        assert restricted_violations(pod) == [], name


@pytest.mark.parametrize(
    "mutate, rule",
    [
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (
            lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
            "allowPrivilegeEscalation",
        ),
        (
            lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
            "drop must include ALL",
        ),
        (
            lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
            "capabilities.add",
        ),
        (lambda p: p["securityContext"].pop("seccompProfile"), "seccompProfile"),
        (lambda p: p["containers"][0]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
        (lambda p: p["containers"][0]["securityContext"].update(runAsUser=0), "runAsUser must not be 0"),
        (lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "forbidden type"),
        (lambda p: p.update(hostNetwork=True), "hostNetwork"),
        (
            lambda p: p["containers"][0].setdefault("ports", []).append({"containerPort": 1, "hostPort": 80}),
            "hostPort",
        ),
    ],
)
def test_the_checker_catches_each_rule(mutate, rule):
    """Guards the checks above: each rule, broken alone in a passing pod, is reported."""
    pod = copy.deepcopy(_job_pods(yaml.safe_load((ROOT / "k8s" / "pytorchjob.yaml").read_text()))[0][1])
    assert restricted_violations(pod) == []
    mutate(pod)
    assert any(rule in p for p in restricted_violations(pod)), restricted_violations(pod)
