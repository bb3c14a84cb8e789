"""A small Kubeflow Pipelines v2beta1 API server on 127.0.0.1 for tests of the real `kfp.Client`.

It answers the routes pipelines/cluster.py uses the way the KFP backend does, taken from kubeflow/pipelines:

- routes and messages: backend/api/v2beta1/{healthz,pipeline,experiment,run,recurring_run,filter}.proto;
  the two multipart upload routes are plain HTTP handlers, backend/src/apiserver/main.go
  (`buildHTTPRouter`) and backend/src/apiserver/server/pipeline_upload_server.go (form file "uploadfile",
  query `name` / `display_name` / `description` / `namespace`, `pipelineid` for a version; the answer is
  the Pipeline / PipelineVersion in protojson with proto field names).
- JSON: snake_case proto names, unset fields left out, unknown request fields rejected
  (backend/src/apiserver/common/utils.go `CustomMarshaler`: UseProtoNames, EmitUnpopulated false,
  DiscardUnknown false); errors as google.rpc.Status `{"code", "message", "details"}` with the HTTP status
  grpc-gateway maps the gRPC code to (InvalidArgument 400, Unauthenticated 401, NotFound 404).
- healthz: backend/src/apiserver/main.go `healthzResponse` (commit_sha, tag_name, multi_user,
  pipeline_store).
- multi-user: experiments and recurring runs need a namespace (experiment_server.go "An experiment cannot
  have an empty namespace in multi-user mode"; job_server.go "Recurring run cannot have an empty namespace
  in multi-user mode"); a run takes its experiment's namespace; single-user drops namespaces
  (resource_manager.go `ReplaceNamespace`). Pipelines are listed per namespace (pipeline_server.go
  `listPipelines`, namespace as the filter's reference key).
- run and recurring-run parameters checked against the version's root inputs: no extra ones, required
  ones present, JSON types matching (backend/src/apiserver/template/v2_template.go
  `validatePipelineJobInputs`).
- list filters: filter.proto predicates (EQUALS, IS_SUBSTRING on string values), page_size / page_token /
  next_page_token.
- uploads are parsed strictly as PipelineSpec + PlatformSpec, and each Kubernetes executor config as
  KubernetesExecutorConfig, unknown fields rejected, as the API server does when it compiles a run
  (backend/src/v2/compiler/argocompiler/container.go, protojson.Unmarshal); the real one checks at run
  creation, this one already at upload.

In front of it, optionally, either a simple auth check (a request without the expected bearer token or
session cookie gets 401, or with login_page=True a redirect to an HTML page), or `gateway=Gateway(...)`:
the ingress gateway, oauth2-proxy and Dex of a Kubeflow 26.03 install (tests/kubeflow_gateway.py, cited
there), with the KFP API under `/pipeline` as the distribution routes it. `faults` makes the next API GETs
fail as a gateway or network does ("503": Envoy's 503 without an upstream answer; "reset": the
connection closed before any answer); "503:/dex/" fails the next request to a path starting `/dex/`
(a Dex restart during a login).

Version: healthz answers `tag_name` = the version of the `kfp-kubernetes` / `kfp-pipeline-spec` protos
installed here, which are the ones uploads are parsed with (tests/test_min_backend.py parses with the
minimum backend's own). `version` below 2.17.0 drops the Run / RecurringRun `plugins_input` field, which
backend/api/v2beta1/run.proto and recurring_run.proto first have at tag 2.17.0.
"""

from __future__ import annotations

import datetime
import email.parser
import email.policy
import importlib.metadata
import itertools
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml
from kubeflow_gateway import Gateway, Reply

