"""Where and how the training job runs on a cluster: one settings object, checked where it is built.

The train step's parameters become a `ClusterSettings` once (`components.training_setup.cluster_settings`
fills in what the pod knows: namespace, image, owner); every launcher and renderer reads it, so a bad value
fails here, naming the parameter, before anything talks to the cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sam2.launch.owner_watch import DEFAULT_POLL_S as DEFAULT_OWNER_POLL_S

CLEANUP_POLICIES = ("never", "on-success", "always")
SCHEDULERS = ("none", "volcano", "kueue")
JOB_KINDS = ("pytorchjob", "trainjob")
# The ClusterTrainingRuntime Kubeflow Trainer installs for PyTorch (manifests/base/runtimes/torch_distributed.yaml).
DEFAULT_TRAINER_RUNTIME = "torch-distributed"
RUNTIME_KINDS = ("ClusterTrainingRuntime", "TrainingRuntime")
# Per GPU (or per CPU training process): what one training process and its DataLoader workers need.
DEFAULT_CPU_PER_GPU = "8"
DEFAULT_MEMORY_PER_GPU = "64Gi"
DEFAULT_SHM_PER_GPU = "16Gi"
# The fields of a core/v1 Toleration.
TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def scale_quantity(quantity: str, factor: int) -> str:
    """`quantity` (a Kubernetes quantity: "8", "500m", "64Gi") times `factor`, in the same unit.

    Raises ValueError naming the quantity when it is not a plain number with an optional unit.
    """
    match = _QUANTITY.match(str(quantity).strip())
    if not match:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity such as 8, 500m or 64Gi")
    number = Decimal(match.group(1)) * factor
    text = format(number.normalize(), "f") if number != number.to_integral() else str(int(number))
    return text + (match.group(2) or "")


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how jobs run on the cluster (the same for both job kinds).

    `owner_pod` is (namespace, name, uid) of the pod that creates the job (the step's, from the downward
    API): the job gets an ownerReference to it when it is in the same namespace (Kubernetes ignores a
    cross-namespace owner and would delete the job at once). `pending_timeout_s` 0 waits forever.
    `shared_data_pvc`: a ReadWriteMany claim (k8s/shared-data-pvc.yaml) every node mounts at
    /shared-data to stage the data set there once and reuse it; None: none.
    `trainer_runtime` / `trainer_runtime_kind`: the Kubeflow Trainer runtime a TrainJob references.
    `image_pull_secrets`: docker-registry Secrets every node pod pulls its image with.
    `queue_timeout_s`: how long the job may wait suspended in its Kueue queue (0: forever); that time is not
    pending time, which starts once Kueue admits the job.
    Raises ValueError naming the setting at fault.
    """

    namespace: str
    image: str
    s3_endpoint_url: str | None = None
    s3_secret_name: str = "sam2-s3-credentials"
    timeout_s: float = 3 * 24 * 3600.0
    poll_s: float = 15.0
    cleanup: str = "on-success"
    stream_logs: bool = True
    delete_timeout_s: float = 600.0
    cpu_per_gpu: str = DEFAULT_CPU_PER_GPU
    memory_per_gpu: str = DEFAULT_MEMORY_PER_GPU
    shm_per_gpu: str = DEFAULT_SHM_PER_GPU
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    priority_class: str | None = None
    scheduler: str = "none"
    queue: str | None = None
    pending_timeout_s: float = 1800.0
    api_retry_s: float = 300.0
    owner_pod: tuple[str, str, str] | None = None
    handle_signals: bool = True
    shared_data_pvc: str | None = None
    trainer_runtime: str = DEFAULT_TRAINER_RUNTIME
    trainer_runtime_kind: str = "ClusterTrainingRuntime"
    owner_poll_s: float = DEFAULT_OWNER_POLL_S
    image_pull_secrets: tuple[str, ...] = ()
    queue_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.namespace:
            raise ValueError("namespace is empty: pass the namespace to train in")
        if not self.image:
            raise ValueError("image is empty: pass the training image")
        if self.cleanup not in CLEANUP_POLICIES:
            raise ValueError(f"cleanup must be one of {CLEANUP_POLICIES}, got {self.cleanup!r}")
        for setting in ("cpu_per_gpu", "memory_per_gpu", "shm_per_gpu"):
            try:
                scale_quantity(getattr(self, setting), 1)
            except ValueError as exc:
                raise ValueError(f"{setting}: {exc}") from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.node_selector.items()):
            raise ValueError(
                f"node_selector must map label names to string values, got {self.node_selector!r}"
            )
        for item in self.tolerations:
            if not isinstance(item, dict) or not set(item) <= TOLERATION_KEYS:
                raise ValueError(
                    f"each toleration must be an object with keys among {sorted(TOLERATION_KEYS)}, got {item!r}"
                )
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.scheduler == "kueue" and not self.queue:
            raise ValueError(
                "scheduler=kueue needs a queue: set queue to the name of a Kueue LocalQueue in the namespace"
            )
        if self.pending_timeout_s < 0 or self.timeout_s <= 0:
            raise ValueError(
                f"pending_timeout_s must be >= 0 and timeout_s > 0, got {self.pending_timeout_s} / {self.timeout_s}"
            )
        if self.shared_data_pvc is not None and (
            len(self.shared_data_pvc) > 253 or not _DNS1123_SUBDOMAIN.match(self.shared_data_pvc)
        ):
            raise ValueError(
                f"shared_data_pvc {self.shared_data_pvc!r} is not a PersistentVolumeClaim name "
                "(a DNS-1123 subdomain: lower-case letters, digits, '-' and '.')"
            )
        if self.queue_timeout_s < 0:
            raise ValueError(f"queue_timeout_s must be >= 0 (0 waits forever), got {self.queue_timeout_s}")
        for name in self.image_pull_secrets:
            if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
                raise ValueError(f"image_pull_secrets: {name!r} is not a Secret name (DNS-1123)")
        if not _DNS1123_SUBDOMAIN.match(self.trainer_runtime or ""):
            raise ValueError(f"trainer_runtime {self.trainer_runtime!r} is not a runtime name (DNS-1123)")
        if self.trainer_runtime_kind not in RUNTIME_KINDS:
            raise ValueError(
                f"trainer_runtime_kind must be one of {', '.join(RUNTIME_KINDS)}, got {self.trainer_runtime_kind!r}"
            )


def dataloader_workers(cpu_per_gpu: str) -> int:
    """DataLoader workers per training process: its CPUs less one for the process itself."""
    from kubernetes.utils import parse_quantity

    return max(0, int(parse_quantity(cpu_per_gpu)) - 1)
