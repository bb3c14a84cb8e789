"""What the train component needs besides the launcher: the cluster settings from its parameters."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sam2.launch.pytorchjob import DEFAULT_CPU_PER_GPU, DEFAULT_MEMORY_PER_GPU, DEFAULT_SHM_PER_GPU

if TYPE_CHECKING:
    from sam2.launch.kubeflow import ClusterSettings

logger = logging.getLogger(__name__)

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The fields of a core/v1 Toleration.
TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})


def cluster_settings(
    namespace: str,
    image: str,
    s3_endpoint_url: str,
    timeout_hours: float,
    cleanup: str,
    s3_secret_name: str,
    *,
    cpu_per_gpu: str = DEFAULT_CPU_PER_GPU,
    memory_per_gpu: str = DEFAULT_MEMORY_PER_GPU,
    shm_per_gpu: str = DEFAULT_SHM_PER_GPU,
    node_selector: dict | None = None,
    tolerations: list | None = None,
    priority_class: str = "",
    scheduler: str = "none",
    queue: str = "",
    pending_timeout_minutes: float = 30.0,
    env: Mapping[str, str] | None = None,
    shared_data_pvc: str = "",
) -> ClusterSettings:
    """Where the PyTorchJob runs: `namespace` (default: the namespace this pod runs in), the image (default:
    `component_image()`, which inside a pod is the default image: the pipeline passes the one it was compiled
    with), and the Secret `s3_secret_name` its pods read their S3 credentials from.

    The job's owner is this step's pod, from the downward API variables the pipeline sets (POD_NAME,
    POD_UID, POD_NAMESPACE in `env`, default os.environ); without them the job has no owner (a warning).
    `shared_data_pvc` (empty: none) is the ReadWriteMany claim the job's pods mount for the data set.
    Raises ValueError naming the parameter for a bad node selector, toleration, scheduler or queue.
    """
    from components.images import component_image
    from sam2.launch.kubeflow import ClusterSettings
    from sam2.launch.pytorchjob import SCHEDULERS, scale_quantity

    env = os.environ if env is None else env
    if not namespace:
        if not SA_NAMESPACE_FILE.exists():
            raise ValueError("namespace is empty and this is not a pod: pass the namespace to train in")
        namespace = SA_NAMESPACE_FILE.read_text().strip()
    if not image:
        image = component_image()
        logger.warning("train_model got no image: the PyTorchJob runs %s", image)
    for setting, value in (
        ("cpu_per_gpu", cpu_per_gpu),
        ("memory_per_gpu", memory_per_gpu),
        ("shm_per_gpu", shm_per_gpu),
    ):
        try:
            scale_quantity(value, 1)
        except ValueError as exc:
            raise ValueError(f"{setting}: {exc}") from None
    node_selector = dict(node_selector or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in node_selector.items()):
        raise ValueError(f"node_selector must map label names to string values, got {node_selector!r}")
    tolerations = list(tolerations or [])
    for item in tolerations:
        if not isinstance(item, dict) or not set(item) <= TOLERATION_KEYS:
            raise ValueError(
                f"each toleration must be an object with keys among {sorted(TOLERATION_KEYS)}, got {item!r}"
            )
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    if scheduler == "kueue" and not queue:
        raise ValueError("scheduler=kueue needs queue: the name of a Kueue LocalQueue in the namespace")
    owner = None
    if env.get("POD_NAME") and env.get("POD_UID"):
        owner = (env.get("POD_NAMESPACE") or namespace, env["POD_NAME"], env["POD_UID"])
    else:
        logger.warning(
            "POD_NAME/POD_UID are not set: the PyTorchJob gets no owner and outlives a deleted run "
            "(the step still deletes it when stopped)"
        )
    return ClusterSettings(
        namespace=namespace,
        image=image,
        s3_endpoint_url=s3_endpoint_url or None,
        s3_secret_name=s3_secret_name,
        timeout_s=timeout_hours * 3600,
        cleanup=cleanup,
        cpu_per_gpu=cpu_per_gpu,
        memory_per_gpu=memory_per_gpu,
        shm_per_gpu=shm_per_gpu,
        node_selector=node_selector,
        tolerations=tolerations,
        priority_class=priority_class or None,
        scheduler=scheduler,
        queue=queue or None,
        pending_timeout_s=pending_timeout_minutes * 60,
        owner_pod=owner,
        shared_data_pvc=shared_data_pvc.strip() or None,
    )