MESSAGE_FIELDS = {
    "Pipeline": {
        "pipeline_id",
        "display_name",
        "name",
        "description",
        "created_at",
        "namespace",
        "error",
        "tags",
    },
    "Experiment": {
        "experiment_id",
        "display_name",
        "description",
        "created_at",
        "namespace",
        "storage_state",
        "last_run_created_at",
    },
    "Run": {
        "experiment_id",
        "run_id",
        "display_name",
        "storage_state",
        "description",
        "pipeline_version_id",
        "pipeline_spec",
        "pipeline_version_reference",
        "runtime_config",
        "service_account",
        "created_at",
        "scheduled_at",
        "finished_at",
        "state",
        "error",
        "run_details",
        "recurring_run_id",
        "state_history",
        "plugins_input",
        "plugins_output",
    },
    "RecurringRun": {
        "recurring_run_id",
        "display_name",
        "description",
        "pipeline_version_id",
        "pipeline_spec",
        "pipeline_version_reference",
        "runtime_config",
        "service_account",
        "max_concurrency",
        "trigger",
        "mode",
        "created_at",
        "updated_at",
        "status",
        "error",
        "no_catchup",
        "namespace",
        "experiment_id",
        "plugins_input",
    },
}
# the protos this server parses uploads with; healthz says so
PROTO_VERSION = importlib.metadata.version("kfp-kubernetes")
PLUGINS_SINCE = (2, 17, 0)
GRPC_INVALID_ARGUMENT, GRPC_NOT_FOUND, GRPC_UNAUTHENTICATED = 3, 5, 16
HTTP_FOR_GRPC = {GRPC_INVALID_ARGUMENT: 400, GRPC_NOT_FOUND: 404, GRPC_UNAUTHENTICATED: 401}
OPERATIONS = {1: "EQUALS", 9: "IS_SUBSTRING"}


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    user: str | None = None  # kubeflow-userid the gateway passed on


@dataclass
class FakeKfp:
    """The server's state; `requests` records every request (auth-rejected ones included)."""

    multi_user: bool = True
    token: str | None = None
    cookie: str | None = None  # "name=value" the proxy expects
    login_page: bool = False
    final_run_state: str = "SUCCEEDED"
    running_polls: int = 0  # GETs of a run that answer RUNNING before final_run_state
    gateway: Gateway | None = None
    version: str = PROTO_VERSION
    faults: list[str] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    run_polls: dict[str, int] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids):04d}"

    def api_calls(self, method: str | None = None, path_prefix: str = "/apis/") -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith(path_prefix) and method in (None, r.method)]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


MLFLOW_PLUGIN_INPUT = {"experiment_name", "experiment_id", "disabled"}


def _check_plugins_input(body: dict) -> None:
    """backend/src/apiserver/plugins/mlflow/config.go at 2.17.0 (ResolveMLflowPluginInput): the mlflow entry
    decoded with DisallowUnknownFields into {experiment_name, experiment_id, disabled}."""
    mlflow = (body.get("plugins_input") or {}).get("mlflow")
    if mlflow is not None and (not isinstance(mlflow, dict) or set(mlflow) - MLFLOW_PLUGIN_INPUT):
        raise ApiError(
            GRPC_INVALID_ARGUMENT,
            "Failed to create a run due to invalid MLflow plugin input: plugins_input.mlflow must follow schema "
            "{experiment_name?: string, experiment_id?: string, disabled?: bool}",
        )


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("-")[0].split(".")[:3])


def _check_fields(message: str, body: dict, version: str = PROTO_VERSION) -> None:
    known = MESSAGE_FIELDS[message]
    if _version_tuple(version) < PLUGINS_SINCE:
        known = known - {"plugins_input", "plugins_output"}
    unknown = set(body) - known
    if unknown:
        raise ApiError(GRPC_INVALID_ARGUMENT, f"proto: ({message}) unknown field {sorted(unknown)[0]!r}")


def _clean(message: dict) -> dict:
    """protojson with EmitUnpopulated false: unset (None, empty) fields are left out."""
    return {k: v for k, v in message.items() if v not in (None, "", {}, [])}


def _matches(item: dict, filter_json: str | None) -> bool:
    if not filter_json:
        return True
    spec = json.loads(filter_json)
    for predicate in spec.get("predicates", []):
        operation = predicate.get("operation")
        operation = OPERATIONS.get(operation, operation)
        value = predicate.get("string_value", predicate.get("stringValue"))
        actual = str(item.get(predicate["key"], ""))
        if operation == "EQUALS" and actual != value:
            return False
        if operation == "IS_SUBSTRING" and value not in actual:
            return False
        if operation not in ("EQUALS", "IS_SUBSTRING"):
            raise ApiError(GRPC_INVALID_ARGUMENT, f"unsupported operation {operation} in the fake")
    return True


