"""Submit or schedule the compiled pipeline on a Kubeflow Pipelines endpoint (KFP_HOST)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from pipelines.compile import compile_pipeline
from pipelines.sam2_finetune import PIPELINE_NAME

logger = logging.getLogger(__name__)

# Every step runs as this account; k8s/rbac.yaml grants it PyTorchJobs, their pods and logs, and what the
# KFP driver/launcher and Argo's executor need.
DEFAULT_SERVICE_ACCOUNT = "sam2-pipeline"


def _package() -> str:
    """Compile afresh (with this shell's SAM2_PIPELINE_IMAGE) into a temp file, leaving the committed one."""
    return str(compile_pipeline(Path(tempfile.mkdtemp(prefix="sam2-pipeline-")) / "sam2_finetune.yaml"))


def client(host: str, namespace: str | None = None):
    import kfp

    return kfp.Client(host=host, namespace=namespace)


def submit(
    host: str,
    arguments: dict[str, Any],
    experiment: str = PIPELINE_NAME,
    namespace: str | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    wait_timeout_s: float | None = None,
) -> str:
    """Start one run of the compiled pipeline; returns its run id (waits for it when a timeout is given)."""
    kfp_client = client(host, namespace)
    run = kfp_client.create_run_from_pipeline_package(
        _package(),
        arguments=arguments,
        experiment_name=experiment,
        namespace=namespace,
        service_account=service_account,
        enable_caching=None,
    )
    logger.info("submitted run %s to %s", run.run_id, host)
    if wait_timeout_s:
        result = kfp_client.wait_for_run_completion(run.run_id, timeout=wait_timeout_s)
        state = getattr(result, "state", None)
        if state != "SUCCEEDED":
            raise RuntimeError(f"run {run.run_id} ended as {state}; see the KFP UI at {host}")
    return run.run_id


def schedule(
    host: str,
    arguments: dict[str, Any],
    cron: str,
    job_name: str,
    experiment: str = PIPELINE_NAME,
    namespace: str | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
) -> str:
    """Create a recurring run (KFP cron: six fields, seconds first); returns its id."""
    if len(cron.split()) != 6:
        raise ValueError(
            f"KFP cron expressions have six fields (seconds first), e.g. '0 0 3 * * 0'; got {cron!r}"
        )
    kfp_client = client(host, namespace)
    exp = kfp_client.create_experiment(experiment, namespace=namespace)
    job = kfp_client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name=job_name,
        cron_expression=cron,
        pipeline_package_path=_package(),
        params=arguments,
        service_account=service_account,
        max_concurrency=1,
        no_catchup=True,
    )
    return job.recurring_run_id
