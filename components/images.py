"""The container image every component runs in, overridable at compile time."""

from __future__ import annotations

import os

DEFAULT_IMAGE = "ghcr.io/sam2-kubeflow/sam2-kubeflow:0.1.0"
IMAGE_ENV = "SAM2_PIPELINE_IMAGE"


def component_image() -> str:
    """`$SAM2_PIPELINE_IMAGE` when set (your registry's build of docker/Dockerfile), else the default."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
