"""Watching a training job of either kind: its pods, the scheduler's and controller's events, the log of
rank 0, and why it failed.

While it waits, the step logs each pod's phase changes, container restarts, and the Warning events of
pods that wait and of a job whose pods do not all exist (the controller's: a missing service account, a
quota); it gives up after `pending_timeout_s` naming the last such event. The log of the node of rank 0 is
streamed into the step's log, every attempt of it, until the job is over. When the job fails, the error
carries the job's condition, each failed pod's reason and exit code, and its last log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sam2.launch.job_lifecycle import JobFailed, JobKind, condition, describe
from sam2.launch.launcher import TrainingFailed

logger = logging.getLogger(__name__)

FAILED_LOG_LINES = 40  # the last lines of each failed pod's log that go into the step's error
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


class PendingTimeout(TrainingFailed):
    """The job's pods did not all start within `pending_timeout_s`."""


class QueueTimeout(TrainingFailed):
    """Kueue kept the job suspended in its queue for longer than `queue_timeout_s`."""


@dataclass
class WatchState:
    """What `wait` has seen so far: pod phases, pod uids per name, events logged, the waiting clock."""

    since: float
    phases: dict[str, str] = field(default_factory=dict)
    uids: dict[str, set[str]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    restart_notes: dict[str, str] = field(default_factory=dict)  # pod -> its last run's end and log tail
    events: set[tuple[str, int]] = field(default_factory=set)
    replacements: int = 0
    last_message: str = ""
    condition: tuple[str, str] = ("", "")
    events_forbidden: bool = False
    queued_since: float | None = None  # when the job was first seen suspended (waiting in its Kueue queue)


def lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Text lines of a byte stream whose chunks may end anywhere, even inside a line or a UTF-8 character."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.rstrip(b"\r").decode(errors="replace")
    if pending:
        yield pending.decode(errors="replace")


def attr(obj: Any, *path: str, default: Any = None) -> Any:
    """obj.a.b.c, or `default` where a link is missing (the client's models and plain objects alike)."""
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return default
    return obj


class JobWatch:
    """The watch half of a cluster launcher (see module doc); needs `settings`, `core`, `KIND`, `_api`,
    `_read`, and per kind `expected_pods`, `suspended` and `replacement_limit`."""

    KIND: JobKind
    settings: Any
    core: Any

    def expected_pods(self, job: dict[str, Any]) -> int:
        raise NotImplementedError

    def suspended(self, job: dict[str, Any]) -> bool:
        raise NotImplementedError

    def replacement_limit(self, job: dict[str, Any]) -> int | None:
        """How often the step lets pods be replaced before it fails the job (None: the controller counts)."""
        return None

    def wait(self, name: str) -> dict[str, Any]:
        """Poll the job until it succeeded (returned) or failed (`JobFailed`); `TimeoutError` past
        `timeout_s`, `PendingTimeout` when its pods have not all started within `pending_timeout_s`."""
        ns, what = self.settings.namespace, self._what(name)
        deadline = time.monotonic() + self.settings.timeout_s
        state = WatchState(since=time.monotonic())
        while True:
            job = self._read(name)
            if condition(job, self.KIND.succeeded):
                logger.info("%s succeeded", what)
                return job
            failed = condition(job, self.KIND.failed)
            if failed:
                raise JobFailed(
                    f"{what} failed: {failed.get('reason', '?')}: {failed.get('message', '')}"
                    + self._pod_failures(name, state)
                    + self._failed_pod_logs(name)
                )
            self._observe(name, job, state)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what} did not finish within {self.settings.timeout_s:.0f}s (the step's timeout): the "
                    f"step deletes it unless cleanup=never; see `kubectl -n {ns} describe {self.KIND.kubectl} "
                    f"{name}`" + self._pod_failures(name, state)
                )
            time.sleep(self.settings.poll_s)

    def _observe(self, name: str, job: dict[str, Any], state: WatchState) -> None:
        """Log what changed since the last poll; raise `PendingTimeout` / `TrainingFailed` (pods replaced
        more often than `replacement_limit` allows)."""
        ns, now, what = self.settings.namespace, time.monotonic(), self._what(name)
        conditions = [
            c for c in job.get("status", {}).get("conditions", []) or [] if c.get("status") == "True"
        ]
        if conditions:
            last = conditions[-1]
            key = (str(last.get("type", "")), str(last.get("reason", "")))
            if key != state.condition:
                state.condition = key
                logger.info("%s: %s (%s) %s", what, key[0], key[1], last.get("message", ""))
        expected = self.expected_pods(job)
        pods = self._api(
            f"listing the pods of {what}",
            self.core.list_namespaced_pod,
            ns,
            label_selector=self.KIND.pod_selector(name),
        ).items
        waiting = []
        for pod in pods:
            pod_name = attr(pod, "metadata", "name", default="?")
            uid = attr(pod, "metadata", "uid", default=pod_name)
            phase = attr(pod, "status", "phase", default="Unknown")
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
            self._note_restarts(pod, pod_name, uid, state)
            if phase == "Pending":
                waiting.append(pod_name)
                self._log_pod_events(pod, pod_name, state)
        limit = self.replacement_limit(job)
        if limit is not None and state.replacements > limit:
            raise TrainingFailed(
                f"{what}: its pods were replaced {state.replacements} times, more than runPolicy.backoffLimit="
                f"{limit} (the operator counts no replaced pods under restartPolicy ExitCode)"
                + self._pod_failures(name, state)
                + self._failed_pod_logs(name)
            )
        suspended = self.suspended(job)
        if suspended:
            self._wait_in_queue(what, now, state)
            return
        state.queued_since = None
        if len(pods) < expected:
            self._log_events(self.KIND.kind, name, job.get("metadata", {}).get("uid"), state)
        if not waiting and len(pods) >= expected:
            state.since, state.last_message = now, ""  # everything started: the clock restarts
            return
        timeout = self.settings.pending_timeout_s
        if timeout and now - state.since > timeout:
            if state.last_message:
                why = f"last event: {state.last_message}"
            elif len(pods) < expected:
                why = (
                    f"only {len(pods)} of {expected} pods exist: is the {self.KIND.kind} controller running?"
                )
            else:
                why = "no scheduler event was readable"
            raise PendingTimeout(
                f"{what}: {len(waiting) or expected - len(pods)} of {expected} pod(s) did not start within "
                f"{timeout:g}s (pending_timeout): {why}" + self._pod_failures(name, state)
            )

    def _wait_in_queue(self, what: str, now: float, state: WatchState) -> None:
        """The job is suspended (Kueue has not admitted it): that is queue time, not pending time, so the
        pending clock starts anew once it is admitted; `QueueTimeout` after `queue_timeout_s` (0: never)."""
        state.since = now
        if state.queued_since is None:
            state.queued_since = now
            logger.info("%s is suspended: waiting in its Kueue queue for admission", what)
        limit = self.settings.queue_timeout_s
        if limit and now - state.queued_since > limit:
            raise QueueTimeout(
                f"{what}: still suspended in its queue after {limit:g}s (queue_timeout): Kueue has not admitted "
                f"it; see `kubectl -n {self.settings.namespace} get workloads` and the queue's quota"
            )

    def _note_restarts(self, pod: Any, pod_name: str, uid: str, state: WatchState) -> None:
        """Log each restart of the training container in place (restartPolicy OnFailure, the Trainer's
        default) with the exit code it ended with, and remember it: by the time the job failed, the Job
        controller may have deleted the pod."""
        for status in attr(pod, "status", "container_statuses", default=[]) or []:
            if attr(status, "name") != self.KIND.container:
                continue
            count = int(attr(status, "restart_count", default=0) or 0)
            key = f"{uid}/{status.name}"
            if count > state.restarts.get(key, 0):
                ended = attr(status, "last_state", "terminated")
                why = f"{ended.reason} (exit {ended.exit_code})" if ended is not None else "unknown"
                logger.warning(
                    "pod %s: container %s restarted (%d so far), last run: %s",
                    pod_name,
                    status.name,
                    count,
                    why,
                )
                state.restarts[key] = count
                note = f"{pod_name}: restarted {count} time(s), last run {why}"
                state.restart_notes[pod_name] = note + self._log_tail(pod_name, previous=True)

    def _log_pod_events(self, pod: Any, pod_name: str, state: WatchState) -> None:
        """Log the new events that say why a pending pod does not start; remember the last message."""
        for status in attr(pod, "status", "container_statuses", default=[]) or []:
            waiting = attr(status, "state", "waiting")
            if waiting is not None and waiting.reason not in (None, "ContainerCreating", "PodInitializing"):
                state.last_message = f"{pod_name}: {waiting.reason}: {waiting.message or ''}".rstrip(": ")
        self._log_events("Pod", pod_name, attr(pod, "metadata", "uid"), state)

    def _log_events(self, kind: str, name: str, uid: str | None, state: WatchState) -> None:
        """Log the new Warning (or waiting-reason) events of one object; remember the last message. A pod's
        are the scheduler's and kubelet's; a job's are its controller's (a pod it cannot create, e.g. a
        missing service account or a quota)."""
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
                "on events (k8s/rbac.yaml)",
                kind,
                name,
                describe(exc),
            )
            return
        for event in events:
            involved = attr(event, "involved_object", "uid")
            if uid is not None and involved is not None and involved != uid:
                continue  # an event of an earlier object of this name
            reason = attr(event, "reason", default="")
            if reason not in WAITING_REASONS and attr(event, "type") != "Warning":
                continue
            key = (
                str(attr(event, "metadata", "uid", default=id(event))),
                int(attr(event, "count", default=1)),
            )
            message = attr(event, "message", default="")
            state.last_message = f"{name}: {reason}: {message}"
            if key not in state.events:
                state.events.add(key)
                logger.warning("%s %s waits: %s: %s", kind.lower(), name, reason, message)

    def _pod_failures(self, name: str, state: WatchState | None = None) -> str:
        """Why the job's containers stopped or cannot start, one line per pod ('' when nothing is known),
        and the restarts seen while watching."""
        try:
            pods = self.core.list_namespaced_pod(
                self.settings.namespace, label_selector=self.KIND.pod_selector(name)
            )
        except Exception as exc:  # noqa: BLE001 - only decorates an error message
            return f"\n(pods not readable: {exc})"
        found = []
        for pod in pods.items:
            for status in attr(pod, "status", "container_statuses", default=[]) or []:
                st = status.state
                if st.terminated is not None and st.terminated.exit_code != 0:
                    t = st.terminated
                    found.append(
                        f"{pod.metadata.name}: {t.reason} (exit {t.exit_code}) {t.message or ''}".rstrip()
                    )
                elif st.waiting is not None and st.waiting.reason not in (None, "ContainerCreating"):
                    found.append(
                        f"{pod.metadata.name}: {st.waiting.reason} {st.waiting.message or ''}".rstrip()
                    )
        if state is not None:  # restarts in place: the pods may be gone by now (OnFailure, Job failed)
            found += [
                note for pod, note in state.restart_notes.items() if not any(pod in line for line in found)
            ]
        return ("\n" + "\n".join(found)) if found else ""

    def _log_tail(self, pod: str, previous: bool = False) -> str:
        """The last `FAILED_LOG_LINES` lines of the training container's log (its previous run with
        `previous`), as a block to append to a message; '' when not readable."""
        kwargs = {"previous": True} if previous else {}
        try:
            text = self.core.read_namespaced_pod_log(
                pod,
                self.settings.namespace,
                container=self.KIND.container,
                tail_lines=FAILED_LOG_LINES,
                **kwargs,
            )
        except Exception:  # noqa: BLE001 - only decorates an error message
            return ""
        text = str(text).rstrip()
        return f"\n--- last {FAILED_LOG_LINES} log lines of {pod} ---\n{text}" if text else ""

    def _failed_pod_logs(self, name: str, max_pods: int = 3) -> str:
        """The last `FAILED_LOG_LINES` log lines of each pod whose training container exited non-zero (the
        container's previous run when it was restarted in place)."""
        ns, container = self.settings.namespace, self.KIND.container
        try:
            pods = self.core.list_namespaced_pod(ns, label_selector=self.KIND.pod_selector(name)).items
        except Exception:  # noqa: BLE001 - only decorates an error message
            return ""
        parts = []
        for pod in pods:
            for status in attr(pod, "status", "container_statuses", default=[]) or []:
                if attr(status, "name") != container:
                    continue
                terminated = attr(status, "state", "terminated")
                previous = False
                if terminated is None or terminated.exit_code == 0:
                    terminated, previous = attr(status, "last_state", "terminated"), True
                if terminated is None or terminated.exit_code == 0:
                    continue
                if len(parts) == max_pods:
                    break
                kwargs = {"previous": True} if previous else {}
                try:
                    text = self.core.read_namespaced_pod_log(
                        pod.metadata.name, ns, container=container, tail_lines=FAILED_LOG_LINES, **kwargs
                    )
                except Exception as exc:  # noqa: BLE001 - only decorates an error message
                    text = f"(log not readable: {describe(exc)})"
                parts.append(
                    f"\n--- last {FAILED_LOG_LINES} log lines of {pod.metadata.name} (exit "
                    f"{terminated.exit_code}) ---\n{str(text).rstrip()}"
                )
        return "".join(parts)

    def _stream_master_log(self, name: str, job_over: threading.Event) -> None:
        """Log every attempt of the rank-0 node's container, each line once, until `job_over` is set.

        An attempt is one container run: (pod uid, restart count), so a restart in the same pod and a new
        pod are both followed. A stream that ends while its container still runs (a dropped connection) is
        read again, past the lines already logged. Best effort: errors are logged, never raised; the job's
        status decides the outcome.
        """
        selector = self.KIND.master_selector(name)
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
                    logger.warning("cannot list the rank-0 pod of %s: %s", self._what(name), exc)
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
        """(pod name, (pod uid, restart count), container stopped) of each rank-0 container that has
        started, oldest pod first."""
        pods = self.core.list_namespaced_pod(self.settings.namespace, label_selector=selector).items
        attempts = []
        for pod in sorted(pods, key=lambda p: str(getattr(p.metadata, "creation_timestamp", "") or "")):
            for status in pod.status.container_statuses or []:
                if status.name != self.KIND.container:
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
                pod,
                self.settings.namespace,
                container=self.KIND.container,
                follow=True,
                _preload_content=False,
            )
            for line in lines(stream.stream()):
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
