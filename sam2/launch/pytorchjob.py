"""Render a Kubeflow PyTorchJob from the template that `k8s/pytorchjob.yaml` ships.

`sam2/launch/pytorchjob.yaml` is a symlink to `k8s/pytorchjob.yaml` (and package data in a wheel), so the
job the pipeline creates and the job a user applies by hand are the same object with a few fields filled
in; they cannot drift apart.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

TEMPLATE_RESOURCE = "pytorchjob.yaml"
CONTAINER_NAME = "pytorch"
GPU_RESOURCE = "nvidia.com/gpu"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class PyTorchJobSpec:
    """What differs between two training jobs; everything else comes from the template.

    `gpus_per_node` is also the number of training processes per node (`nprocPerNode`); with 0 the pods
    request no GPU and `cpu_procs_per_node` processes train on the CPU (gloo).
    """

    name: str
    image: str
    args: list[str]
    num_nodes: int = 1
    gpus_per_node: int = 1
    cpu_procs_per_node: int = 1
    namespace: str | None = None
    cpu: str | None = None
    memory: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    s3_secret_name: str | None = None
    ttl_seconds_after_finished: int | None = None
    backoff_limit: int | None = None
    labels: dict[str, str] = field(default_factory=dict)


def load_template() -> dict[str, Any]:
    """The PyTorchJob of `k8s/pytorchjob.yaml`, parsed (a fresh copy on every call)."""
    text = resources.files("sam2.launch").joinpath(TEMPLATE_RESOURCE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def job_name_for(run_id: str, prefix: str = "sam2-train") -> str:
    """A valid PyTorchJob name (DNS-1035 label, <= 63 chars) derived deterministically from a run id.

    The same run id always maps to the same name, which makes creation idempotent: a retried pipeline step
    finds and attaches to the job it created before.
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    name = f"{prefix}-{slug}" if slug else prefix
    name = name[:63].rstrip("-")
    if not _DNS1035.match(name):
        raise ValueError(f"cannot derive a DNS-1035 job name from run id {run_id!r} (got {name!r})")
    return name


def render_pytorchjob(spec: PyTorchJobSpec) -> dict[str, Any]:
    """Fill the template with `spec`: one Master, `num_nodes - 1` Workers, `nprocPerNode` processes each.

    Raises ValueError when the result would break the training operator's admission rules.
    """
    if spec.num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {spec.num_nodes}")
    if spec.gpus_per_node < 0 or spec.cpu_procs_per_node < 1:
        raise ValueError(
            f"gpus_per_node must be >= 0 and cpu_procs_per_node >= 1, got {spec.gpus_per_node} / "
            f"{spec.cpu_procs_per_node}"
        )
    job = load_template()
    job["metadata"]["name"] = spec.name
    if spec.namespace:
        job["metadata"]["namespace"] = spec.namespace
    job["metadata"].setdefault("labels", {}).update(spec.labels)

    procs = spec.gpus_per_node if spec.gpus_per_node > 0 else spec.cpu_procs_per_node
    job["spec"]["nprocPerNode"] = str(procs)
    run_policy = job["spec"].setdefault("runPolicy", {})
    if spec.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    if spec.backoff_limit is not None:
        run_policy["backoffLimit"] = spec.backoff_limit

    replicas = job["spec"]["pytorchReplicaSpecs"]
    worker_template = replicas.get("Worker") or copy.deepcopy(replicas["Master"])
    replicas["Master"]["replicas"] = 1
    if spec.num_nodes > 1:
        worker_template["replicas"] = spec.num_nodes - 1
        replicas["Worker"] = worker_template
    else:
        replicas.pop("Worker", None)

    for replica in replicas.values():
        _fill_container(_pytorch_container(replica), spec)

    problems = admission_problems(job)
    if problems:
        raise ValueError(f"rendered PyTorchJob {spec.name!r} is invalid: " + "; ".join(problems))
    return job


def _pytorch_container(replica: dict[str, Any]) -> dict[str, Any]:
    for container in replica["template"]["spec"]["containers"]:
        if container.get("name") == CONTAINER_NAME:
            return container
    raise ValueError(f"template replica has no container named {CONTAINER_NAME!r}")


def _fill_container(container: dict[str, Any], spec: PyTorchJobSpec) -> None:
    container["image"] = spec.image
    container["args"] = list(spec.args)

    env = container.setdefault("env", [])
    by_name = {item["name"]: item for item in env}
    for key, value in spec.env.items():
        if key in by_name:
            by_name[key].clear()
            by_name[key].update({"name": key, "value": value})
        else:
            env.append({"name": key, "value": value})
    if spec.s3_secret_name:
        for item in env:
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                ref["name"] = spec.s3_secret_name

    res = container.setdefault("resources", {})
    requests = res.setdefault("requests", {})
    limits = res.setdefault("limits", {})
    if spec.gpus_per_node > 0:
        requests[GPU_RESOURCE] = str(spec.gpus_per_node)
        limits[GPU_RESOURCE] = str(spec.gpus_per_node)
    else:
        requests.pop(GPU_RESOURCE, None)
        limits.pop(GPU_RESOURCE, None)
    if spec.cpu:
        requests["cpu"] = spec.cpu
    if spec.memory:
        requests["memory"] = spec.memory
        limits["memory"] = spec.memory


def admission_problems(job: dict[str, Any]) -> list[str]:
    """The training operator's webhook rules that the CRD schema does not express; [] when all hold.

    Name is a DNS-1035 label; every replica has a `pytorch` container with an image; Master replicas are
    exactly 1 and Worker at least 1 when present; `elasticPolicy` needs a Worker; `nprocPerNode` is a
    string.
    """
    problems: list[str] = []
    name = job.get("metadata", {}).get("name", "")
    if not isinstance(name, str) or len(name) > 63 or not _DNS1035.match(name):
        problems.append(f"metadata.name {name!r} is not a DNS-1035 label")
    spec = job.get("spec", {})
    replicas = spec.get("pytorchReplicaSpecs") or {}
    if not replicas:
        problems.append("spec.pytorchReplicaSpecs is empty")
    for role, replica in replicas.items():
        containers = replica.get("template", {}).get("spec", {}).get("containers", [])
        named = [c for c in containers if c.get("name") == CONTAINER_NAME]
        if not named:
            problems.append(f"{role} has no container named {CONTAINER_NAME!r}")
        elif not named[0].get("image"):
            problems.append(f"{role} container {CONTAINER_NAME!r} has no image")
    if "Master" in replicas and replicas["Master"].get("replicas", 1) != 1:
        problems.append(f"Master replicas must be 1, got {replicas['Master'].get('replicas')}")
    if "Worker" in replicas and replicas["Worker"].get("replicas", 1) < 1:
        problems.append(f"Worker replicas must be >= 1, got {replicas['Worker'].get('replicas')}")
    if "elasticPolicy" in spec and "Worker" not in replicas:
        problems.append("elasticPolicy needs a Worker replica spec")
    if "nprocPerNode" in spec and not isinstance(spec["nprocPerNode"], str):
        problems.append(f"nprocPerNode must be a string, got {spec['nprocPerNode']!r}")
    return problems
