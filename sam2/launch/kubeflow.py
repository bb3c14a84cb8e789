"""`JobLauncher` on a Kubeflow cluster: a PyTorchJob created idempotently, watched, logged, cleaned up.

The job is rendered from `k8s/pytorchjob.yaml` (see `sam2.launch.pytorchjob`) and named after the run id,
so a retried pipeline step attaches to the job it created before instead of starting a second one (one that
Failed, kept by cleanup=on-success, is deleted and created anew; training resumes from the run's newest
checkpoint). The job's lifetime is tied to the step's: it carries an ownerReference to the step's pod
(garbage-collected with the run), the step deletes it on SIGTERM/SIGINT and on its own timeout, and the
operator stops it at `activeDeadlineSeconds`. While it waits, the step logs each pod's phase changes and
the scheduler's events, and gives up after `pending_timeout_s` with the scheduler's last message. API calls
are retried on transient errors (429, 5xx, a dropped connection) for up to `api_retry_s`. The master's log
is streamed into this process's log, every attempt of it, until the job is over; when the job fails, the
reason comes from the job's conditions, the pods' container states and the failed pods' last log lines
(any replica).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sam2.launch.launcher import TrainingFailed, TrainingRequest, TrainingResult
from sam2.launch.owner_watch import DEFAULT_POLL_S as DEFAULT_OWNER_POLL_S
from sam2.launch.owner_watch import OwnerPod, attach_owner_watch_to_pytorchjob
from sam2.launch.pytorchjob import (
    DEFAULT_CPU_PER_GPU,
    DEFAULT_MEMORY_PER_GPU,
    DEFAULT_SHM_PER_GPU,
    PyTorchJobSpec,
    job_name_for,
    render_pytorchjob,
)

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
CLEANUP_POLICIES = ("never", "on-success", "always")
CONTAINER = "pytorch"  # the container name the operator requires (see sam2.launch.pytorchjob)
LOG_DRAIN_S = 60.0  # how long a finished launch waits for the log stream to write the job's last lines
FAILED_LOG_LINES = 40  # the last lines of each failed pod's log that go into the step's error
# Answers worth asking again: too many requests, and the server errors a restarting or overloaded API
# server (or the proxy in front of it) gives; other 4xx are the request's fault and are final.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# Event reasons that explain a pod that does not start (kubelet and scheduler reasons).
WAITING_REASONS = frozenset(
    {
        "FailedScheduling",
        "BackOff",
        "Failed",
        "ErrImagePull",
        "ImagePullBackOff",
        "FailedMount",
        "FailedCreatePodSandBox",
        "Preempted",
        "Evicted",
        "NotTriggerScaleUp",
    }
)
T = TypeVar("T")


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how jobs run on the cluster.

    `owner_pod` is (namespace, name, uid) of the pod that creates the job (the step's, from the downward
    API): the job gets an ownerReference to it when it is in the same namespace (Kubernetes ignores a
    cross-namespace owner and would delete the job at once). `pending_timeout_s` 0 waits forever.
    `shared_data_pvc`: a ReadWriteMany claim (k8s/shared-data-pvc.yaml) every replica mounts at
    /shared-data to stage the data set there once and reuse it; None: none.
    """

    namespace: str
    image: str
    s3_endpoint_url: str | None = None
    s3_secret_name: str = "sam2-s3-credentials"
    cpu: str | None = None
    memory: str | None = None
    timeout_s: float = 3 * 24 * 3600.0
    poll_s: float = 15.0
    cleanup: str = "on-success"
    stream_logs: bool = True
    delete_timeout_s: float = 600.0
    cpu_per_gpu: str = DEFAULT_CPU_PER_GPU
    memory_per_gpu: str = DEFAULT_MEMORY_PER_GPU
    shm_per_gpu: str = DEFAULT_SHM_PER_GPU
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    priority_class: str | None = None
    scheduler: str = "none"
    queue: str | None = None
    service_account: str | None = None
    pending_timeout_s: float = 1800.0
    api_retry_s: float = 300.0
    owner_pod: tuple[str, str, str] | None = None
    handle_signals: bool = True
    shared_data_pvc: str | None = None
    owner_poll_s: float = DEFAULT_OWNER_POLL_S


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


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in job.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind and str(cond.get("status")) == "True":
            return cond
    return None


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Text lines of a byte stream whose chunks may end anywhere, even inside a line or a UTF-8 character."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.rstrip(b"\r").decode(errors="replace")
    if pending:
        yield pending.decode(errors="replace")


