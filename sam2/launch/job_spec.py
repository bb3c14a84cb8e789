"""The one place the cluster settings and a training request become a job spec, for either job kind.

`sam2.launch.pytorchjob.render_pytorchjob` renders it as a PyTorchJob, `sam2.launch.trainjob` as a TrainJob
(whose node pod is that PyTorchJob's Master pod), so both kinds run the same node with the same settings.
"""

from __future__ import annotations

from typing import Any

from sam2.launch.cluster_settings import ClusterSettings, dataloader_workers
from sam2.launch.launcher import TrainingRequest
from sam2.launch.pytorchjob import TrainingJobSpec, job_name_for

RUN_ID_LABEL = "sam2-kubeflow/run-id"


def job_spec_for(
    settings: ClusterSettings, request: TrainingRequest, owner: dict[str, Any] | None
) -> TrainingJobSpec:
    """The job spec of either kind for `request` under `settings` (the one place settings become a job)."""
    s = settings
    env = {"S3_ENDPOINT_URL": s.s3_endpoint_url} if s.s3_endpoint_url else {}
    overrides = list(request.node_args())
    if not any(arg.startswith("scratch.num_train_workers=") for arg in request.overrides):
        overrides.append(f"scratch.num_train_workers={dataloader_workers(s.cpu_per_gpu)}")
    return TrainingJobSpec(
        name=job_name_for(request.run_id),
        image=s.image,
        args=["--scratch-dir", "/scratch", *overrides],
        num_nodes=request.num_nodes,
        gpus_per_node=request.procs_per_node if request.use_gpus else 0,
        cpu_procs_per_node=request.procs_per_node,
        namespace=s.namespace,
        env=env,
        s3_secret_name=s.s3_secret_name,
        labels={RUN_ID_LABEL: job_name_for(request.run_id, prefix="run")},
        scratch_bytes=request.scratch_bytes,
        cpu_per_gpu=s.cpu_per_gpu,
        memory_per_gpu=s.memory_per_gpu,
        shm_per_gpu=s.shm_per_gpu,
        node_selector=dict(s.node_selector),
        tolerations=list(s.tolerations),
        priority_class=s.priority_class,
        active_deadline_seconds=max(1, int(s.timeout_s)),
        owner=owner,
        scheduler=s.scheduler,
        queue=s.queue,
        shared_data_pvc=s.shared_data_pvc,
    )
