"""`JobLauncher` on a Kubeflow cluster with Kubeflow Trainer v2: a TrainJob, created idempotently, watched,
logged, cleaned up (the same lifecycle and watch as the PyTorchJob: sam2.launch.job_lifecycle, job_watch).

Which Trainer it faces decides how the TrainJob carries the node pod (sam2.launch.trainjob): v2.2.0 and
newer take `spec.runtimePatches`, v2.1.0 `spec.podTemplateOverrides`, and each version's API server drops
the other's field. So every create asks for fieldValidation=Strict: the server then refuses an unknown
field with 400 instead of dropping it, and the launcher, which tries runtimePatches first, switches to
podTemplateOverrides when that is the field refused. A wrong guess costs one refused request, never a
setting. Pod settings the chosen form cannot carry (the security contexts and grace period under v2.1.0,
a priority class, Volcano gang scheduling, the owner watch's token) go into a TrainingRuntime the launcher
creates once in the namespace (named by a hash of its content) when the configured runtime is the stock
torch-distributed; with an admin's own runtime they are that runtime's, and the step's log names them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sam2.launch.cluster_settings import DEFAULT_TRAINER_RUNTIME, ClusterSettings
from sam2.launch.image_pull import add_image_pull_secrets
from sam2.launch.job_lifecycle import JobKind, JobLifecycle, condition, describe
from sam2.launch.job_spec import job_spec_for
from sam2.launch.job_watch import JobWatch
from sam2.launch.launcher import TrainingFailed, TrainingRequest, TrainingResult
from sam2.launch.owner_watch import OwnerPod, attach_owner_watch
from sam2.launch.trainjob import (
    NODE,
    POD_TEMPLATE_OVERRIDES,
    RUNTIME_PATCHES,
    TRAINER_APIS,
    TRAINER_GROUP,
    TRAINER_VERSION,
    TRAINING_RUNTIME_PLURAL,
    TRAINJOB_PLURAL,
    PodHook,
    RenderedTrainJob,
    RuntimeRef,
    render_training_runtime,
    render_trainjob,
)

logger = logging.getLogger(__name__)

JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# The JobSet (named as the TrainJob) labels its pods with its name; node 0 is the Job's completion index 0
# (JobSet api/jobset/v1alpha2/jobset_types.go JobSetNameKey; the batch Job controller). The TrainJob's
# conditions are Suspended, Complete, Failed (trainer pkg/apis/trainer/v1alpha1/trainjob_types.go).
TRAINJOB = JobKind(
    kind="TrainJob",
    group=TRAINER_GROUP,
    version=TRAINER_VERSION,
    plural=TRAINJOB_PLURAL,
    pod_label=JOBSET_NAME_LABEL,
    master_labels=f"{COMPLETION_INDEX_LABEL}=0",
    container=NODE,
    succeeded="Complete",
)


class UnknownFields(TrainingFailed):
    """The API server refused fields its TrainJob schema does not have (fieldValidation=Strict)."""


class RuntimeMissing(TrainingFailed):
    """The Trainer's webhook refused the TrainJob: the runtime it references does not exist."""


