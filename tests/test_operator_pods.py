"""The job's pods as the Training Operator creates them pass `restricted`, its injected init container included.

training-operator v1.9.x (pkg/controller.v1/pytorch/initcontainer.go) appends `init-pytorch` to every
Worker pod of a PyTorchJob that has a Master, from a template file the operator reads at
/etc/config/initContainer.yaml (--pytorch-init-container-template-file) or, without it, its built-in one,
which sets no securityContext. Nothing in the job can change that container (allowPrivilegeEscalation and
capabilities exist only per container), so the one setting left to the cluster admin is that template
file: k8s/admin/training-operator-init-container.yaml ships it. These tests check the pods
`pod_security.operator_pods` builds the way the operator does, with the built-in template (Workers fail on
exactly those two rules of init-pytorch, nothing else) and with ours (every pod passes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pod_security import (
    operator_default_init_container,
    operator_pods,
    render_operator_init_template,
    restricted_violations,
)

from sam2.launch.kubeflow import ClusterSettings, PyTorchJobLauncher
from sam2.launch.launcher import TrainingRequest

ROOT = Path(__file__).resolve().parents[1]
ADMIN = ROOT / "k8s" / "admin"


def _admin_template() -> str:
    (config_map,) = yaml.safe_load_all((ADMIN / "training-operator-init-container.yaml").read_text())
    return config_map["data"]["initContainer.yaml"]


def _job(num_nodes: int) -> dict:
    settings = ClusterSettings(namespace="team-a", image="i:1", owner_pod=("team-a", "step", "uid-1"))
    request = TrainingRequest("run-1", "c.yaml", "s3://d/v", "s3://r/run-1", num_nodes=num_nodes)
    return PyTorchJobLauncher(settings, custom_api=object(), core_api=object()).render(request)


def test_with_the_operators_builtin_template_only_the_workers_init_container_fails():
    pods = operator_pods(_job(3))
    assert sorted(pods) == [
        "sam2-train-run-1-master-0",
        "sam2-train-run-1-worker-0",
        "sam2-train-run-1-worker-1",
    ]
    assert restricted_violations(pods["sam2-train-run-1-master-0"]) == []
    for name in ("sam2-train-run-1-worker-0", "sam2-train-run-1-worker-1"):
        assert [c["name"] for c in pods[name]["initContainers"]] == ["init-pytorch"]
        assert restricted_violations(pods[name]) == [
            "initContainers[init-pytorch]: allowPrivilegeEscalation must be false",
            "initContainers[init-pytorch]: capabilities.drop must include ALL",
        ], "the pod-level runAsNonRoot/seccomp cover the rest; these two are the admin's"


def test_a_single_node_job_has_no_init_container_and_passes():
    (pod,) = operator_pods(_job(1)).values()
    assert "initContainers" not in pod and restricted_violations(pod) == []


def test_with_the_shipped_template_every_pod_of_the_job_passes():
    pods = operator_pods(
        _job(4), init_template=_admin_template(), init_image="registry.local/mirror/alpine:3.10"
    )
    assert len(pods) == 4
    for name, pod in pods.items():
        assert restricted_violations(pod) == [], name
    (init,) = pods["sam2-train-run-1-worker-2"]["initContainers"]
    assert init["image"] == "registry.local/mirror/alpine:3.10", "the operator's image flag still applies"
    # No root even where a pod sets no user (the template serves every PyTorchJob of the cluster).
    assert init["securityContext"]["runAsUser"] != 0 and init["securityContext"]["runAsNonRoot"] is True


def test_the_shipped_template_waits_for_the_master_as_the_builtin_one_does():
    """Same name, resources and wait: nslookup of the Master, MaxTries times, 2 s apart, exit 0 on success."""
    (ours,) = render_operator_init_template(_admin_template(), "job-master-0", "alpine:3.10", 7)
    builtin = operator_default_init_container("job-master-0", "alpine:3.10", 7)
    assert {k: v for k, v in ours.items() if k not in ("command", "securityContext")} == {
        k: v for k, v in builtin.items() if k != "command"
    }
    script = ours["command"][2]
    assert ours["command"][:2] == ["sh", "-c"]
    for piece in ("$(seq 7)", "nslookup job-master-0 && exit 0", "sleep 2", "exit 1"):
        assert piece in script, piece


def test_the_shipped_template_is_a_valid_container_list(tmp_path):
    """The same strict schema check the k8s manifests get: a Pod with these containers validates."""
    import subprocess
    import sys

    (init,) = render_operator_init_template(_admin_template(), "j-master-0", "alpine:3.10", 100)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {"initContainers": [init], "containers": [{"name": "c", "image": "i:1"}]},
    }
    validate = Path(sys.executable).with_name("kubernetes-validate")
    if not validate.exists():
        pytest.skip("kubernetes-validate is not installed in this venv (`make setup` installs it)")
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    proc = subprocess.run(
        [str(validate), "--strict", str(tmp_path / "pod.yaml")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_deployment_patch_mounts_the_template_where_the_operator_reads_it():
    patch = yaml.safe_load((ADMIN / "training-operator-init-container-patch.yaml").read_text())
    pod = patch["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "training-operator"  # manifests/base/deployment.yaml at v1.9.0
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] + "/initContainer.yaml" == "/etc/config/initContainer.yaml"
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"]
    (config_map,) = yaml.safe_load_all((ADMIN / "training-operator-init-container.yaml").read_text())
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert list(config_map["data"]) == ["initContainer.yaml"]
