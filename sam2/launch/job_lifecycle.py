"""The life of a training job on the cluster, for either kind: create or adopt, API retries, cleanup, signals.

A job is named after the run id, so a retried pipeline step attaches to the job it created before instead of
starting a second one (one that Failed, kept by cleanup=on-success, is deleted and created anew; training
resumes from the run's newest checkpoint). Its lifetime is tied to the step's: it carries an ownerReference
to the step's pod (garbage-collected with the run), and the step deletes it on SIGTERM/SIGINT and when it
gives up on it. API calls are retried on transient errors (429, 5xx, a dropped connection) for up to
`api_retry_s`. What differs between kinds is a `JobKind` (API group, names, labels, conditions); the watch
(pods, events, logs, failure diagnosis) is `sam2.launch.job_watch`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sam2.launch.cluster_settings import ClusterSettings
from sam2.launch.launcher import TrainingFailed, TrainingRequest, TrainingResult

logger = logging.getLogger(__name__)

LOG_DRAIN_S = 60.0  # how long a finished launch waits for the log stream to write the job's last lines
# Answers worth asking again: too many requests, and the server errors a restarting or overloaded API
# server (or the proxy in front of it) gives; other 4xx are the request's fault and are final.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
T = TypeVar("T")


@dataclass(frozen=True)
class JobKind:
    """What the lifecycle and the watch need to know about one kind of training job.

    `pod_label`: the label the controller puts on every pod of job <name> (value: the job's name);
    `master_labels`: extra labels that pick the node of rank 0 (whose log is streamed); `container`: the
    training container's name; `succeeded` / `failed`: the condition types that end the job.
    """

    kind: str
    group: str
    version: str
    plural: str
    pod_label: str
    master_labels: str
    container: str
    succeeded: str
    failed: str = "Failed"

    @property
    def kubectl(self) -> str:
        return self.kind.lower()

    def pod_selector(self, name: str) -> str:
        return f"{self.pod_label}={name}"

    def master_selector(self, name: str) -> str:
        return f"{self.pod_label}={name},{self.master_labels}"


def is_transient(exc: BaseException) -> bool:
    """True for an API error worth retrying: 429, 5xx, or no answer at all (connection refused or reset,
    a read timeout), as the kubernetes client raises them (ApiException, urllib3 errors, OSError)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUSES or not exc.status
    return isinstance(exc, (Urllib3Error, ConnectionError, TimeoutError, OSError))


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    try:
        return float(headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None


def condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The job's condition of type `kind` when it is True, else None."""
    for cond in job.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind and str(cond.get("status")) == "True":
            return cond
    return None


def describe(exc: BaseException) -> str:
    """An API error as '<status> <reason>', anything else as '<type>: <message>'."""
    status = getattr(exc, "status", None)
    if status:
        return f"{status} {getattr(exc, 'reason', '') or ''}".strip()
    return f"{type(exc).__name__}: {exc}"


class JobFailed(TrainingFailed):
    """The controller marked the job Failed (it is over; `cleanup` decides whether it is kept)."""


class Terminated(BaseException):
    """The step got SIGTERM or SIGINT (the run was terminated or the pod deleted): stop and clean up.

    A BaseException, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _log_repeated_signal(signum: int, _frame: Any) -> None:
    logger.warning("got %s while cleaning up; finishing the cleanup first", signal.Signals(signum).name)


class JobLifecycle:
    """Create-or-adopt, retried API calls, cleanup and signal handling for the job kind `KIND`.

    Subclasses set `KIND`, render the job and provide `wait` / `_stream_master_log` (`JobWatch`)."""

    KIND: JobKind

    def __init__(self, settings: ClusterSettings, custom_api: Any = None, core_api: Any = None) -> None:
        self.settings = settings
        if custom_api is None or core_api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            custom_api = custom_api or client.CustomObjectsApi()
            core_api = core_api or client.CoreV1Api()
        self.custom = custom_api
        self.core = core_api

    def _what(self, name: str) -> str:
        return f"{self.KIND.kind} {self.settings.namespace}/{name}"

    def owner_reference(self) -> dict[str, Any] | None:
        """The ownerReference to the step's pod, or None (no pod known, or another namespace)."""
        if self.settings.owner_pod is None:
            return None
        namespace, name, uid = self.settings.owner_pod
        if namespace != self.settings.namespace:
            logger.warning(
                "the %s goes to namespace %s, this step runs in %s: Kubernetes allows no owner in another "
                "namespace, so the job is not garbage-collected with the run (the step still deletes it when "
                "stopped)",
                self.KIND.kind,
                self.settings.namespace,
                namespace,
            )
            return None
        # No blockOwnerDeletion: setting it needs update on pods/finalizers (OwnerReferencesPermissionEnforcement).
        return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}

    # -- API calls ---------------------------------------------------------------------------------------

    def _api(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, asked again with backoff (1 s doubling to 30 s, or the server's
        Retry-After) while the API answers 429/5xx or not at all; `TrainingFailed` after `api_retry_s`
        without an answer. Other errors are raised at once."""
        deadline: float | None = None
        delay = min(1.0, self.settings.poll_s)
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.settings.api_retry_s
                if now >= deadline:
                    raise TrainingFailed(
                        f"the Kubernetes API gave no answer {what} for {self.settings.api_retry_s:g}s "
                        f"(api_retry_s); last error: {describe(exc)}"
                    ) from exc
                pause = min(_retry_after(exc) or delay, 30.0, max(deadline - now, 0.0))
                logger.warning("%s: %s; asking again in %.1fs", what, describe(exc), pause)
                time.sleep(pause)
                delay = min(delay * 2, 30.0)

    def create_or_attach(self, job: dict[str, Any]) -> dict[str, Any]:
        """Create `job`; when one of that name exists already (a retried step), use that one instead.

        A running or finished-successfully job is attached to (returned; `wait` then sees it finish), and
        this step's pod is added to its owners, so deleting this attempt's run still collects it. A Failed one
        (kept by cleanup=on-success) or one being deleted would fail the retry at once, forever: it is
        deleted, its pods with it, and once it is gone `job` is created anew; its training resumes from the
        newest checkpoint of the run in S3. Raises `TrainingFailed` when the API refuses to create the job or
        the old one is not gone within `delete_timeout_s`.
        """
        name = job["metadata"]["name"]
        what = self._what(name)
        created = self._create(job)
        if created is not None:
            logger.info("created %s", what)
            return created
        existing = self._get(name)
        if existing is not None:
            failed = condition(existing, self.KIND.failed)
            if not failed and not existing.get("metadata", {}).get("deletionTimestamp"):
                state = "it succeeded" if condition(existing, self.KIND.succeeded) else "it has not finished"
                logger.info("%s exists already (%s); attaching to it", what, state)
                self._adopt(existing)
                return existing
            why = f"it failed ({failed.get('reason', '?')})" if failed else "it is being deleted"
            logger.warning(
                "%s exists already and %s: deleting it and creating it anew (training resumes from the run's "
                "newest checkpoint)",
                what,
                why,
            )
            self._delete_and_wait(name)
        created = self._create(job)
        if created is None:  # another attempt of this step created it in the meantime
            logger.info("%s was created meanwhile; attaching to it", what)
            return self._read(name)
        logger.info("created %s anew", what)
        return created

    def _adopt(self, existing: dict[str, Any]) -> None:
        """Add this step's pod to the owners of a job an earlier attempt created (best effort)."""
        from kubernetes.client.exceptions import ApiException

        owner = self.owner_reference()
        if owner is None:
            return
        owners = list(existing.get("metadata", {}).get("ownerReferences") or [])
        if any(o.get("uid") == owner["uid"] for o in owners):
            return
        name, k = existing["metadata"]["name"], self.KIND
        try:
            self._api(
                f"adding this pod to the owners of {self._what(name)}",
                self.custom.patch_namespaced_custom_object,
                k.group,
                k.version,
                self.settings.namespace,
                k.plural,
                name,
                {"metadata": {"ownerReferences": [*owners, owner]}},
            )
            logger.info("%s is now also owned by pod %s", self._what(name), owner["name"])
        except (ApiException, TrainingFailed) as exc:
            logger.warning(
                "could not add pod %s to the owners of %s (%s): deleting the earlier attempt's pod would "
                "delete the job; grant patch on %s (k8s/rbac.yaml)",
                owner["name"],
                self._what(name),
                describe(exc),
                k.plural,
            )

    def _create(self, job: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
        """The created job, or None when one of that name exists; `kwargs` go to the API call."""
        from kubernetes.client.exceptions import ApiException

        name, k = job["metadata"]["name"], self.KIND
        try:
            return self._api(
                f"creating {self._what(name)}",
                self.custom.create_namespaced_custom_object,
                k.group,
                k.version,
                self.settings.namespace,
                k.plural,
                job,
                **kwargs,
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise self._create_refused(name, exc) from exc

    def _create_refused(self, name: str, exc: Any) -> Exception:
        """The error for an API server that refused to create the job (a kind may say more)."""
        return TrainingFailed(f"could not create {self._what(name)}: {exc.status} {exc.reason}")

    def _read(self, name: str) -> dict[str, Any]:
        """The job as the API server has it now; `ApiException` (404 included) when it answers no."""
        k = self.KIND
        return self._api(
            f"reading {self._what(name)}",
            self.custom.get_namespaced_custom_object,
            k.group,
            k.version,
            self.settings.namespace,
            k.plural,
            name,
        )

    def _get(self, name: str) -> dict[str, Any] | None:
        """The job, or None when there is none of that name."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._read(name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _delete(self, name: str, propagation_policy: str) -> None:
        """Delete the job (404: already gone); `ApiException` for other refusals."""
        from kubernetes.client.exceptions import ApiException

        k = self.KIND
        try:
            self._api(
                f"deleting {self._what(name)}",
                self.custom.delete_namespaced_custom_object,
                k.group,
                k.version,
                self.settings.namespace,
                k.plural,
                name,
                propagation_policy=propagation_policy,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _delete_and_wait(self, name: str) -> None:
        """Delete the job in the foreground (its pods go first) and wait until it is gone, so the new job's
        pods, which have the same names, do not meet the old ones."""
        from kubernetes.client.exceptions import ApiException

        ns, what = self.settings.namespace, self._what(name)
        try:
            self._delete(name, "Foreground")
        except ApiException as exc:
            raise TrainingFailed(
                f"could not delete the old {what}: {exc.status} {exc.reason}; delete it with "
                f"`kubectl -n {ns} delete {self.KIND.kubectl} {name}` and retry"
            ) from exc
        deadline = time.monotonic() + self.settings.delete_timeout_s
        while self._get(name) is not None:
            if time.monotonic() > deadline:
                raise TrainingFailed(
                    f"the old {what} was deleted but is still there after "
                    f"{self.settings.delete_timeout_s:.0f}s (delete_timeout_s); see `kubectl -n {ns} get "
                    f"{self.KIND.kubectl} {name} -o yaml` (finalizers) and the job's pods"
                )
            time.sleep(min(self.settings.poll_s, 5.0))
        logger.info("%s is gone", what)

    def _cleanup(self, name: str, succeeded: bool, force: bool = False) -> None:
        """Delete the job as `cleanup` says; `force` deletes it anyway (the step was stopped or gave up, so
        nobody would watch it), its pods with it."""
        from kubernetes.client.exceptions import ApiException

        policy = self.settings.cleanup
        if not force and (policy == "never" or (policy == "on-success" and not succeeded)):
            return
        try:
            self._delete(name, "Background")
            why = "the step stopped" if force else f"cleanup={policy}"
            logger.info("deleted %s (%s)", self._what(name), why)
        except (ApiException, TrainingFailed) as exc:
            ns = self.settings.namespace
            logger.warning(
                "could not delete %s: %s; delete it with `kubectl -n %s delete %s %s`",
                self._what(name),
                describe(exc),
                ns,
                self.KIND.kubectl,
                name,
            )

    # -- the run -----------------------------------------------------------------------------------------

    def create(self, job: dict[str, Any]) -> dict[str, Any]:
        """Bring `job` onto the cluster (create or attach); a kind may do more (see TrainJobLauncher)."""
        return self.create_or_attach(job)

    def run(self, job: dict[str, Any], request: TrainingRequest, launcher: str) -> TrainingResult:
        """Run `job` to the end. On SIGTERM/SIGINT the job is deleted and the step fails; when the step
        gives up on a job that is not over (its timeout, the pending timeout, pods replaced past the limit,
        the API away for `api_retry_s`) it is deleted too, unless cleanup=never."""
        name, what = job["metadata"]["name"], self._what(job["metadata"]["name"])
        start = time.monotonic()
        log_thread = None
        job_over = threading.Event()
        succeeded, force_delete = False, False
        previous = self._install_signal_handlers()
        try:
            try:
                self.create(job)
                if self.settings.stream_logs:
                    log_thread = threading.Thread(
                        target=self._stream_master_log, args=(name, job_over), name=f"log-{name}", daemon=True
                    )
                    log_thread.start()
                final = self.wait(name)
                succeeded = True
            except Terminated as stop:
                force_delete = True
                raise TrainingFailed(
                    f"the train step got {stop}: deleted {what} and its pods; a retried step creates it anew "
                    "and resumes from the run's newest checkpoint"
                ) from None
            except JobFailed:
                raise
            except Exception:
                # The step gives up on a job that is not over (timeout, pending timeout, too many replaced
                # pods, an API that stays away): nobody would watch it, so it goes unless cleanup=never.
                force_delete = self.settings.cleanup != "never"
                raise
            finally:
                if previous is not None:  # a second SIGTERM must not cut the cleanup short
                    for signum in previous:
                        signal.signal(signum, _log_repeated_signal)
                job_over.set()
                if force_delete:  # first thing: KFP's terminate kills this process milliseconds later
                    self._cleanup(name, succeeded, force_delete)
                if log_thread is not None:
                    log_thread.join(5.0 if force_delete else LOG_DRAIN_S)
                if not force_delete:
                    self._cleanup(name, succeeded, force_delete)
        finally:
            self._restore_signal_handlers(previous)
        status = final.get("status", {})
        return TrainingResult(
            request.run_id,
            f"{request.run_uri.rstrip('/')}/checkpoints",
            f"{request.run_uri.rstrip('/')}/tensorboard",
            time.monotonic() - start,
            {
                "launcher": launcher,
                "job": f"{self.settings.namespace}/{name}",
                "completion": str(
                    status.get("completionTime")
                    or (condition(final, self.KIND.succeeded) or {}).get("lastTransitionTime", "")
                ),
            },
        )

    def _install_signal_handlers(self) -> dict[int, Any] | None:
        """SIGTERM and SIGINT raise `Terminated` in the waiting (main) thread; None where handlers cannot
        be set (not the main thread) or are not wanted.

        This process sees the step pod's SIGTERM: Argo's emissary (the container's PID 1) starts the
        command in a process group of its own and forwards signals to the whole group
        (argo-workflows workflow/executor/osspecific: Setpgid, Kill(-pgid)), and KFP's launcher runs this
        Python as a plain child in that group (kubeflow/pipelines backend/src/v2/component/launcher_v2.go,
        exec.Command)."""
        if not self.settings.handle_signals or threading.current_thread() is not threading.main_thread():
            return None

        def stop(signum: int, _frame: Any) -> None:
            raise Terminated(signum)

        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, stop)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any] | None) -> None:
        for signum, handler in (previous or {}).items():
            signal.signal(signum, handler)
