"""Render a Kubeflow PyTorchJob from the template that `k8s/pytorchjob.yaml` ships.

`sam2/launch/pytorchjob.yaml` is a symlink to `k8s/pytorchjob.yaml` (and package data in a wheel), so the
job the pipeline creates and the job a user applies by hand are the same object with a few fields filled
in; they cannot drift apart.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from sam2.data.layout import SHARED_DATA_ENV, SHARED_DATA_MOUNT
from sam2.launch.cluster_settings import (
    DEFAULT_CPU_PER_GPU,
    DEFAULT_MEMORY_PER_GPU,
    DEFAULT_SHM_PER_GPU,
    SCHEDULERS,
    scale_quantity,
)

TEMPLATE_RESOURCE = "pytorchjob.yaml"
CONTAINER_NAME = "pytorch"
GPU_RESOURCE = "nvidia.com/gpu"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# The scratch volume holds the data set (unless the shared data claim does) plus the run's checkpoints (the
# newest, a staging copy, the initial weights: a few GiB for Hiera-L with optimizer state) and TensorBoard logs.
SCRATCH_HEADROOM_BYTES = 16 * 2**30
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# The operator's gang scheduling (--gang-scheduler-name=volcano) creates a PodGroup from
# runPolicy.schedulingPolicy and sets this scheduler on pods that name none (pkg/controller.v1/common/pod.go).
VOLCANO_SCHEDULER = "volcano"
# The optional ReadWriteMany claim holding data set copies (k8s/shared-data-pvc.yaml): the volume's name,
# where the pipeline's steps mount it too, and the variable training_node.SHARED_DATA_ENV reads.
SHARED_DATA_VOLUME = "shared-data"


@dataclass(frozen=True)
class TrainingJobSpec:
    """What differs between two training jobs, of either kind; everything else comes from the template.

    `gpus_per_node` is also the number of training processes per node (`nprocPerNode`); with 0 the pods
    request no GPU and `cpu_procs_per_node` processes train on the CPU (gloo). CPU, memory and /dev/shm
    are per training process and scale with their number.
    `scratch_bytes` (the data set's size) sizes the scratch emptyDir (`sizeLimit`, plus
    `SCRATCH_HEADROOM_BYTES` for checkpoints) and its ephemeral-storage request; None leaves it unbounded.
    With `shared_data_pvc` the data lives on the claim, so the scratch is sized without it (the headroom).
    `owner` is an ownerReference (the step's pod), so deleting the run garbage-collects the job.
    `shared_data_pvc`: a ReadWriteMany claim mounted at `shared_data_mount` on every replica, with
    SAM2_SHARED_DATA_DIR set to it, so the nodes stage the train videos there once per data set version
    and reuse that copy (None: no such volume, each node downloads into its scratch emptyDir).
    `scheduler`: "none", "volcano" (gang: schedulingPolicy with minAvailable = all replicas, `queue`,
    `priority_class`) or "kueue" (the `queue` label; created suspended, Kueue admits it whole).
    The pods run as the template's service account (sam2-training, k8s/serviceaccount.yaml); the pod's CPU
    and memory come from the per-GPU sizes, the run policy's TTL and backoff limit from the template.
    """

    name: str
    image: str
    args: list[str]
    num_nodes: int = 1
    gpus_per_node: int = 1
    cpu_procs_per_node: int = 1
    namespace: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    s3_secret_name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    cpu_per_gpu: str = DEFAULT_CPU_PER_GPU
    memory_per_gpu: str = DEFAULT_MEMORY_PER_GPU
    shm_per_gpu: str = DEFAULT_SHM_PER_GPU
    scratch_bytes: int | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    priority_class: str | None = None
    active_deadline_seconds: int | None = None
    owner: dict[str, Any] | None = None
    scheduler: str = "none"
    queue: str | None = None
    shared_data_pvc: str | None = None
    shared_data_mount: str = SHARED_DATA_MOUNT


# The name the PyTorchJob path has always used for it.
PyTorchJobSpec = TrainingJobSpec


def _mebibytes(num_bytes: int) -> str:
    return f"{math.ceil(num_bytes / 2**20)}Mi"


def _quantity_bytes(quantity: str) -> int:
    from kubernetes.utils import parse_quantity

    return int(parse_quantity(quantity))


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


def render_pytorchjob(spec: TrainingJobSpec) -> dict[str, Any]:
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
    if spec.scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {spec.scheduler!r}")
    if spec.scheduler == "kueue" and not spec.queue:
        raise ValueError("scheduler=kueue needs a queue: the name of a Kueue LocalQueue in the namespace")
    if spec.scratch_bytes is not None and spec.scratch_bytes < 0:
        raise ValueError(f"scratch_bytes must be >= 0, got {spec.scratch_bytes}")
    if spec.shared_data_pvc is not None:
        if len(spec.shared_data_pvc) > 253 or not _DNS1123_SUBDOMAIN.match(spec.shared_data_pvc):
            raise ValueError(
                f"shared_data_pvc {spec.shared_data_pvc!r} is not a PersistentVolumeClaim name "
                "(a DNS-1123 subdomain: lower-case letters, digits, '-' and '.')"
            )
        if not spec.shared_data_mount.startswith("/"):
            raise ValueError(f"shared_data_mount must be an absolute path, got {spec.shared_data_mount!r}")
    job = load_template()
    job["metadata"]["name"] = spec.name
    if spec.namespace:
        job["metadata"]["namespace"] = spec.namespace
    job["metadata"].setdefault("labels", {}).update(spec.labels)
    if spec.owner is not None:
        job["metadata"]["ownerReferences"] = [dict(spec.owner)]

    procs = spec.gpus_per_node if spec.gpus_per_node > 0 else spec.cpu_procs_per_node
    job["spec"]["nprocPerNode"] = str(procs)
    run_policy = job["spec"].setdefault("runPolicy", {})
    if spec.active_deadline_seconds is not None:
        if spec.active_deadline_seconds < 1:
            raise ValueError(f"active_deadline_seconds must be >= 1, got {spec.active_deadline_seconds}")
        run_policy["activeDeadlineSeconds"] = int(spec.active_deadline_seconds)
    if spec.scheduler == "volcano":
        policy: dict[str, Any] = {"minAvailable": spec.num_nodes}
        if spec.queue:
            policy["queue"] = spec.queue
        if spec.priority_class:
            policy["priorityClass"] = spec.priority_class
        run_policy["schedulingPolicy"] = policy
    elif spec.scheduler == "kueue":
        # Kueue's webhook suspends a labelled job anyway; creating it suspended means the operator never
        # starts pods before Kueue admitted the whole job (Kueue docs, tasks/run/kubeflow/pytorchjobs.md).
        job["metadata"]["labels"][KUEUE_QUEUE_LABEL] = spec.queue
        run_policy["suspend"] = True

    replicas = job["spec"]["pytorchReplicaSpecs"]
    worker_template = replicas.get("Worker") or copy.deepcopy(replicas["Master"])
    replicas["Master"]["replicas"] = 1
    if spec.num_nodes > 1:
        worker_template["replicas"] = spec.num_nodes - 1
        replicas["Worker"] = worker_template
    else:
        replicas.pop("Worker", None)

    for replica in replicas.values():
        _fill_pod(replica["template"]["spec"], spec)
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


def _procs(spec: TrainingJobSpec) -> int:
    return spec.gpus_per_node if spec.gpus_per_node > 0 else spec.cpu_procs_per_node


def _fill_pod(pod: dict[str, Any], spec: TrainingJobSpec) -> None:
    """Placement, account, the sizes of the shared-memory and scratch volumes, the shared data claim."""
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.priority_class:
        pod["priorityClassName"] = spec.priority_class
    if spec.scheduler == "volcano":
        pod["schedulerName"] = VOLCANO_SCHEDULER
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if "dshm" in volumes:
        volumes["dshm"]["emptyDir"]["sizeLimit"] = scale_quantity(spec.shm_per_gpu, _procs(spec))
    scratch = _scratch_bytes(spec)
    if scratch is not None and "scratch" in volumes:
        volumes["scratch"]["emptyDir"] = {"sizeLimit": _mebibytes(scratch)}
    if spec.shared_data_pvc is not None:
        claim = {"name": SHARED_DATA_VOLUME, "persistentVolumeClaim": {"claimName": spec.shared_data_pvc}}
        pod.setdefault("volumes", []).append(claim)


def scratch_size_bytes(dataset_bytes: int) -> int:
    """The scratch volume for a data set of `dataset_bytes`: the data, 10% slack, the checkpoints' room."""
    return -(-dataset_bytes * 11 // 10) + SCRATCH_HEADROOM_BYTES


def _scratch_bytes(spec: TrainingJobSpec) -> int | None:
    """The scratch volume of `spec`'s pods, None when unbounded (no `scratch_bytes`). With the shared data
    claim the train videos are staged there, not on the scratch: it holds only the run's checkpoints,
    logs and caches."""
    if spec.scratch_bytes is None:
        return None
    return (
        SCRATCH_HEADROOM_BYTES if spec.shared_data_pvc is not None else scratch_size_bytes(spec.scratch_bytes)
    )


def _fill_container(container: dict[str, Any], spec: TrainingJobSpec) -> None:
    container["image"] = spec.image
    container["args"] = list(spec.args)
    for item in container.get("env", []):
        if item["name"] == "PET_RDZV_ID":
            item["value"] = spec.name  # one rendezvous per job

    env = container.setdefault("env", [])
    by_name = {item["name"]: item for item in env}
    values = dict(spec.env)
    if spec.shared_data_pvc is not None:
        values[SHARED_DATA_ENV] = spec.shared_data_mount
    for key, value in values.items():
        if key in by_name:
            by_name[key].clear()
            by_name[key].update({"name": key, "value": value})
        else:
            env.append({"name": key, "value": value})
    if spec.shared_data_pvc is not None:
        mount = {"name": SHARED_DATA_VOLUME, "mountPath": spec.shared_data_mount}
        container.setdefault("volumeMounts", []).append(mount)
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
    procs = _procs(spec)
    cpu = scale_quantity(spec.cpu_per_gpu, procs)
    memory = scale_quantity(spec.memory_per_gpu, procs)
    # Requests equal limits (Guaranteed QoS): a training pod is neither throttled below what the
    # scheduler reserved nor killed first under node memory pressure.
    requests["cpu"] = limits["cpu"] = cpu
    requests["memory"] = limits["memory"] = memory
    scratch = _scratch_bytes(spec)
    if scratch is not None:
        base = _quantity_bytes(requests.get("ephemeral-storage", "0"))
        requests["ephemeral-storage"] = _mebibytes(base + scratch)


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
