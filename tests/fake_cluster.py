"""An in-memory stand-in for the Kubernetes API and the training operator, answering as the real ones do.

No cluster runs here, so the launcher's `CustomObjectsApi` / `CoreV1Api` calls go to this object instead.
What it answers, and where that behaviour comes from:

- Errors are the `kubernetes` client's own: `ApiException(status, reason)` with the response headers (a
  429 carries Retry-After), 404 for a missing object, 409 AlreadyExists on create; a dropped connection
  is the urllib3 error the client lets through (`ProtocolError('Connection aborted.',
  ConnectionResetError(104, ...))`, `MaxRetryError` once urllib3's own retries are spent).
- Garbage collection (kubernetes.io/docs/concepts/architecture/garbage-collection/,
  .../overview/working-with-objects/owners-dependents/): a dependent is deleted once *all* the owners in
  its ownerReferences are gone; an owner in another namespace counts as absent.
- Pods of a PyTorchJob are labelled `training.kubeflow.org/job-name` and named `<job>-<type>-<index>`
  (training-operator v1.9 pkg/controller.v1/common/pod.go, GenGeneralName). Under restartPolicy ExitCode
  a failed pod with exit code >= 128 is deleted and created anew (same name, new uid) and the job gets a
  `Restarting` condition; an exit code 1-127 fails the job ("job %q is failing because %q replica(s)
  failed.") (pkg/controller.v1/common/pod.go; pkg/util/train/train_util.go IsRetryableExitCode).
- Events are `CoreV1Event`s with `involved_object` (kind, name, uid), `reason`, `message`, `type`,
  `count`; the scheduler's is reason `FailedScheduling`, type Warning, with a message such as
  "0/4 nodes are available: 4 Insufficient nvidia.com/gpu." (kubernetes pkg/scheduler/schedule_one.go).
  `list_namespaced_event` filters on the `involvedObject.*` field selectors the API server supports.
- `read_namespaced_pod_log(tail_lines=N)` returns the last N lines, as the kubelet does.
"""

from __future__ import annotations

import copy
import itertools
import threading
from types import SimpleNamespace
from typing import Any

from kubernetes.client.exceptions import ApiException

JOB_NAME_LABEL = "training.kubeflow.org/job-name"
_uids = itertools.count(1)


def api_error(status: int, reason: str, **headers: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.headers = headers
    return exc


def connection_reset() -> Exception:
    from urllib3.exceptions import ProtocolError

    return ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))


def pod(
    name: str,
    phase: str = "Running",
    exit_code: int | None = None,
    reason: str | None = None,
    waiting: str | None = None,
    uid: str | None = None,
    job: str = "",
) -> SimpleNamespace:
    """A V1Pod-shaped object with one `pytorch` container in the state the phase implies."""
    terminated = None
    if exit_code is not None:
        terminated = SimpleNamespace(exit_code=exit_code, reason=reason or "Error", message=None)
    running = SimpleNamespace() if phase == "Running" and terminated is None else None
    waiting_state = SimpleNamespace(reason=waiting, message=None) if waiting else None
    status = SimpleNamespace(
        name="pytorch",
        restart_count=0,
        state=SimpleNamespace(running=running, terminated=terminated, waiting=waiting_state),
    )
    return SimpleNamespace(
        metadata=SimpleNamespace(
            name=name, uid=uid or f"uid-{next(_uids)}", labels={JOB_NAME_LABEL: job}, creation_timestamp=""
        ),
        status=SimpleNamespace(phase=phase, container_statuses=[] if phase == "Pending" else [status]),
    )


def event(pod_obj: SimpleNamespace, reason: str, message: str, kind: str = "Warning", count: int = 1):
    return SimpleNamespace(
        metadata=SimpleNamespace(uid=f"ev-{next(_uids)}"),
        involved_object=SimpleNamespace(kind="Pod", name=pod_obj.metadata.name, uid=pod_obj.metadata.uid),
        reason=reason,
        message=message,
        type=kind,
        count=count,
    )


