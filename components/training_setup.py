"""What the train component needs besides the launcher: config names, a random init, cluster settings."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sam2.launch.kubeflow import ClusterSettings

logger = logging.getLogger(__name__)

MODEL_SIZES = ("t", "s", "b+", "l")
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def model_configs(model_size: str) -> tuple[str, str]:
    """(model config, training config) names for a model size: t, s, b+ or l."""
    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size must be one of {', '.join(MODEL_SIZES)}, got {model_size!r}")
    return (
        f"configs/sam2.1/sam2.1_hiera_{model_size}.yaml",
        f"configs/sam2.1_training/sam2.1_hiera_{model_size}_MOSE_finetune.yaml",
    )


def random_init_checkpoint(model_config: str, target_uri: str, seed: int) -> str:
    """Build the model with random weights (seeded, so reruns match) and store it at `target_uri` (s3://).

    Stands in for the official SAM 2.1 weights, which cannot be downloaded here; a model trained from it
    is only a smoke test of the pipeline.
    """
    import torch

    from sam2.build_sam import build_sam2
    from sam2.storage import ObjectStore

    store = ObjectStore()
    if store.exists(target_uri):
        return target_uri
    torch.manual_seed(seed)
    model = build_sam2(model_config, None, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random_init.pt"
        torch.save({"model": model.state_dict()}, path)
        store.upload_file(path, target_uri)
    logger.warning("made a RANDOM-WEIGHT initial checkpoint %s (not SAM 2.1 weights)", target_uri)
    return target_uri


def cluster_settings(
    namespace: str,
    image: str,
    s3_endpoint_url: str,
    timeout_hours: float,
    cleanup: str,
    s3_secret_name: str,
) -> ClusterSettings:
    """Where the PyTorchJob runs: `namespace` (default: the namespace this pod runs in), the image (default:
    `component_image()`, which inside a pod is the default image: the pipeline passes the one it was compiled
    with), and the Secret `s3_secret_name` its pods read their S3 credentials from."""
    from components.images import component_image
    from sam2.launch.kubeflow import ClusterSettings

    if not namespace:
        if not SA_NAMESPACE_FILE.exists():
            raise ValueError("namespace is empty and this is not a pod: pass the namespace to train in")
        namespace = SA_NAMESPACE_FILE.read_text().strip()
    if not image:
        image = component_image()
        logger.warning("train_model got no image: the PyTorchJob runs %s", image)
    return ClusterSettings(
        namespace=namespace,
        image=image,
        s3_endpoint_url=s3_endpoint_url or None,
        s3_secret_name=s3_secret_name,
        timeout_s=timeout_hours * 3600,
        cleanup=cleanup,
    )
