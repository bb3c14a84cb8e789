"""Loading a registered version (`models:/sam2-<data>@champion`) with the object-store settings it needs.

A registered version's folder lives in object storage (`s3://...`), which MLflow reads with boto3 from
`MLFLOW_S3_ENDPOINT_URL`. Without it boto3 goes to AWS (`<bucket>.s3.amazonaws.com`) and the load ends in a
botocore traceback; `load_registered_model` fills it from this package's own `S3_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`) when unset, and otherwise refuses in one line naming it.
"""

from __future__ import annotations

import os
from typing import Any

ARTIFACT_ENDPOINT_ENV = "MLFLOW_S3_ENDPOINT_URL"
_FALLBACK_ENVS = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def registered_source(model_uri: str) -> str:
    """Where the files of `model_uri` (`models:/<name>@<alias>` or `/<version>`) are stored."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    return ModelsArtifactRepository.get_underlying_uri(model_uri)


def ensure_artifact_endpoint(model_uri: str, environ: dict[str, str] | None = None) -> str:
    """The storage URI of `model_uri`, after making sure MLflow can read it: for an `s3://` source,
    `MLFLOW_S3_ENDPOINT_URL` is set (from S3_ENDPOINT_URL, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL when
    unset).

    Raises:
        ValueError: an `s3://` source and no endpoint anywhere (one line naming the variable and the source).
    """
    env = os.environ if environ is None else environ
    source = registered_source(model_uri)
    if not source.startswith("s3://") or env.get(ARTIFACT_ENDPOINT_ENV):
        return source
    fallback = next((env[name] for name in _FALLBACK_ENVS if env.get(name)), "")
    if not fallback:
        raise ValueError(
            f"{model_uri} is stored at {source}: set {ARTIFACT_ENDPOINT_ENV} to the object store's endpoint "
            "(e.g. http://127.0.0.1:8333 from .local/s3.env, or http://minio:9000 on the cluster) with "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; without it MLflow asks AWS for the bucket"
        )
    env[ARTIFACT_ENDPOINT_ENV] = fallback
    return source


def load_registered_model(model_uri: str) -> Any:
    """`mlflow.pyfunc.load_model(model_uri)` with the artifact endpoint checked first (see the module)."""
    import mlflow.pyfunc

    ensure_artifact_endpoint(model_uri)
    return mlflow.pyfunc.load_model(model_uri)