class FakeCluster:
    """PyTorchJobs, pods, events and pod logs of one namespace; `fail_next` scripts transient errors.

    `status` is the job status every read returns until a test changes it (or the operator does, see
    `exit_pod`). Thread-safe enough for the launcher's log thread.
    """

    def __init__(self, status: dict | None = None) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, dict] = {}
        self.status = status if status is not None else running()
        self.pods: dict[str, SimpleNamespace] = {}
        self.events: list[SimpleNamespace] = []
        self.logs: dict[str, str] = {}
        self.owner_pods: dict[str, str] = {}  # uid -> name of pods that can own jobs (the step's pods)
        self.fail_next: dict[str, list[Exception]] = {}
        self.calls: list[str] = []
        self.deleted: list[tuple[str, str | None]] = []
        self.patches: list[dict] = []
        self.on_create: Any = None  # called with the job's name once it is stored (the operator's pods)
        self.script: list[Any] = []  # one action (or None) run before each job read, in order
        self.before_delete: Any = None  # called before a job is deleted

    # -- scripted failures ---------------------------------------------------------------------------
    def _maybe_fail(self, verb: str) -> None:
        self.calls.append(verb)
        queue = self.fail_next.get(verb) or []
        if queue:
            raise queue.pop(0)

    # -- CustomObjectsApi ------------------------------------------------------------------------------
    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        self._maybe_fail("create")
        name = body["metadata"]["name"]
        with self.lock:
            if name in self.jobs:
                raise api_error(409, "AlreadyExists")
            stored = copy.deepcopy(body)
            stored["metadata"]["uid"] = f"job-{next(_uids)}"
            self.jobs[name] = stored
        if self.on_create is not None:
            self.on_create(name)
        return copy.deepcopy(stored)

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        self._maybe_fail("get")
        if self.script:
            action = self.script.pop(0)
            if action is not None:
                action()
        with self.lock:
            if name not in self.jobs:
                raise api_error(404, "NotFound")
            job = copy.deepcopy(self.jobs[name])
            job["status"] = copy.deepcopy(self.status)
            return job

    def patch_namespaced_custom_object(self, group, version, ns, plural, name, body):
        """A JSON merge patch of metadata (lists are replaced whole, as RFC 7386 says)."""
        self._maybe_fail("patch")
        with self.lock:
            if name not in self.jobs:
                raise api_error(404, "NotFound")
            self.patches.append(copy.deepcopy(body))
            self.jobs[name]["metadata"].update(copy.deepcopy(body.get("metadata", {})))
            return copy.deepcopy(self.jobs[name])

    def delete_namespaced_custom_object(self, group, version, ns, plural, name, propagation_policy=None):
        self._maybe_fail("delete")
        if self.before_delete is not None:
            self.before_delete()
        with self.lock:
            if name not in self.jobs:
                raise api_error(404, "NotFound")
            self.deleted.append((name, propagation_policy))
            del self.jobs[name]
            for pod_name in [
                p for p, o in self.pods.items() if o.metadata.labels.get(JOB_NAME_LABEL) == name
            ]:
                del self.pods[pod_name]

    # -- CoreV1Api ---------------------------------------------------------------------------------------
    def list_namespaced_pod(self, ns, label_selector=""):
        self._maybe_fail("list_pods")
        key, _, value = label_selector.partition(",")[0].partition("=")
        with self.lock:
            items = [p for p in self.pods.values() if p.metadata.labels.get(key) == value]
            if "replica-type=master" in label_selector:
                items = [p for p in items if "-master-" in p.metadata.name]
            return SimpleNamespace(items=list(items))

    def list_namespaced_event(self, ns, field_selector=""):
        self._maybe_fail("list_events")
        wanted = dict(part.split("=", 1) for part in field_selector.split(",") if part)
        with self.lock:
            items = [
                e
                for e in self.events
                if all(
                    getattr(e.involved_object, k.removeprefix("involvedObject."), None) == v
                    for k, v in wanted.items()
                )
            ]
            return SimpleNamespace(items=items)

    def read_namespaced_pod_log(self, name, ns, container=None, tail_lines=None, **kw):
        self._maybe_fail("log")
        with self.lock:
            if name not in self.pods:
                raise api_error(404, "NotFound")
            lines = self.logs.get(name, "").splitlines()
        return "\n".join(lines[-tail_lines:] if tail_lines else lines) + "\n"

    # -- the cluster's own actors -------------------------------------------------------------------------
    def add_pods(self, job: str, phase: str = "Running") -> list[SimpleNamespace]:
        """The operator's pods for `job`: master-0 and worker-0..n-2 (GenGeneralName)."""
        with self.lock:
            spec = self.jobs[job]["spec"]["pytorchReplicaSpecs"]
        names = [f"{job}-master-0"] + [
            f"{job}-worker-{i}" for i in range(spec.get("Worker", {}).get("replicas", 0))
        ]
        made = [pod(n, phase, job=job) for n in names]
        with self.lock:
            for p in made:
                self.pods[p.metadata.name] = p
        return made

    def exit_pod(self, name: str, exit_code: int, reason: str = "Error", log: str = "") -> None:
        """The pod's container exits; the operator applies the replica's restartPolicy (see the module doc)."""
        with self.lock:
            old = self.pods[name]
            job = old.metadata.labels[JOB_NAME_LABEL]
            rtype = "Master" if "-master-" in name else "Worker"
            policy = self.jobs[job]["spec"]["pytorchReplicaSpecs"][rtype]["restartPolicy"]
            if log:
                self.logs[name] = log
            if policy == "ExitCode" and exit_code >= 128:
                self.pods[name] = pod(name, "Running", job=job)  # deleted and created anew
                self.status = running(
                    restarting=f"job {job} is restarting because {rtype} replica(s) failed."
                )
            else:
                self.pods[name] = pod(name, "Failed", exit_code, reason, uid=old.metadata.uid, job=job)
                self.status = done(
                    "Failed",
                    "PyTorchJobFailed",
                    f'job "{job}" is failing because "{rtype}" replica(s) failed.',
                )

    def delete_owner_pod(self, uid: str) -> None:
        """Delete a step pod; the garbage collector deletes every job none of whose owners remain."""
        with self.lock:
            self.owner_pods.pop(uid, None)
            for name, job in list(self.jobs.items()):
                owners = job["metadata"].get("ownerReferences") or []
                if owners and not any(o["uid"] in self.owner_pods for o in owners):
                    del self.jobs[name]
                    self.deleted.append((name, "garbage-collector"))


def running(restarting: str | None = None) -> dict:
    conditions = [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated"}]
    conditions.append({"type": "Running", "status": "True", "reason": "PyTorchJobRunning"})
    if restarting:
        conditions.append(
            {"type": "Restarting", "status": "True", "reason": "PyTorchJobRestarting", "message": restarting}
        )
    return {"conditions": conditions}


def done(kind: str, reason: str = "", message: str = "") -> dict:
    return {
        "conditions": [
            {"type": "Running", "status": "False"},
            {"type": kind, "status": "True", "reason": reason, "message": message},
        ]
    }
