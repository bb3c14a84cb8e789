"""`JobLauncher` on a Kubeflow cluster: a PyTorchJob created idempotently, watched, logged, cleaned up.

The job is rendered from `k8s/pytorchjob.yaml` (see `sam2.launch.pytorchjob`) and named after the run id,
so a retried pipeline step attaches to the job it created before instead of starting a second one (one that
Failed, kept by cleanup=on-success, is deleted and created anew; training resumes from the run's newest
checkpoint). The master's log is streamed into this process's log, every attempt of it (a restarted
container, a new master pod) until the job is over; when the job fails, the reason comes from the job's
conditions and the pods' container states (OOMKilled, ImagePullBackOff, exit codes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sam2.launch.launcher import TrainingFailed, TrainingRequest, TrainingResult
from sam2.launch.pytorchjob import PyTorchJobSpec, job_name_for, render_pytorchjob

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
CLEANUP_POLICIES = ("never", "on-success", "always")
CONTAINER = "pytorch"  # the container name the operator requires (see sam2.launch.pytorchjob)
LOG_DRAIN_S = 60.0  # how long a finished launch waits for the log stream to write the job's last lines


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how jobs run on the cluster."""

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

    def render(self, request: TrainingRequest) -> dict[str, Any]:
        """The PyTorchJob this launcher creates for `request`."""
        env = {"S3_ENDPOINT_URL": self.settings.s3_endpoint_url} if self.settings.s3_endpoint_url else {}
        spec = PyTorchJobSpec(
            name=job_name_for(request.run_id),
            image=self.settings.image,
            args=["--scratch-dir", "/scratch", *request.node_args()],
            num_nodes=request.num_nodes,
            gpus_per_node=request.procs_per_node if request.use_gpus else 0,
            cpu_procs_per_node=request.procs_per_node,
            namespace=self.settings.namespace,
            cpu=self.settings.cpu,
            memory=self.settings.memory,
            env=env,
            s3_secret_name=self.settings.s3_secret_name,
            labels={"sam2-kubeflow/run-id": job_name_for(request.run_id, prefix="run")},
            scratch_bytes=request.scratch_bytes,
        )
        return render_pytorchjob(spec)

    def create_or_attach(self, job: dict[str, Any]) -> dict[str, Any]:
        """Create `job`; when one of that name exists already (a retried step), use that one instead.

        A running or Succeeded job is attached to (returned; `wait` then sees it finish). A Failed one (kept
        by cleanup=on-success) or one being deleted would fail the retry at once, forever: it is deleted, its
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
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        logger.info("created PyTorchJob %s/%s anew", ns, name)
        return created

    def _create(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The created job, or None when one of that name exists."""
        from kubernetes.client.exceptions import ApiException

        name, ns = job["metadata"]["name"], self.settings.namespace
        try:
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, job)
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise TrainingFailed(
                f"could not create PyTorchJob {ns}/{name}: {exc.status} {exc.reason}"
            ) from exc

    def _get(self, name: str) -> dict[str, Any] | None:
        """The job, or None when there is none of that name."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.settings.namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _delete_and_wait(self, name: str) -> None:
        """Delete the job in the foreground (its pods go first) and wait until it is gone, so the new job's
        pods, which have the same names, do not meet the old ones."""
        from kubernetes.client.exceptions import ApiException

        ns = self.settings.namespace
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, name, propagation_policy="Foreground"
            )
        except ApiException as exc:
            if exc.status != 404:
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

    def launch(self, request: TrainingRequest) -> TrainingResult:
        job = self.render(request)
        name = job["metadata"]["name"]
        start = time.monotonic()
        self.create_or_attach(job)
        log_thread = None
        job_over = threading.Event()
        if self.settings.stream_logs:
            log_thread = threading.Thread(
                target=self._stream_master_log, args=(name, job_over), name=f"log-{name}", daemon=True
            )
            log_thread.start()
        succeeded = False
        try:
            final = self.wait(name)
            succeeded = True
        finally:
            job_over.set()
            if log_thread is not None:
                log_thread.join(LOG_DRAIN_S)
            self._cleanup(name, succeeded)
        return TrainingResult(
            request.run_id,
            f"{request.run_uri.rstrip('/')}/checkpoints",
            f"{request.run_uri.rstrip('/')}/tensorboard",
            time.monotonic() - start,
            {
                "launcher": "pytorchjob",
                "job": f"{self.settings.namespace}/{name}",
                "completion": str(final.get("status", {}).get("completionTime", "")),
            },
        )

    def wait(self, name: str) -> dict[str, Any]:
        """Poll the job until Succeeded (returned) or Failed (`TrainingFailed`); `TimeoutError` past the limit."""
        ns = self.settings.namespace
        deadline = time.monotonic() + self.settings.timeout_s
        while True:
            job = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            if _condition(job, "Succeeded"):
                logger.info("PyTorchJob %s/%s succeeded", ns, name)
                return job
            failed = _condition(job, "Failed")
            if failed:
                raise TrainingFailed(
                    f"PyTorchJob {ns}/{name} failed: {failed.get('reason', '?')}: {failed.get('message', '')}"
                    + self._pod_failures(name)
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"PyTorchJob {ns}/{name} did not finish within {self.settings.timeout_s:.0f}s; it keeps "
                    f"running: inspect with `kubectl -n {ns} describe pytorchjob {name}`"
                    + self._pod_failures(name)
                )
            time.sleep(self.settings.poll_s)

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
            for status in pod.status.container_statuses or []:
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

    def _cleanup(self, name: str, succeeded: bool) -> None:
        policy = self.settings.cleanup
        if policy == "never" or (policy == "on-success" and not succeeded):
            return
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.settings.namespace, PLURAL, name)
            logger.info("deleted PyTorchJob %s/%s (cleanup=%s)", self.settings.namespace, name, policy)
        except ApiException as exc:
            if exc.status != 404:
                logger.warning("could not delete PyTorchJob %s: %s %s", name, exc.status, exc.reason)
