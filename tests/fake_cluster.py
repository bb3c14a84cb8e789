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


def api_error(status: int, reason: str, message: str = "", **headers: str) -> ApiException:
    """The client's error for an answer `status`/`reason`; `message` is the Status object's message."""
    exc = ApiException(status=status, reason=reason)
    exc.headers = headers
    exc.status_message = message
    if message:
        import json

        exc.body = json.dumps(
            {"kind": "Status", "status": "Failure", "reason": reason, "message": message, "code": status}
        )
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
    status = SimpleNamespace(  # the fields the API server always sends (V1ContainerStatus's required ones)
        name="pytorch",
        image="registry.example/sam2:1",
        image_id="registry.example/sam2@sha256:0",
        ready=phase == "Running" and exit_code is None,
        restart_count=0,
        state=SimpleNamespace(running=running, terminated=terminated, waiting=waiting_state),
    )
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, uid=uid or f"uid-{next(_uids)}", labels={JOB_NAME_LABEL: job}),
        status=SimpleNamespace(phase=phase, container_statuses=[] if phase == "Pending" else [status]),
    )


def step_pod(
    name: str, uid: str, phase: str = "Running", main_exit: int | None = None, deleting: bool = False
) -> SimpleNamespace:
    """A KFP step's pod as the API server returns it: Argo's `wait` and `main` containers (argo-workflows
    workflow/common/common.go, WaitContainerName/MainContainerName); `main_exit` terminates `main`."""

    def container(cname: str, exit_code: int | None) -> SimpleNamespace:
        terminated = None
        if exit_code is not None:
            terminated = SimpleNamespace(exit_code=exit_code, reason="Error" if exit_code else "Completed")
        return SimpleNamespace(
            name=cname,
            image="ghcr.io/kubeflow/kfp-launcher:2.16.0" if cname == "main" else "argoexec:v3.6",
            image_id="sha256:0",
            ready=terminated is None,
            restart_count=0,
            state=SimpleNamespace(running=None if terminated else SimpleNamespace(), terminated=terminated),
        )

    return SimpleNamespace(
        metadata=SimpleNamespace(
            name=name,
            uid=uid,
            labels={"workflows.argoproj.io/completed": "false"},
            deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None,
        ),
        status=SimpleNamespace(
            phase=phase, container_statuses=[container("wait", None), container("main", main_exit)]
        ),
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

    # The API groups/versions and resources its discovery answers (`/apis/<group>/<version>`); a cluster
    # with the Training Operator serves pytorchjobs, one with only Kubeflow Trainer v2 trainjobs.
    served: frozenset[str] = frozenset({"pytorchjobs"})

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
        self.step_pods: dict[str, SimpleNamespace] = {}  # name -> the pipeline steps' pods (`step_pod`)

    # -- scripted failures ---------------------------------------------------------------------------
    def _maybe_fail(self, verb: str) -> None:
        self.calls.append(verb)
        queue = self.fail_next.get(verb) or []
        if queue:
            raise queue.pop(0)

    def _unserved(self, plural: str) -> None:
        """404, as the API server answers a resource no installed CRD defines."""
        if plural not in self.served:
            raise api_error(404, "NotFound", message="the server could not find the requested resource")

    # -- CustomObjectsApi ------------------------------------------------------------------------------
    def create_namespaced_custom_object(self, group, version, ns, plural, body, **kwargs):
        self._maybe_fail("create")
        self._unserved(plural)
        if plural != "pytorchjobs":
            return self.create_trainer_object(plural, body, kwargs.get("field_validation"))
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
        self._unserved(plural)
        if plural == "trainingruntimes":
            return self.get_trainer_object(plural, name)
        if self.script:
            action = self.script.pop(0)
            if action is not None:
                action()
        if plural != "pytorchjobs":
            return self.get_trainer_object(plural, name)
        with self.lock:
            if name not in self.jobs:
                raise api_error(404, "NotFound")
            job = copy.deepcopy(self.jobs[name])
            job["status"] = copy.deepcopy(self.status)
            return job

    def patch_namespaced_custom_object(self, group, version, ns, plural, name, body):
        """A JSON merge patch of metadata (lists are replaced whole, as RFC 7386 says)."""
        self._maybe_fail("patch")
        self._unserved(plural)
        if plural != "pytorchjobs":
            return self.patch_trainer_object(plural, name, body)
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
        self._unserved(plural)
        if plural != "pytorchjobs":
            return self.delete_trainer_object(plural, name, propagation_policy)
        with self.lock:
            if name not in self.jobs:
                raise api_error(404, "NotFound")
            self.deleted.append((name, propagation_policy))
            del self.jobs[name]
            for pod_name in [
                p for p, o in self.pods.items() if o.metadata.labels.get(JOB_NAME_LABEL) == name
            ]:
                del self.pods[pod_name]

    def api_resources(self, group: str, version: str) -> dict:
        """The APIResourceList of `GET /apis/<group>/<version>` (the API server's discovery); 404 when the
        cluster serves nothing of that group version (kubernetes apiserver: no such handler)."""
        kinds = {
            "pytorchjobs": ("kubeflow.org", "v1", "PyTorchJob", True),
            "trainjobs": ("trainer.kubeflow.org", "v1alpha1", "TrainJob", True),
            "trainingruntimes": ("trainer.kubeflow.org", "v1alpha1", "TrainingRuntime", True),
            "clustertrainingruntimes": ("trainer.kubeflow.org", "v1alpha1", "ClusterTrainingRuntime", False),
        }
        resources = [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
            }
            for plural, (g, v, kind, namespaced) in kinds.items()
            if plural in self.served and (g, v) == (group, version)
        ]
        if not resources:
            raise api_error(404, "NotFound", message="the server could not find the requested resource")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}",
            "resources": resources,
        }

    def get_api_resources(self, group: str, version: str) -> SimpleNamespace:
        """`CustomObjectsApi.get_api_resources` for in-process tests: the list's resources by name."""
        self._maybe_fail("discovery")
        found = self.api_resources(group, version)
        return SimpleNamespace(
            resources=[SimpleNamespace(name=r["name"], kind=r["kind"]) for r in found["resources"]]
        )

    # Kubeflow Trainer objects: see tests/fake_trainer.py (FakeTrainerCluster)
    def create_trainer_object(self, plural, body, field_validation):
        raise api_error(404, "NotFound")

    get_trainer_object = patch_trainer_object = delete_trainer_object = create_trainer_object

    # -- CoreV1Api ---------------------------------------------------------------------------------------
    def list_namespaced_pod(self, ns, label_selector=""):
        self._maybe_fail("list_pods")
        wanted = [part.partition("=")[::2] for part in label_selector.split(",") if part]
        with self.lock:
            items = [
                p
                for p in self.pods.values()
                if all(p.metadata.labels.get(k) == v for k, v in wanted if not k.endswith("replica-type"))
            ]
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

    def read_namespaced_pod(self, name, ns):
        """One pod by name (a step's or a job's); 404 when there is none."""
        self._maybe_fail("read_pod")
        with self.lock:
            found = self.step_pods.get(name) or self.pods.get(name)
            if found is None:
                raise api_error(404, "NotFound")
            return found

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