class JobFailed(TrainingFailed):
    """The operator marked the job Failed (it is over; `cleanup` decides whether it is kept)."""


class PendingTimeout(TrainingFailed):
    """The job's pods did not all start within `pending_timeout_s`."""


class _Terminated(BaseException):
    """The step got SIGTERM or SIGINT (the run was terminated or the pod deleted): stop and clean up.

    A BaseException, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class _WatchState:
    """What `wait` has seen so far: pod phases, pod uids per name, events logged, the waiting clock."""

    since: float
    phases: dict[str, str] = field(default_factory=dict)
    uids: dict[str, set[str]] = field(default_factory=dict)
    events: set[tuple[str, int]] = field(default_factory=set)
    replacements: int = 0
    last_message: str = ""
    condition: tuple[str, str] = ("", "")
    events_forbidden: bool = False


def _log_repeated_signal(signum: int, _frame: Any) -> None:
    logger.warning("got %s while cleaning up; finishing the cleanup first", signal.Signals(signum).name)


def _attr(obj: Any, *path: str, default: Any = None) -> Any:
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return default
    return obj


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if status:
        return f"{status} {getattr(exc, 'reason', '') or ''}".strip()
    return f"{type(exc).__name__}: {exc}"


class PyTorchJobLauncher:
    """Creates (or attaches to) a PyTorchJob for a request and waits for it to finish."""

    def __init__(self, settings: ClusterSettings, custom_api: Any = None, core_api: Any = None) -> None:
        if settings.cleanup not in CLEANUP_POLICIES:
            raise ValueError(f"cleanup must be one of {CLEANUP_POLICIES}, got {settings.cleanup!r}")
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

    # -- rendering ---------------------------------------------------------------------------------------

    def owner_reference(self) -> dict[str, Any] | None:
        """The ownerReference to the step's pod, or None (no pod known, or another namespace)."""
        if self.settings.owner_pod is None:
            return None
        namespace, name, uid = self.settings.owner_pod
        if namespace != self.settings.namespace:
            logger.warning(
                "the PyTorchJob goes to namespace %s, this step runs in %s: Kubernetes allows no owner in "
                "another namespace, so the job is not garbage-collected with the run (the step still "
                "deletes it when stopped)",
                self.settings.namespace,
                namespace,
            )
            return None
        # No blockOwnerDeletion: setting it needs update on pods/finalizers (OwnerReferencesPermissionEnforcement).
        return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}

    def render(self, request: TrainingRequest) -> dict[str, Any]:
        """The PyTorchJob this launcher creates for `request`."""
        s = self.settings
        env = {"S3_ENDPOINT_URL": s.s3_endpoint_url} if s.s3_endpoint_url else {}
        overrides = list(request.node_args())
        if not any(arg.startswith("scratch.num_train_workers=") for arg in request.overrides):
            overrides.append(f"scratch.num_train_workers={dataloader_workers(s.cpu_per_gpu)}")
        spec = PyTorchJobSpec(
            name=job_name_for(request.run_id),
            image=s.image,
            args=["--scratch-dir", "/scratch", *overrides],
            num_nodes=request.num_nodes,
            gpus_per_node=request.procs_per_node if request.use_gpus else 0,
            cpu_procs_per_node=request.procs_per_node,
            namespace=s.namespace,
            cpu=s.cpu,
            memory=s.memory,
            env=env,
            s3_secret_name=s.s3_secret_name,
            labels={"sam2-kubeflow/run-id": job_name_for(request.run_id, prefix="run")},
            scratch_bytes=request.scratch_bytes,
            cpu_per_gpu=s.cpu_per_gpu,
            memory_per_gpu=s.memory_per_gpu,
            shm_per_gpu=s.shm_per_gpu,
            node_selector=dict(s.node_selector),
            tolerations=list(s.tolerations),
            priority_class=s.priority_class,
            active_deadline_seconds=max(1, int(s.timeout_s)),
            owner=self.owner_reference(),
            scheduler=s.scheduler,
            queue=s.queue,
            service_account=s.service_account,
            shared_data_pvc=s.shared_data_pvc,
        )
        job = render_pytorchjob(spec)
        if s.owner_pod is not None:  # its nodes end the job when the step's pod is over (owner_watch)
            attach_owner_watch_to_pytorchjob(job, OwnerPod(*s.owner_pod), s.owner_poll_s)
        return job

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
                        f"(api_retry_s); last error: {_describe(exc)}"
                    ) from exc
                pause = min(_retry_after(exc) or delay, 30.0, max(deadline - now, 0.0))
                logger.warning("%s: %s; asking again in %.1fs", what, _describe(exc), pause)
                time.sleep(pause)
                delay = min(delay * 2, 30.0)

    def create_or_attach(self, job: dict[str, Any]) -> dict[str, Any]:
        """Create `job`; when one of that name exists already (a retried step), use that one instead.

        A running or Succeeded job is attached to (returned; `wait` then sees it finish), and this step's
        pod is added to its owners, so deleting this attempt's run still collects it. A Failed one (kept by
        cleanup=on-success) or one being deleted would fail the retry at once, forever: it is deleted, its
        pods with it, and once it is gone `job` is created anew; its training resumes from the newest
        checkpoint of the run in S3. Raises `TrainingFailed` when the API refuses to create the job or the
        old one is not gone within `delete_timeout_s`.
        """
        name, ns = job["metadata"]["name"], self.settings.namespace
        created = self._create(job)
        if created is not None:
            logger.info("created PyTorchJob %s/%s", ns, name)
            return created
        existing = self._get(name)
        if existing is not None:
            failed = _condition(existing, "Failed")
            if not failed and not existing.get("metadata", {}).get("deletionTimestamp"):
                state = "it succeeded" if _condition(existing, "Succeeded") else "it has not finished"
                logger.info("PyTorchJob %s/%s exists already (%s); attaching to it", ns, name, state)
                self._adopt(existing)
                return existing
            why = f"it failed ({failed.get('reason', '?')})" if failed else "it is being deleted"
            logger.warning(
                "PyTorchJob %s/%s exists already and %s: deleting it and creating it anew (training "
                "resumes from the run's newest checkpoint)",
                ns,
                name,
                why,
            )
            self._delete_and_wait(name)
        created = self._create(job)
        if created is None:  # another attempt of this step created it in the meantime
            logger.info("PyTorchJob %s/%s was created meanwhile; attaching to it", ns, name)
            return self._read(name)
        logger.info("created PyTorchJob %s/%s anew", ns, name)
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
        name, ns = existing["metadata"]["name"], self.settings.namespace
        try:
            self._api(
                f"adding this pod to the owners of PyTorchJob {ns}/{name}",
                self.custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                ns,
                PLURAL,
                name,
                {"metadata": {"ownerReferences": [*owners, owner]}},
            )
            logger.info("PyTorchJob %s/%s is now also owned by pod %s", ns, name, owner["name"])
        except (ApiException, TrainingFailed) as exc:
            logger.warning(
                "could not add pod %s to the owners of PyTorchJob %s/%s (%s): deleting the earlier "
                "attempt's pod would delete the job; grant patch on pytorchjobs (k8s/serviceaccount.yaml)",
                owner["name"],
                ns,
                name,
                _describe(exc),
            )

    def _create(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The created job, or None when one of that name exists."""
        from kubernetes.client.exceptions import ApiException

        name, ns = job["metadata"]["name"], self.settings.namespace
        try:
            return self._api(
                f"creating PyTorchJob {ns}/{name}",
                self.custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                ns,
                PLURAL,
                job,
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise TrainingFailed(
                f"could not create PyTorchJob {ns}/{name}: {exc.status} {exc.reason}"
            ) from exc

    def _read(self, name: str) -> dict[str, Any]:
        """The job as the API server has it now; `ApiException` (404 included) when it answers no."""
        ns = self.settings.namespace
        return self._api(
            f"reading PyTorchJob {ns}/{name}",
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
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

        ns = self.settings.namespace
        try:
            self._api(
                f"deleting PyTorchJob {ns}/{name}",
                self.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                ns,
                PLURAL,
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

        ns = self.settings.namespace
        try:
            self._delete(name, "Foreground")
        except ApiException as exc:
            raise TrainingFailed(
                f"could not delete the old PyTorchJob {ns}/{name}: {exc.status} {exc.reason}; delete it "
                f"with `kubectl -n {ns} delete pytorchjob {name}` and retry"
            ) from exc
        deadline = time.monotonic() + self.settings.delete_timeout_s
        while self._get(name) is not None:
            if time.monotonic() > deadline:
                raise TrainingFailed(
                    f"the old PyTorchJob {ns}/{name} was deleted but is still there after "
                    f"{self.settings.delete_timeout_s:.0f}s (delete_timeout_s); see `kubectl -n {ns} get "
                    f"pytorchjob {name} -o yaml` (finalizers) and the job's pods"
                )
            time.sleep(min(self.settings.poll_s, 5.0))
        logger.info("PyTorchJob %s/%s is gone", ns, name)

    # -- the run -----------------------------------------------------------------------------------------

    def launch(self, request: TrainingRequest) -> TrainingResult:
        """Run the request's job to the end. On SIGTERM/SIGINT the job is deleted and the step fails; when
        the step gives up on a job that is not over (its timeout, the pending timeout, pods replaced past
        backoffLimit, the API away for `api_retry_s`) it is deleted too, unless cleanup=never."""
        job = self.render(request)
        name, ns = job["metadata"]["name"], self.settings.namespace
        start = time.monotonic()
        log_thread = None
        job_over = threading.Event()
        succeeded, force_delete = False, False
        previous = self._install_signal_handlers()
        try:
            try:
                self.create_or_attach(job)
                if self.settings.stream_logs:
                    log_thread = threading.Thread(
                        target=self._stream_master_log,
                        args=(name, job_over),
                        name=f"log-{name}",
                        daemon=True,
                    )
                    log_thread.start()
                final = self.wait(name)
                succeeded = True
            except _Terminated as stop:
                force_delete = True
                raise TrainingFailed(
                    f"the train step got {stop}: deleted PyTorchJob {ns}/{name} and its pods; a retried "
                    "step creates it anew and resumes from the run's newest checkpoint"
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
        return TrainingResult(
            request.run_id,
            f"{request.run_uri.rstrip('/')}/checkpoints",
            f"{request.run_uri.rstrip('/')}/tensorboard",
            time.monotonic() - start,
            {
                "launcher": "pytorchjob",
                "job": f"{ns}/{name}",
                "completion": str(final.get("status", {}).get("completionTime", "")),
            },
        )

    def _install_signal_handlers(self) -> dict[int, Any] | None:
        """SIGTERM and SIGINT raise `_Terminated` in the waiting (main) thread; None where handlers cannot
        be set (not the main thread) or are not wanted.

        This process sees the step pod's SIGTERM: Argo's emissary (the container's PID 1) starts the
        command in a process group of its own and forwards signals to the whole group
        (argo-workflows workflow/executor/osspecific: Setpgid, Kill(-pgid)), and KFP's launcher runs this
        Python as a plain child in that group (kubeflow/pipelines backend/src/v2/component/launcher_v2.go,
        exec.Command)."""
        if not self.settings.handle_signals or threading.current_thread() is not threading.main_thread():
            return None

        def stop(signum: int, _frame: Any) -> None:
            raise _Terminated(signum)

        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, stop)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any] | None) -> None:
        for signum, handler in (previous or {}).items():
            signal.signal(signum, handler)

    def wait(self, name: str) -> dict[str, Any]:
        """Poll the job until Succeeded (returned) or Failed (`TrainingFailed`); `TimeoutError` past
        `timeout_s`, `PendingTimeout` when its pods have not all started within `pending_timeout_s`.

        Each poll also logs the job's condition changes, each pod's phase changes, and the scheduler's and
        kubelet's events for pods that wait (FailedScheduling, image pull back-off, ...).
        """
        ns = self.settings.namespace
        deadline = time.monotonic() + self.settings.timeout_s
        state = _WatchState(since=time.monotonic())
        while True:
            job = self._read(name)
            if _condition(job, "Succeeded"):
                logger.info("PyTorchJob %s/%s succeeded", ns, name)
                return job
            failed = _condition(job, "Failed")
            if failed:
                raise JobFailed(
                    f"PyTorchJob {ns}/{name} failed: {failed.get('reason', '?')}: {failed.get('message', '')}"
                    + self._pod_failures(name)
                    + self._failed_pod_logs(name)
                )
            self._observe(name, job, state)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"PyTorchJob {ns}/{name} did not finish within {self.settings.timeout_s:.0f}s (the "
                    f"step's timeout): the step deletes it unless cleanup=never; see `kubectl -n {ns} "
                    f"describe pytorchjob {name}`" + self._pod_failures(name)
                )
            time.sleep(self.settings.poll_s)

    def _observe(self, name: str, job: dict[str, Any], state: _WatchState) -> None:
        """Log what changed since the last poll; raise `PendingTimeout` / `TrainingFailed` (pods replaced
        more often than backoffLimit allows under restartPolicy ExitCode)."""
        ns, now = self.settings.namespace, time.monotonic()
        conditions = [
            c for c in job.get("status", {}).get("conditions", []) or [] if c.get("status") == "True"
        ]
        if conditions:
            last = conditions[-1]
            key = (str(last.get("type", "")), str(last.get("reason", "")))
            if key != state.condition:
                state.condition = key
                logger.info("PyTorchJob %s/%s: %s (%s) %s", ns, name, key[0], key[1], last.get("message", ""))
        spec = job.get("spec", {})
        replicas = spec.get("pytorchReplicaSpecs", {}) or {}
        expected = sum(int(r.get("replicas", 1)) for r in replicas.values())
        pods = self._api(
            f"listing the pods of PyTorchJob {ns}/{name}",
            self.core.list_namespaced_pod,
            ns,
            label_selector=f"{JOB_NAME_LABEL}={name}",
        ).items
        waiting = []
        for pod in pods:
            pod_name = _attr(pod, "metadata", "name", default="?")
            uid = _attr(pod, "metadata", "uid", default=pod_name)
            phase = _attr(pod, "status", "phase", default="Unknown")
            seen = state.uids.setdefault(pod_name, set())
            if uid not in seen:
                if seen:
                    state.replacements += 1
                    logger.warning(
                        "pod %s was replaced by the operator (%d replacement(s) in this job so far)",
                        pod_name,
                        state.replacements,
                    )
                seen.add(uid)
            if state.phases.get(uid) != phase:
                logger.info("pod %s: %s -> %s", pod_name, state.phases.get(uid, "(new)"), phase)
                state.phases[uid] = phase
            if phase == "Pending":
                waiting.append(pod_name)
                self._log_pod_events(pod, pod_name, state)
        limit = spec.get("runPolicy", {}).get("backoffLimit")
        exit_code_policy = any(r.get("restartPolicy") == "ExitCode" for r in replicas.values())
        if exit_code_policy and limit is not None and state.replacements > int(limit):
            raise TrainingFailed(
                f"PyTorchJob {ns}/{name}: its pods were replaced {state.replacements} times, more than "
                f"runPolicy.backoffLimit={limit} (the operator counts no replaced pods under restartPolicy "
                "ExitCode)" + self._pod_failures(name) + self._failed_pod_logs(name)
            )
        suspended = _condition(job, "Suspended") or spec.get("runPolicy", {}).get("suspend")
        if len(pods) < expected and not suspended:
            self._log_events("PyTorchJob", name, job.get("metadata", {}).get("uid"), state)
        if not waiting and len(pods) >= expected and not suspended:
            state.since, state.last_message = now, ""  # everything started: the clock restarts
            return
        timeout = self.settings.pending_timeout_s
        if timeout and now - state.since > timeout:
            if suspended:
                why = "the job is suspended: waiting for Kueue to admit it (see `kubectl get workloads`)"
            elif state.last_message:
                why = f"last event: {state.last_message}"
            elif len(pods) < expected:
                why = f"only {len(pods)} of {expected} pods exist: is the training operator running?"
            else:
                why = "no scheduler event was readable"
            raise PendingTimeout(
                f"PyTorchJob {ns}/{name}: {len(waiting) or expected - len(pods)} of {expected} pod(s) did "
                f"not start within {timeout:g}s (pending_timeout): {why}" + self._pod_failures(name)
            )

    def _log_pod_events(self, pod: Any, pod_name: str, state: _WatchState) -> None:
        """Log the new events that say why a pending pod does not start; remember the last message."""
        for status in _attr(pod, "status", "container_statuses", default=[]) or []:
            waiting = _attr(status, "state", "waiting")
            if waiting is not None and waiting.reason not in (None, "ContainerCreating", "PodInitializing"):
                state.last_message = f"{pod_name}: {waiting.reason}: {waiting.message or ''}".rstrip(": ")
        self._log_events("Pod", pod_name, _attr(pod, "metadata", "uid"), state)

    def _log_events(self, kind: str, name: str, uid: str | None, state: _WatchState) -> None:
        """Log the new Warning (or waiting-reason) events of one object; remember the last message. A pod's
        are the scheduler's and kubelet's; a PyTorchJob's are the operator's (a pod it cannot create, e.g.
        a missing service account or a quota)."""
        from kubernetes.client.exceptions import ApiException

        ns = self.settings.namespace
        if state.events_forbidden:
            return
        try:
            events = self._api(
                f"listing the events of {kind} {ns}/{name}",
                self.core.list_namespaced_event,
                ns,
                field_selector=f"involvedObject.kind={kind},involvedObject.name={name}",
            ).items
        except ApiException as exc:
            state.events_forbidden = True
            logger.warning(
                "cannot read the events of %s %s (%s): scheduling problems will not be shown; grant list "
                "on events (k8s/serviceaccount.yaml)",
                kind,
                name,
                _describe(exc),
            )
            return
        for event in events:
            involved = _attr(event, "involved_object", "uid")
            if uid is not None and involved is not None and involved != uid:
                continue  # an event of an earlier object of this name
            reason = _attr(event, "reason", default="")
            if reason not in WAITING_REASONS and _attr(event, "type") != "Warning":
                continue
            key = (
                str(_attr(event, "metadata", "uid", default=id(event))),
                int(_attr(event, "count", default=1)),
            )
            message = _attr(event, "message", default="")
            state.last_message = f"{name}: {reason}: {message}"
            if key not in state.events:
                state.events.add(key)
                logger.warning("%s %s waits: %s: %s", kind.lower(), name, reason, message)

    def _pod_failures(self, name: str) -> str:
        """Why the job's containers stopped or cannot start, one line per pod ('' when nothing is known)."""
        try:
            pods = self.core.list_namespaced_pod(
                self.settings.namespace, label_selector=f"{JOB_NAME_LABEL}={name}"
            )
        except Exception as exc:  # noqa: BLE001 - only decorates an error message
            return f"\n(pods not readable: {exc})"
        lines = []
        for pod in pods.items:
            for status in _attr(pod, "status", "container_statuses", default=[]) or []:
                state = status.state
                if state.terminated is not None and state.terminated.exit_code != 0:
                    t = state.terminated
                    lines.append(
                        f"{pod.metadata.name}: {t.reason} (exit {t.exit_code}) {t.message or ''}".rstrip()
                    )
                elif state.waiting is not None and state.waiting.reason not in (None, "ContainerCreating"):
                    lines.append(
                        f"{pod.metadata.name}: {state.waiting.reason} {state.waiting.message or ''}".rstrip()
                    )
        return ("\n" + "\n".join(lines)) if lines else ""

    def _failed_pod_logs(self, name: str, max_pods: int = 3) -> str:
        """The last `FAILED_LOG_LINES` log lines of each pod (any replica) whose container exited non-zero."""
        ns = self.settings.namespace
        try:
            pods = self.core.list_namespaced_pod(ns, label_selector=f"{JOB_NAME_LABEL}={name}").items
        except Exception:  # noqa: BLE001 - only decorates an error message
            return ""
        parts = []
        for pod in pods:
            for status in _attr(pod, "status", "container_statuses", default=[]) or []:
                terminated = _attr(status, "state", "terminated")
                if _attr(status, "name") != CONTAINER or terminated is None or terminated.exit_code == 0:
                    continue
                if len(parts) == max_pods:
                    break
                try:
                    text = self.core.read_namespaced_pod_log(
                        pod.metadata.name, ns, container=CONTAINER, tail_lines=FAILED_LOG_LINES
                    )
                except Exception as exc:  # noqa: BLE001 - only decorates an error message
                    text = f"(log not readable: {_describe(exc)})"
                parts.append(
                    f"\n--- last {FAILED_LOG_LINES} log lines of {pod.metadata.name} (exit "
                    f"{terminated.exit_code}) ---\n{str(text).rstrip()}"
                )
        return "".join(parts)

    def _stream_master_log(self, name: str, job_over: threading.Event) -> None:
        """Log every attempt of the master's container, each line once, until `job_over` is set.

        An attempt is one container run: (pod uid, restart count), so an OnFailure restart in the same pod
        and a new master pod are both followed. A stream that ends while its container still runs (a
        dropped connection) is read again, past the lines already logged. Best effort: errors are logged,
        never raised; the job's status decides the outcome.
        """
        ns = self.settings.namespace
        selector = f"{JOB_NAME_LABEL}={name},{REPLICA_TYPE_LABEL}=master"
        logged: dict[tuple[str, int], int] = {}  # lines logged per attempt
        finished: set[tuple[str, int]] = set()  # attempts read to the end after their container stopped
        last_error = ""
        while True:
            last_pass = job_over.is_set()  # the job is over: this pass reads what is left, then stop
            try:
                attempts = self._master_attempts(selector)
                last_error = ""
            except Exception as exc:  # noqa: BLE001 - logs are best effort; the status decides
                if str(exc) != last_error:
                    logger.warning("cannot list the master pod of PyTorchJob %s/%s: %s", ns, name, exc)
                last_error, attempts = str(exc), []
            for pod, attempt, stopped in attempts:
                if attempt in finished:
                    continue
                if self._log_attempt(pod, attempt, logged) and stopped:
                    finished.add(attempt)
            if last_pass:
                return
            job_over.wait(self.settings.poll_s)

    def _master_attempts(self, selector: str) -> list[tuple[str, tuple[str, int], bool]]:
        """(pod name, (pod uid, restart count), container stopped) of each master container that has
        started, oldest pod first."""
        pods = self.core.list_namespaced_pod(self.settings.namespace, label_selector=selector).items
        attempts = []
        for pod in sorted(pods, key=lambda p: str(getattr(p.metadata, "creation_timestamp", "") or "")):
            for status in pod.status.container_statuses or []:
                if status.name != CONTAINER:
                    continue
                if status.state.running is None and status.state.terminated is None:
                    continue  # waiting: not started yet, or backing off before a restart
                attempt = (pod.metadata.uid, int(status.restart_count or 0))
                attempts.append((pod.metadata.name, attempt, status.state.terminated is not None))
        return attempts

    def _log_attempt(self, pod: str, attempt: tuple[str, int], logged: dict[tuple[str, int], int]) -> bool:
        """Follow the pod's current container log, logging the lines past `logged[attempt]`; True when the
        stream ended by itself, False when reading it failed."""
        skip = logged.get(attempt, 0)
        count = 0
        stream = None
        try:
            stream = self.core.read_namespaced_pod_log(
                pod, self.settings.namespace, container=CONTAINER, follow=True, _preload_content=False
            )
            for line in _lines(stream.stream()):
                count += 1
                if count > skip:
                    logger.info("[%s] %s", pod, line)
                    logged[attempt] = count
            return True
        except Exception as exc:  # noqa: BLE001 - logs are best effort; the status decides
            logger.warning("log stream of %s ended: %s", pod, exc)
            return False
        finally:
            release = getattr(stream, "release_conn", None)
            if release is not None:
                release()

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
            logger.info("deleted PyTorchJob %s/%s (%s)", self.settings.namespace, name, why)
        except (ApiException, TrainingFailed) as exc:
            logger.warning(
                "could not delete PyTorchJob %s/%s: %s; delete it with `kubectl -n %s delete pytorchjob %s`",
                self.settings.namespace,
                name,
                _describe(exc),
                self.settings.namespace,
                name,
            )


def dataloader_workers(cpu_per_gpu: str) -> int:
    """DataLoader workers per training process: its CPUs less one for the process itself."""
    from kubernetes.utils import parse_quantity

    return max(0, int(parse_quantity(cpu_per_gpu)) - 1)