def _page(items: list[dict], query: dict[str, str], key: str) -> dict:
    matching = [i for i in items if _matches(i, query.get("filter"))]
    start = int(query.get("page_token") or 0)
    size = int(query.get("page_size") or 10)
    chunk = matching[start : start + size]
    token = str(start + size) if start + size < len(matching) else ""
    return _clean({key: [_clean(i) for i in chunk], "total_size": len(matching), "next_page_token": token})


def _parse_package(data: bytes) -> dict:
    """Parse an uploaded package as the backend does: PipelineSpec (+ PlatformSpec), strictly."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    docs = list(yaml.safe_load_all(data))
    try:
        json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
        if len(docs) > 1:
            platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
            for config in platform.platforms["kubernetes"].deployment_spec.executors.values():
                json_format.ParseDict(
                    json_format.MessageToDict(config),
                    kubernetes_executor_config_pb2.KubernetesExecutorConfig(),
                )
    except json_format.ParseError as err:
        raise ApiError(GRPC_INVALID_ARGUMENT, f"Failed to read a pipeline spec file: {err}") from None
    return docs[0]


JSON_TYPES = {
    "STRING": str,
    "BOOLEAN": bool,
    "NUMBER_INTEGER": (int, float),
    "NUMBER_DOUBLE": (int, float),
    "LIST": list,
    "STRUCT": dict,
}


def _validate_inputs(state: FakeKfp, body: dict) -> None:
    """validatePipelineJobInputs: the run's parameters against the pipeline version's root inputs."""
    reference = body.get("pipeline_version_reference") or {}
    spec = (
        body.get("pipeline_spec")
        or _get(state.versions, reference.get("pipeline_version_id", ""), "PipelineVersion")["pipeline_spec"]
    )
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    given = (body.get("runtime_config") or {}).get("parameters") or {}
    for name, param in declared.items():
        if name not in given:
            if not param.get("isOptional") and "defaultValue" not in param:
                raise ApiError(
                    GRPC_INVALID_ARGUMENT,
                    f"parameter {name} is not optional, yet has neither default value nor user provided value",
                )
            continue
        expected = JSON_TYPES[param["parameterType"]]
        value = given[name]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ApiError(
                GRPC_INVALID_ARGUMENT,
                f"input parameter {name} requires type {param['parameterType']}, got {value!r}",
            )
    extra = sorted(set(given) - set(declared))
    if extra:
        raise ApiError(
            GRPC_INVALID_ARGUMENT, f"parameter(s) provided are not required by pipeline: {', '.join(extra)}"
        )


def _multipart_file(headers: Any, body: bytes) -> tuple[str, bytes]:
    raw = f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return part.get_filename() or "pipeline.yaml", part.get_payload(decode=True)
    raise ApiError(GRPC_INVALID_ARGUMENT, "Failed to read pipeline from file")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def _fault(self, state: FakeKfp, method: str, path: str) -> bool:
        """Apply the next injected fault that fits the request; True when it was answered (or dropped)."""
        with state._lock:
            for index, spec in enumerate(state.faults):
                fault, _, prefix = spec.partition(":")
                if (prefix and path.startswith(prefix)) or (
                    not prefix and method == "GET" and "/apis/" in path
                ):
                    del state.faults[index]
                    break
            else:
                return False
        if fault == "reset":
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        self._send(
            Reply(
                503,
                b"upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            )
        )
        return True

    def _authorised(self) -> bool:
        state = self.server.state
        if state.token is None and state.cookie is None:
            return True
        if state.token is not None and self.headers.get("Authorization") == f"Bearer {state.token}":
            return True
        cookies = [c.strip() for c in (self.headers.get("Cookie") or "").split(";")]
        return state.cookie is not None and state.cookie in cookies

    def _handle(self, method: str) -> None:
        state = self.server.state
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        is_json = (self.headers.get("Content-Type") or "").startswith("application/json")
        body: Any = json.loads(raw) if raw and is_json else raw
        path, user = url.path, None
        if self._fault(state, method, path):
            return None
        if state.gateway is not None:
            with state._lock:
                user, reply = state.gateway.check(method, path, query, self.headers, raw)
            if reply is None and path.rstrip("/") == "/pipeline":
                reply = Reply(200, b"<html><body>Kubeflow Pipelines</body></html>", "text/html")
            if reply is None and not path.startswith("/pipeline/"):
                reply = Reply(404, b"no route (the KFP API is under /pipeline)")
            if reply is not None:
                with state._lock:
                    state.requests.append(
                        Recorded(method, path, query, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                return self._send(reply)
            path = path[len("/pipeline") :]
        with state._lock:
            state.requests.append(
                Recorded(method, path, query, {k.lower(): v for k, v in self.headers.items()}, body, user)
            )
        if state.gateway is None and url.path == "/dex/auth":
            return self._reply(200, b"<html><body>Log in to Kubeflow</body></html>", "text/html")
        if state.gateway is None and not self._authorised():
            if state.login_page:
                self.send_response(302)
                self.send_header("Location", "/dex/auth?client_id=kubeflow-oidc-authservice")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self._reply(401, {"code": GRPC_UNAUTHENTICATED, "message": "Unauthorized", "details": []})
        try:
            with state._lock:
                status, payload = _route(state, method, path, query, body, self.headers)
        except ApiError as err:
            return self._reply(
                HTTP_FOR_GRPC[err.code], {"code": err.code, "message": err.message, "details": []}
            )
        return self._reply(status, payload)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: FakeKfp) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


def _namespace(state: FakeKfp, given: str | None, what: str) -> str:
    """ResourceManager.ReplaceNamespace: single-user drops it; multi-user requires it for `what`."""
    if not state.multi_user:
        return ""
    if not given:
        raise ApiError(GRPC_INVALID_ARGUMENT, f"{what} cannot have an empty namespace in multi-user mode")
    return given


def _get(table: dict, key: str, kind: str) -> dict:
    if key not in table:
        raise ApiError(GRPC_NOT_FOUND, f"{kind} {key} not found")
    return table[key]


def _route(state: FakeKfp, method: str, path: str, query: dict, body: Any, headers: Any) -> tuple[int, Any]:
    parts = path.strip("/").split("/")[2:]  # after apis/v2beta1
    if parts == ["healthz"] and method == "GET":
        return 200, {"commit_sha": "fake", "tag_name": state.version, "multi_user": state.multi_user}

    if parts == ["pipelines"] and method == "GET":
        namespace = query.get("namespace", "") if state.multi_user else ""
        items = [p for p in state.pipelines.values() if p.get("namespace", "") == namespace]
        return 200, _page(items, query, "pipelines")
    if parts == ["pipelines"] and method == "POST":
        _check_fields("Pipeline", body)
        if not body.get("display_name"):
            raise ApiError(GRPC_INVALID_ARGUMENT, "Pipeline display_name is required")
        namespace = body.get("namespace", "") if state.multi_user else ""
        if any(
            p["display_name"] == body["display_name"] and p.get("namespace", "") == namespace
            for p in state.pipelines.values()
        ):
            raise ApiError(GRPC_INVALID_ARGUMENT, f"Pipeline {body['display_name']} already exists")
        pipeline = {
            **body,
            "pipeline_id": state.new_id("pipeline"),
            "name": body.get("name") or body["display_name"],
            "namespace": namespace,
            "created_at": _now(),
        }
        state.pipelines[pipeline["pipeline_id"]] = pipeline
        return 200, _clean(pipeline)
    if parts == ["pipelines", "upload_version"] and method == "POST":
        pipeline = _get(state.pipelines, query.get("pipelineid", ""), "Pipeline")
        _, data = _multipart_file(headers, body)
        spec = _parse_package(data)
        name = query.get("name") or query.get("display_name")
        if any(
            v["pipeline_id"] == pipeline["pipeline_id"] and v["name"] == name for v in state.versions.values()
        ):
            raise ApiError(GRPC_INVALID_ARGUMENT, f"Pipeline version {name} already exists")
        version = {
            "pipeline_id": pipeline["pipeline_id"],
            "pipeline_version_id": state.new_id("version"),
            "display_name": query.get("display_name") or name,
            "name": name,
            "description": query.get("description"),
            "created_at": _now(),
            "pipeline_spec": spec,
        }
        state.versions[version["pipeline_version_id"]] = version
        return 200, _clean(version)
    if len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions" and method == "GET":
        _get(state.pipelines, parts[1], "Pipeline")
        items = [v for v in state.versions.values() if v["pipeline_id"] == parts[1]]
        return 200, _page(items, query, "pipeline_versions")

    if parts == ["experiments"] and method == "GET":
        namespace = _namespace(state, query.get("namespace"), "An experiment")
        items = [e for e in state.experiments.values() if e["namespace"] == namespace]
        return 200, _page(items, query, "experiments")
    if parts == ["experiments"] and method == "POST":
        _check_fields("Experiment", body)
        namespace = _namespace(state, body.get("namespace"), "An experiment")
        experiment = {
            **body,
            "experiment_id": state.new_id("experiment"),
            "namespace": namespace,
            "created_at": _now(),
            "storage_state": "AVAILABLE",
        }
        state.experiments[experiment["experiment_id"]] = experiment
        return 200, _clean(experiment)

    if parts == ["runs"] and method == "POST":
        _check_fields("Run", body, state.version)
        _check_plugins_input(body)
        _get(state.experiments, body.get("experiment_id", ""), "Experiment")
        _validate_inputs(state, body)
        run = {
            **body,
            "run_id": state.new_id("run"),
            "state": "PENDING",
            "created_at": _now(),
            "storage_state": "AVAILABLE",
        }
        state.runs[run["run_id"]] = run
        return 200, _clean(run)
    if len(parts) == 2 and parts[0] == "runs" and method == "GET":
        run = _get(state.runs, parts[1], "Run")
        polls = state.run_polls[parts[1]] = state.run_polls.get(parts[1], 0) + 1
        run["state"] = "RUNNING" if polls <= state.running_polls else state.final_run_state
        return 200, _clean(run)

    if parts == ["recurringruns"] and method == "GET":
        if query.get("experiment_id"):
            namespace = _get(state.experiments, query["experiment_id"], "Experiment")["namespace"]
        else:
            namespace = _namespace(state, query.get("namespace"), "Recurring run")
        items = [
            r
            for r in state.recurring_runs.values()
            if (not state.multi_user or r["namespace"] == namespace)
            and query.get("experiment_id") in (None, r["experiment_id"])
        ]
        # the proto field is literally `recurringRuns` (recurring_run.proto, ListRecurringRunsResponse)
        return 200, _page(items, query, "recurringRuns")
    if parts == ["recurringruns"] and method == "POST":
        _check_fields("RecurringRun", body, state.version)
        _check_plugins_input(body)
        experiment = _get(state.experiments, body.get("experiment_id", ""), "Experiment")
        namespace = _namespace(state, body.get("namespace") or experiment["namespace"], "Recurring run")
        _validate_inputs(state, body)
        mode = body.get("mode", "ENABLE")
        recurring = {
            **body,
            "recurring_run_id": state.new_id("recurring"),
            "namespace": namespace,
            "created_at": _now(),
            "updated_at": _now(),
            "status": "ENABLED" if mode == "ENABLE" else "DISABLED",
        }
        state.recurring_runs[recurring["recurring_run_id"]] = recurring
        return 200, _clean(recurring)
    if len(parts) == 2 and parts[0] == "recurringruns" and method == "DELETE":
        _get(state.recurring_runs, parts[1], "RecurringRun")
        del state.recurring_runs[parts[1]]
        return 200, {}
    raise ApiError(GRPC_NOT_FOUND, f"no route {method} {path} in the fake KFP API")


class KfpApiServer:
    """Run :class:`FakeKfp` on 127.0.0.1 in a thread; `url` is what KFP_HOST would be."""

    def __init__(self, tls: tuple[str, str] | None = None, **settings: Any) -> None:
        """`tls`: (certificate, key) files to answer HTTPS with, as a gateway with its own CA does."""
        self.state = FakeKfp(**settings)
        self._server = _Server(self.state)
        self._scheme = "https" if tls else "http"
        if tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The server's root; with a gateway, KFP_HOST is `kfp_host` (the API under /pipeline)."""
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host}:{port}"

    @property
    def kfp_host(self) -> str:
        return f"{self.url}/pipeline" if self.state.gateway is not None else self.url

    def __enter__(self) -> KfpApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