class TrainJobLauncher(JobWatch, JobLifecycle):
    """Creates (or attaches to) a TrainJob for a request and waits for it to finish.

    `api`: "runtimePatches" or "podTemplateOverrides" when known; None finds out (see module doc)."""

    KIND = TRAINJOB

    def __init__(
        self, settings: ClusterSettings, custom_api: Any = None, core_api: Any = None, api: str | None = None
    ) -> None:
        super().__init__(settings, custom_api, core_api)
        if api is not None and api not in TRAINER_APIS:
            raise ValueError(f"api must be one of {', '.join(TRAINER_APIS)} or None, got {api!r}")
        self.api = api
        self._request: TrainingRequest | None = None

    def _owner_watch(self) -> PodHook | None:
        """The node pod's additions: the owner watch (sam2.launch.owner_watch) and image pull Secrets."""
        s = self.settings
        if s.owner_pod is None and not s.image_pull_secrets:
            return None
        owner = OwnerPod(*s.owner_pod) if s.owner_pod is not None else None

        def customize(pod: dict[str, Any]) -> None:
            if owner is not None:
                attach_owner_watch(pod, NODE, owner, s.owner_poll_s)
            add_image_pull_secrets(pod, s.image_pull_secrets)

        return customize

    def render(self, request: TrainingRequest, api: str = RUNTIME_PATCHES) -> RenderedTrainJob:
        """The TrainJob for `request` in form `api`, referencing the configured runtime."""
        spec = job_spec_for(self.settings, request, self.owner_reference())
        runtime = RuntimeRef(self.settings.trainer_runtime, self.settings.trainer_runtime_kind)
        return render_trainjob(spec, api, runtime, self._owner_watch())

    def launch(self, request: TrainingRequest) -> TrainingResult:
        """Run the request's TrainJob to the end (see `JobLifecycle.run`)."""
        self._request = request
        return self.run(self.render(request, self.api or RUNTIME_PATCHES).trainjob, request, "trainjob")

    # -- creation: the form the server takes, and the runtime the form needs --------------------------------

    def create(self, job: dict[str, Any]) -> dict[str, Any]:
        """Create (or attach to) the TrainJob in the form this Trainer takes (module doc)."""
        request = self._request
        if request is None:  # called without launch(): the job as given
            return self.create_or_attach(job)
        order = [self.api] if self.api else [RUNTIME_PATCHES, POD_TEMPLATE_OVERRIDES]
        for i, api in enumerate(order):
            trainjob, runtime = self._pointed_at_runtime(self.render(request, api), request)
            try:
                try:
                    created = self.create_or_attach(trainjob)
                except RuntimeMissing:
                    if runtime is None:
                        raise
                    self._ensure_runtime(runtime)
                    created = self.create_or_attach(trainjob)
            except UnknownFields as exc:
                if i + 1 == len(order):
                    raise
                logger.info(
                    "the TrainJob API here has no spec.%s (%s): a Kubeflow Trainer before v2.2.0; using spec.%s",
                    api,
                    exc,
                    order[i + 1],
                )
                continue
            self.api = api
            logger.info(
                "TrainJob %s/%s: node pod settings through spec.%s (Kubeflow Trainer %s)",
                self.settings.namespace,
                job["metadata"]["name"],
                api,
                ">= v2.2.0" if api == RUNTIME_PATCHES else "v2.1",
            )
            return created
        raise AssertionError("unreachable")  # pragma: no cover

    def _pointed_at_runtime(
        self, rendered: RenderedTrainJob, request: TrainingRequest
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The TrainJob, pointed at a runtime that holds the settings its form cannot carry, and that
        runtime when the launcher provides it (module doc). The runtime is created only when the server
        says it is missing: the API server refuses a form's unknown field before the Trainer's webhook looks
        for the runtime, so a wrong guess of the form leaves no runtime behind."""
        s = self.settings
        missing = sorted(rendered.runtime_fields)
        if not missing:
            return rendered.trainjob, None
        if s.trainer_runtime != DEFAULT_TRAINER_RUNTIME or s.trainer_runtime_kind != "ClusterTrainingRuntime":
            logger.warning(
                "spec.%s of a TrainJob cannot carry %s: the runtime %s %s must set them (its pods do not get "
                "them from the TrainJob)",
                rendered.api,
                ", ".join(missing),
                s.trainer_runtime_kind,
                s.trainer_runtime,
            )
            return rendered.trainjob, None
        spec = job_spec_for(s, request, self.owner_reference())
        runtime = render_training_runtime(spec, rendered.api, self._owner_watch())
        name = runtime["metadata"]["name"]
        logger.info(
            "spec.%s of a TrainJob cannot carry %s: they are in TrainingRuntime %s/%s (torch-distributed's "
            "shape with this project's node pod), which the TrainJob references",
            rendered.api,
            ", ".join(missing),
            s.namespace,
            name,
        )
        again = render_trainjob(spec, rendered.api, RuntimeRef(name, "TrainingRuntime"), self._owner_watch())
        return again.trainjob, runtime

    def _ensure_runtime(self, runtime: dict[str, Any]) -> None:
        """Create the TrainingRuntime unless it exists (its name is a hash of its content)."""
        from kubernetes.client.exceptions import ApiException

        ns, name = self.settings.namespace, runtime["metadata"]["name"]
        try:
            self._api(
                f"creating TrainingRuntime {ns}/{name}",
                self.custom.create_namespaced_custom_object,
                TRAINER_GROUP,
                TRAINER_VERSION,
                ns,
                TRAINING_RUNTIME_PLURAL,
                runtime,
                field_validation="Strict",
            )
            logger.info("created TrainingRuntime %s/%s", ns, name)
        except ApiException as exc:
            if exc.status != 409:
                raise TrainingFailed(
                    f"could not create TrainingRuntime {ns}/{name}: {exc.status} {exc.reason} "
                    f"{_status_message(exc)}; grant create on trainingruntimes (k8s/rbac.yaml) or apply "
                    "k8s/trainjob.yaml's runtime and set trainer_runtime"
                ) from exc

    def _create(self, job: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
        return super()._create(job, field_validation="Strict", **kwargs)

    def _create_refused(self, name: str, exc: Any) -> Exception:
        message = _status_message(exc)
        if exc.status == 400 and "unknown field" in message:
            return UnknownFields(message)
        if exc.status == 422 and "must be created before" in message:
            return RuntimeMissing(message)
        return TrainingFailed(
            f"could not create {self._what(name)}: {exc.status} {exc.reason} {message}".rstrip()
        )

    # -- what the watch needs -----------------------------------------------------------------------------

    def expected_pods(self, job: dict[str, Any]) -> int:
        return int((job.get("spec", {}).get("trainer") or {}).get("numNodes", 1))

    def suspended(self, job: dict[str, Any]) -> bool:
        return bool(condition(job, "Suspended") or job.get("spec", {}).get("suspend"))


def _status_message(exc: Any) -> str:
    """The `message` of the Status object an API error carries ('' when there is none)."""
    try:
        return str(json.loads(getattr(exc, "body", None) or "{}").get("message", ""))
    except (TypeError, ValueError):
        return describe(exc)