# -- the same cluster behind HTTP, for the real `kubernetes` client ------------------------------------------


def _v1_list(kind: str, items: list[Any]) -> dict[str, Any]:
    """The core/v1 list object (PodList, EventList) the API server answers a list call with."""
    return {"kind": kind, "apiVersion": "v1", "metadata": {}, "items": _to_json(items)}


def _to_json(obj: Any) -> Any:
    """A SimpleNamespace tree as the API server's JSON (camelCase keys, as the OpenAPI models name them)."""
    if isinstance(obj, SimpleNamespace):
        out = {}
        for key, value in vars(obj).items():
            if value is None:
                continue
            head, *rest = key.split("_")
            name = head + "".join(part.title() for part in rest)
            out[name.replace("Id", "ID") if name.endswith("Id") else name] = _to_json(value)  # imageID
        return out
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    return obj


def serve(cluster: FakeCluster):
    """Start an HTTP server on 127.0.0.1 answering the paths the launcher calls (the Kubernetes REST API:
    /apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs[/{name}], /api/v1/namespaces/{ns}/pods,
    .../pods/{name}/log, .../events) from `cluster`; errors as `Status` objects with their code. Returns
    (server, kubernetes.client.ApiClient); call server.shutdown() when done."""
    import json
    import re
    import socket
    import struct
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlparse

    from kubernetes import client

    jobs = re.compile(r"^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([a-z]+)(?:/([^/]+))?$")
    discovery = re.compile(r"^/apis/([^/]+)/([^/]+)$")
    core = re.compile(r"^/api/v1/namespaces/([^/]+)/(pods|events)(?:/([^/]+)/log)?$")
    one_pod = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, status: int, body: Any, content_type: str = "application/json", headers=None):
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length)) if length else {}

        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            try:
                body = self._body() if method in ("POST", "PATCH", "DELETE") else None
                if (match := discovery.match(url.path)) and method == "GET":
                    return self._reply(200, cluster.api_resources(*match.groups()))
                if match := jobs.match(url.path):
                    group, version, ns, plural, name = match.groups()
                    args = (group, version, ns, plural)
                    if method == "POST":
                        extra = (
                            {"field_validation": query["fieldValidation"]}
                            if "fieldValidation" in query
                            else {}
                        )
                        return self._reply(201, cluster.create_namespaced_custom_object(*args, body, **extra))
                    if method == "GET":
                        return self._reply(200, cluster.get_namespaced_custom_object(*args, name))
                    if method == "PATCH":
                        assert self.headers["Content-Type"] == "application/merge-patch+json"
                        return self._reply(200, cluster.patch_namespaced_custom_object(*args, name, body))
                    if method == "DELETE":
                        policy = (body or {}).get("propagationPolicy") or query.get("propagationPolicy")
                        cluster.delete_namespaced_custom_object(*args, name, propagation_policy=policy)
                        return self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                if (match := one_pod.match(url.path)) and method == "GET":
                    ns, pod_name = match.groups()
                    found = cluster.read_namespaced_pod(pod_name, ns)
                    return self._reply(200, {"kind": "Pod", "apiVersion": "v1", **_to_json(found)})
                if (match := core.match(url.path)) and method == "GET":
                    ns, kind, pod_name = match.groups()
                    if pod_name:
                        text = cluster.read_namespaced_pod_log(
                            pod_name,
                            ns,
                            container=query.get("container"),
                            tail_lines=int(query.get("tailLines", 0)) or None,
                        )
                        return self._reply(200, text, "text/plain")
                    if kind == "pods":
                        items = cluster.list_namespaced_pod(
                            ns, label_selector=query.get("labelSelector", "")
                        ).items
                        return self._reply(200, _v1_list("PodList", items))
                    items = cluster.list_namespaced_event(
                        ns, field_selector=query.get("fieldSelector", "")
                    ).items
                    return self._reply(200, _v1_list("EventList", items))
                return self._reply(
                    404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
                )
            except ApiException as exc:
                status = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": exc.reason,
                    "message": getattr(exc, "status_message", "") or "",
                    "code": exc.status,
                }
                return self._reply(exc.status, status, headers=getattr(exc, "headers", None))
            except Exception as exc:  # noqa: BLE001 - a scripted dropped connection
                from urllib3.exceptions import ProtocolError

                if not isinstance(exc, ProtocolError):
                    raise
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

        def do_PATCH(self):
            self._handle("PATCH")

        def do_DELETE(self):
            self._handle("DELETE")

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # a connection closed on purpose

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    return server, client.ApiClient(config)
