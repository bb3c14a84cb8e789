"""`JobLauncher` on a Kubeflow cluster with the Training Operator: a PyTorchJob, created idempotently,
watched, logged, cleaned up.

The job is rendered from `k8s/pytorchjob.yaml` (see `sam2.launch.pytorchjob`); its life (create or adopt,
retries, cleanup, signals) is `sam2.launch.job_lifecycle`, its watch (pods, events, logs, failure diagnosis)
`sam2.launch.job_watch`, both shared with the TrainJob launcher (`sam2.launch.trainjob_launcher`). The
operator also stops the job at `activeDeadlineSeconds` (the step's timeout) when nobody watches it.
"""

from __future__ import annotations

from typing import Any

from sam2.launch.cluster_settings import CLEANUP_POLICIES, ClusterSettings, dataloader_workers
from sam2.launch.image_pull import add_image_pull_secrets
from sam2.launch.job_lifecycle import JobFailed, JobKind, JobLifecycle, condition, is_transient
from sam2.launch.job_spec import job_spec_for
from sam2.launch.job_watch import JobWatch, PendingTimeout
from sam2.launch.job_watch import lines as _lines
from sam2.launch.launcher import TrainingRequest, TrainingResult
from sam2.launch.owner_watch import OwnerPod, attach_owner_watch_to_pytorchjob
from sam2.launch.pytorchjob import CONTAINER_NAME, render_pytorchjob

# Names other modules and tests import from here.
__all__ = [
    "CLEANUP_POLICIES",
    "ClusterSettings",
    "JobFailed",
    "PendingTimeout",
    "PyTorchJobLauncher",
    "_lines",
    "dataloader_workers",
    "is_transient",
    "job_spec_for",
]

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
# Pods are labelled with the job's name and replica type (training-operator v1.9
# pkg/controller.v1/common/pod.go); the operator's conditions are Created/Running/Restarting/Succeeded/Failed.
PYTORCHJOB = JobKind(
    kind="PyTorchJob",
    group=GROUP,
    version=VERSION,
    plural=PLURAL,
    pod_label=JOB_NAME_LABEL,
    master_labels=f"{REPLICA_TYPE_LABEL}=master",
    container=CONTAINER_NAME,
    succeeded="Succeeded",
)


class PyTorchJobLauncher(JobWatch, JobLifecycle):
    """Creates (or attaches to) a PyTorchJob for a request and waits for it to finish."""

    KIND = PYTORCHJOB

    def render(self, request: TrainingRequest) -> dict[str, Any]:
        """The PyTorchJob this launcher creates for `request`."""
        s = self.settings
        job = render_pytorchjob(job_spec_for(s, request, self.owner_reference()))
        if s.owner_pod is not None:  # its nodes end the job when the step's pod is over (owner_watch)
            attach_owner_watch_to_pytorchjob(job, OwnerPod(*s.owner_pod), s.owner_poll_s)
        for replica in job["spec"]["pytorchReplicaSpecs"].values():
            add_image_pull_secrets(replica["template"]["spec"], s.image_pull_secrets)
        return job

    def launch(self, request: TrainingRequest) -> TrainingResult:
        """Run the request's PyTorchJob to the end (see `JobLifecycle.run`)."""
        return self.run(self.render(request), request, "pytorchjob")

    def expected_pods(self, job: dict[str, Any]) -> int:
        replicas = job.get("spec", {}).get("pytorchReplicaSpecs", {}) or {}
        return sum(int(r.get("replicas", 1)) for r in replicas.values())

    def suspended(self, job: dict[str, Any]) -> bool:
        return bool(condition(job, "Suspended") or job.get("spec", {}).get("runPolicy", {}).get("suspend"))

    def replacement_limit(self, job: dict[str, Any]) -> int | None:
        """runPolicy.backoffLimit under restartPolicy ExitCode, where the operator replaces a failed pod
        (restartCount 0) and so counts nothing against it."""
        spec = job.get("spec", {})
        replicas = spec.get("pytorchReplicaSpecs", {}) or {}
        limit = spec.get("runPolicy", {}).get("backoffLimit")
        if limit is None or not any(r.get("restartPolicy") == "ExitCode" for r in replicas.values()):
            return None
        return int(limit)
