"""What the train component needs besides the launcher: the cluster settings from its parameters."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sam2.launch.cluster_settings import (
    DEFAULT_CPU_PER_GPU,
    DEFAULT_MEMORY_PER_GPU,
    DEFAULT_SHM_PER_GPU,
    DEFAULT_TRAINER_RUNTIME,
)
from sam2.launch.image_pull import parse_image_pull_secrets

if TYPE_CHECKING:
    from sam2.launch.cluster_settings import ClusterSettings

logger = logging.getLogger(__name__)

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


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
    trainer_runtime: str = DEFAULT_TRAINER_RUNTIME,
    image_pull_secrets: str = "",
    queue_timeout_minutes: float = 0.0,
) -> ClusterSettings:
    """The train step's parameters as the one `ClusterSettings` every cluster launcher reads (it checks
    them where it is built and raises ValueError naming the parameter at fault). Fills in what the pod
    knows: `namespace` (default: the namespace this pod runs in), the image (default: `component_image()`,
    which inside a pod is the default image: the pipeline passes the one it was compiled with).

    The job's owner is this step's pod, from the downward API variables the pipeline sets (POD_NAME,
    POD_UID, POD_NAMESPACE in `env`, default os.environ); without them the job has no owner (a warning).
    `shared_data_pvc` (empty: none) is the ReadWriteMany claim the job's pods mount for the data set;
    `trainer_runtime` the Kubeflow Trainer runtime a TrainJob references.
    `image_pull_secrets`: docker-registry Secret names (comma-separated) the job's pods pull with;
    `queue_timeout_minutes`: how long the job may wait suspended in its Kueue queue (0: forever).
    """
    from components.images import component_image
    from sam2.launch.cluster_settings import ClusterSettings

    env = os.environ if env is None else env
    if not namespace:
        if not SA_NAMESPACE_FILE.exists():
            raise ValueError("namespace is empty and this is not a pod: pass the namespace to train in")
        namespace = SA_NAMESPACE_FILE.read_text().strip()
    if not image:
        image = component_image()
        logger.warning("train_model got no image: the training job runs %s", image)
    owner = None
    if env.get("POD_NAME") and env.get("POD_UID"):
        owner = (env.get("POD_NAMESPACE") or namespace, env["POD_NAME"], env["POD_UID"])
    else:
        logger.warning(
            "POD_NAME/POD_UID are not set: the training job gets no owner and outlives a deleted run "
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
        node_selector=dict(node_selector or {}),
        tolerations=list(tolerations or []),
        priority_class=priority_class or None,
        scheduler=scheduler,
        queue=queue or None,
        pending_timeout_s=pending_timeout_minutes * 60,
        owner_pod=owner,
        shared_data_pvc=shared_data_pvc.strip() or None,
        trainer_runtime=trainer_runtime or DEFAULT_TRAINER_RUNTIME,
        image_pull_secrets=parse_image_pull_secrets(image_pull_secrets),
        queue_timeout_s=queue_timeout_minutes * 60,
    )
