"""Start and schedule the pipeline on a Kubeflow Pipelines endpoint (KFP_HOST), as a multi-user Kubeflow needs.

- Credentials and what a refusal says: pipelines/cluster_auth.py (KFP_TOKEN, the service-account token
  file, KFP_USERNAME / KFP_PASSWORD through Dex, KFP_COOKIES, none).
- A Dex login is repeated when the session cookie expires (oauth2-proxy's cookie_expire, 24 h), so a long
  wait goes on; reads are retried with backoff on 5xx answers and dropped connections.
- Namespace: `--namespace` / `KFP_NAMESPACE`, else the current kube context's, else the pod's own; a
  multi-user backend without one is an error naming KFP_NAMESPACE.
- Runs start from an uploaded pipeline version: the pipeline `sam2-finetune` is created once, a version is
  added per code version and compiled spec (`<git commit or package version>-<spec sha256[:12]>`), and an
  unchanged spec reuses its version. One experiment per data set (`sam2-<dataset>`).
- A schedule with the name of an existing one replaces it (KFP's v2beta1 API has no update for recurring
  runs: backend/api/v2beta1/recurring_run.proto offers create, get, list, enable, disable, delete), or is
  kept as it is when nothing changed.

A 401/403 from the endpoint, or an auth proxy's login page, is a :class:`ClusterAuthError` naming the
setting to fix.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipelines.cluster_auth import (
    CA_CERT_ENV,
    Credentials,
    auth_hint,
    ca_cert,
    dex_cookies,
    resolve_credentials,
)
from pipelines.cluster_errors import ClusterAuthError, ClusterError, ClusterSettingError
from pipelines.sam2_finetune import PIPELINE_NAME
from sam2.utils.code_version import code_version

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Every step runs as this account; k8s/rbac.yaml grants it PyTorchJobs, their pods and logs, what the KFP
# driver/launcher and Argo's executor need, and get on KFP's artifact-store Secret.
DEFAULT_SERVICE_ACCOUNT = "sam2-pipeline"
NAMESPACE_ENV = "KFP_NAMESPACE"
POD_NAMESPACE_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# The oldest KFP backend that accepts the compiled pipeline: every step's Kubernetes executor config carries
# `securityContext` (the restricted Pod Security Standard), a field kubeflow/pipelines first has at tag
# 2.16.0 (kubernetes_platform/proto/kubernetes_executor_config.proto, `SecurityContext security_context =
# 18`; absent at 2.15.0), and the API server unmarshals that config strictly (protojson, unknown fields
# refused). tests/test_min_backend.py parses the compiled YAML with the protos of this release.
MIN_BACKEND_VERSION = "2.16.0"


def resolve_namespace(
    namespace: str | None = None, environ: Mapping[str, str] | None = None, kube_config: str | None = None
) -> str | None:
    """KFP_NAMESPACE, else the current kube context's namespace, else this pod's namespace, else None."""
    env = os.environ if environ is None else environ
    if namespace:
        return namespace
    if env.get(NAMESPACE_ENV, "").strip():
        return env[NAMESPACE_ENV].strip()
    try:
        from kubernetes import config as kube

        _, active = kube.list_kube_config_contexts(config_file=kube_config or env.get("KUBECONFIG") or None)
        found = (active or {}).get("context", {}).get("namespace")
        if found:
            return found
    except Exception as err:  # no kubeconfig, or a malformed one: fall through to the pod's namespace
        logger.debug("no namespace from the kube context: %s", err)
    pod_namespace = Path(POD_NAMESPACE_PATH)
    if pod_namespace.is_file():
        return pod_namespace.read_text().strip() or None
    return None


def _normalise_host(host: str) -> str:
    host = host.strip().rstrip("/")
    return host if host.startswith(("http://", "https://")) else f"https://{host}"


def _api_error(
    err: Exception, host: str, credentials: Credentials, doing: str, namespace: str | None
) -> ClusterError:
    status = getattr(err, "status", None)
    body = getattr(err, "body", None) or ""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    body = body.strip()
    if status == 401:
        return ClusterAuthError(f"{doing}: 401 Unauthorized. {auth_hint(host, credentials, body)}", 401)
    if status == 403:
        where = f"namespace {namespace!r}" if namespace else "the shared namespace"
        return ClusterAuthError(
            f"{doing}: 403 Forbidden in {where}. Check {NAMESPACE_ENV} names a profile namespace you may use "
            f"(a contributor of that profile), and that the credentials ({credentials.source}) are yours",
            403,
        )
    reason = getattr(err, "reason", None) or err
    return ClusterError(
        f"{doing} on {host} failed: {status or ''} {reason} {body[:500]}".strip(),
        status,
        transient=bool(status and status >= 500),
    )


@dataclass
class Connection:
    """A `kfp.Client` with where it points and how it authenticates."""

    client: Any
    host: str
    namespace: str | None
    credentials: Credentials
    multi_user: bool
    backend_version: str = ""
    # reads that meet a 5xx or a dropped connection are retried for this long, the pause doubling from
    # backoff_s up to backoff_max_s
    patience_s: float = 120.0
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    logins: int = 0

    @contextlib.contextmanager
    def calling(self, doing: str) -> Iterator[None]:
        """Turn the KFP client's API errors into ClusterError / ClusterAuthError naming the fix."""
        import kfp_server_api
        import urllib3

        try:
            yield
        except kfp_server_api.ApiException as err:
            raise _api_error(err, self.host, self.credentials, doing, self.namespace) from None
        except urllib3.exceptions.HTTPError as err:
            raise ClusterError(
                f"{doing}: cannot reach {self.host} ({err}); check KFP_HOST", transient=True
            ) from None

    def renew(self) -> bool:
        """Log in through Dex again and give the client the new session cookie; False if not a Dex login.

        Raises:
            ClusterAuthError: Dex refused the login (the password changed, the account was removed).
            ClusterError: the gateway or Dex was unavailable (transient).
        """
        if self.credentials.dex is None:
            return False
        cookies = dex_cookies(self.host, self.credentials)
        if self.client is not None:
            # every service API of kfp.Client shares this one ApiClient (kfp/client/client.py __init__)
            self.client._run_api.api_client.cookie = cookies
        self.logins += 1
        logger.info("session renewed: logged in again as %s", self.credentials.dex.username)
        return True

    def call(
        self, doing: str, request: Callable[[], T], read: bool = False, patience_s: float | None = None
    ) -> T:
        """Run one API request, turning errors into ClusterError naming the fix.

        A 401 with a Dex login logs in again and repeats the request once (the gateway refused it before
        the backend saw it, so even a create is safe to repeat). A `read` also waits out 5xx answers and
        dropped connections for `patience_s` (default: the connection's), with exponential backoff.
        """
        patience = self.patience_s if patience_s is None else patience_s
        renewed, pause, first_failure = False, self.backoff_s, None
        while True:
            try:
                with self.calling(doing):
                    return request()
            except ClusterError as failed:
                err = failed
            if isinstance(err, ClusterAuthError) and err.status == 401 and not renewed:
                try:
                    if self.renew():
                        renewed = True
                        continue
                except ClusterError as login_failed:  # a gateway or Dex blip during the login: waited out
                    if not login_failed.transient:
                        raise
                    err = login_failed
            if not (read and err.transient):
                raise err
            now = time.monotonic()
            first_failure = first_failure or now
            if now - first_failure + pause > patience:
                raise err
            logger.warning("%s: %s; retrying in %.0f s", doing, err, pause)
            time.sleep(pause)
            pause = min(pause * 2, self.backoff_max_s)


def _release(version: str) -> tuple[int, ...] | None:
    """(major, minor, patch) of a release tag such as 2.16.0 or v2.17.0-rc.1; None for a dev build."""
    found = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", version.strip())
    return tuple(int(g) for g in found.groups()) if found else None


def check_backend_version(host: str, tag_name: str) -> None:
    """Refuse a KFP backend older than MIN_BACKEND_VERSION (healthz tag_name) before anything is uploaded.

    Raises:
        ClusterError: the backend's release is older; it would refuse every run of this pipeline.
    """
    release = _release(tag_name)
    if release is None:
        logger.info("KFP backend at %s reports version %r: not a release, not checked", host, tag_name)
        return
    if release < (_release(MIN_BACKEND_VERSION) or ()):
        raise ClusterError(
            f"the KFP backend at {host} is {tag_name}; this pipeline needs {MIN_BACKEND_VERSION} or newer: every "
            "step's Kubernetes executor config sets securityContext, which KFP backends before "
            f"{MIN_BACKEND_VERSION} refuse as an unknown field (kubernetes_executor_config.proto security_context "
            "= 18, new in 2.16.0). Upgrade Kubeflow Pipelines (Kubeflow 26.03 ships 2.16.x)"
        )


def _not_kfp_answer(err: Exception) -> str:
    """What shows an error answer came from a server that is not KFP nor a Kubeflow gateway ("" when
    nothing does): an S3 or other XML error document, or a method/route the KFP API serves (404/405/501)."""
    body = getattr(err, "body", None) or ""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    body = body.strip()
    if body.startswith("<?xml") or body.startswith("<Error>"):
        return "with an XML error document (an S3 server?)"
    if getattr(err, "status", None) in (404, 405, 501):
        return "to GET /apis/v2beta1/healthz"
    return ""


def _probe(host: str, credentials: Credentials, ca_cert: str | None = None) -> dict:
    """GET healthz once with the credentials; returns the backend's healthz answer (multi_user, tag_name).

    kfp.Client retries healthz five times with sleeps on any error, so a rejected token would take half a
    minute to surface; an auth proxy may also answer with its login page (HTTP 200, HTML) instead of 401.
    """
    import kfp_server_api
    import urllib3

    config = kfp_server_api.Configuration(host=host)
    if ca_cert:
        config.ssl_ca_cert = ca_cert
    token = credentials.token
    if credentials.token_path:
        token = Path(credentials.token_path).read_text().strip()
    if token:
        config.api_key["authorization"] = token
        config.api_key_prefix["authorization"] = "Bearer"
    api = kfp_server_api.ApiClient(config, cookie=credentials.cookies)
    doing = "checking the KFP endpoint (GET /apis/v2beta1/healthz)"
    try:
        response = kfp_server_api.HealthzServiceApi(api).healthz_service_get_healthz(_preload_content=False)
    except kfp_server_api.ApiException as err:
        not_kfp = _not_kfp_answer(err)
        if not_kfp:
            raise ClusterSettingError(
                f"{doing}: {host} answered HTTP {err.status} {not_kfp}, not as the Kubeflow Pipelines API does: "
                "check KFP_HOST (the KFP API's base URL, e.g. http://localhost:8080 after `kubectl -n kubeflow "
                "port-forward svc/ml-pipeline-ui 8080:80`, or the Kubeflow gateway's URL)",
                err.status,
            ) from None
        raise _api_error(err, host, credentials, doing, None) from None
    except urllib3.exceptions.HTTPError as err:
        if isinstance(err, urllib3.exceptions.SSLError) or isinstance(
            getattr(err, "reason", None), urllib3.exceptions.SSLError
        ):
            raise ClusterError(
                f"{doing}: the TLS certificate of {host} is not trusted ({err}); set {CA_CERT_ENV} to the CA "
                "bundle that signed it"
            ) from None
        raise ClusterError(f"{doing}: cannot reach {host} ({err}); check KFP_HOST", transient=True) from None
    if response.status in (401, 403):
        answer = response.data.decode(errors="replace") if response.data else ""
        raise ClusterAuthError(
            f"{doing}: {response.status}. {auth_hint(host, credentials, answer)}", response.status
        )
    if response.status >= 300:
        raise ClusterError(
            f"{doing}: HTTP {response.status} from {host}; check KFP_HOST (the KFP API's base URL)"
        )
    try:
        health = json.loads(response.data)
    except ValueError:
        raise ClusterAuthError(
            f"{doing}: {host} answered with a page that is not the KFP API (a login page?). "
            + auth_hint(host, credentials)
        ) from None
    return health


def connect(
    host: str,
    namespace: str | None = None,
    token: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Connection:
    """A kfp.Client for `host` with the user's credentials and namespace, checked against the endpoint.

    Raises:
        ClusterAuthError: the endpoint refused the credentials (the message names KFP_TOKEN / KFP_COOKIES).
        ClusterError: the endpoint is unreachable, or multi-user and no namespace is known.
    """
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    host = _normalise_host(host)
    credentials = resolve_credentials(token, environ)
    if credentials.dex is not None:
        credentials = replace(credentials, cookies=dex_cookies(host, credentials))
    health = _probe(host, credentials, ca_cert(os.environ if environ is None else environ))
    check_backend_version(host, str(health.get("tag_name") or ""))
    multi_user = bool(health.get("multi_user"))
    resolved = resolve_namespace(namespace, environ)
    if multi_user and not resolved:
        raise ClusterError(
            f"{host} is a multi-user Kubeflow Pipelines: set {NAMESPACE_ENV} to your profile namespace "
            "(e.g. kubeflow-user-example-com), or select it in your kube context"
        )
    if not multi_user:
        if resolved:
            logger.info("%s is single-user: namespace %s is not used", host, resolved)
        resolved = None
    kwargs: dict[str, Any] = {
        "host": host,
        "namespace": resolved,
        "ssl_ca_cert": ca_cert(os.environ if environ is None else environ),
    }
    if credentials.token:
        kwargs["existing_token"] = credentials.token
    elif credentials.token_path:
        # re-read before every request: the kubelet rotates projected tokens
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(credentials.token_path)
    elif credentials.cookies:
        kwargs["cookies"] = credentials.cookies
    connection = Connection(None, host, resolved, credentials, multi_user, str(health.get("tag_name") or ""))
    with connection.calling("connecting to Kubeflow Pipelines"):
        connection.client = kfp.Client(**kwargs)
    logger.info(
        "KFP %s (%s, namespace %s, credentials: %s)",
        host,
        "multi-user" if multi_user else "single-user",
        resolved or "-",
        credentials.source,
    )
    return connection


def _package() -> Path:
    """Compile afresh (with this shell's SAM2_PIPELINE_IMAGE) into a temp file, leaving the committed one."""
    from pipelines.compile import compile_pipeline

    return compile_pipeline(Path(tempfile.mkdtemp(prefix="sam2-pipeline-")) / "sam2_finetune.yaml")


def spec_digest(package: str | os.PathLike[str]) -> str:
    """SHA-256 of the compiled pipeline's content (pipeline and platform specs), independent of formatting."""
    docs = list(yaml.safe_load_all(Path(package).read_text()))
    return hashlib.sha256(json.dumps(docs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _equals(key: str, value: str) -> str:
    """A v2beta1 list filter (backend/api/v2beta1/filter.proto): `key` EQUALS `value`."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "string_value": value}]})


@dataclass(frozen=True)
class PipelineVersion:
    pipeline_id: str
    version_id: str
    name: str
    reused: bool


def ensure_pipeline_version(
    connection: Connection, package: str | os.PathLike[str], code: str | None = None
) -> PipelineVersion:
    """The uploaded version of `package` under the pipeline `sam2-finetune`, uploading what is missing.

    The pipeline is created once (in the namespace, on a multi-user backend); a version named
    `<code>-<spec sha256[:12]>` is added when no version of the pipeline has that spec hash yet.
    """
    client, ns = connection.client, connection.namespace
    digest = spec_digest(package)
    suffix = f"-{digest[:12]}"
    found = connection.call(
        f"looking up pipeline {PIPELINE_NAME!r}",
        lambda: client.list_pipelines(
            filter=_equals("display_name", PIPELINE_NAME), namespace=ns, page_size=2
        ),
        read=True,
    )
    pipelines = found.pipelines or []
    if len(pipelines) > 1:
        raise ClusterError(f"{len(pipelines)} pipelines are named {PIPELINE_NAME!r} in {ns or 'the cluster'}")
    if pipelines:
        pipeline_id = pipelines[0].pipeline_id
        token = ""
        while True:
            page = connection.call(
                f"listing the versions of {PIPELINE_NAME!r}",
                lambda token=token: client.list_pipeline_versions(
                    pipeline_id, page_token=token, page_size=100
                ),
                read=True,
            )
            for version in page.pipeline_versions or []:
                if (version.display_name or "").endswith(suffix):
                    logger.info("pipeline version %s has this spec: reusing it", version.display_name)
                    return PipelineVersion(
                        pipeline_id, version.pipeline_version_id, version.display_name, True
                    )
            token = page.next_page_token or ""
            if not token:
                break
    else:
        import kfp_server_api

        body = kfp_server_api.V2beta1Pipeline(
            display_name=PIPELINE_NAME,
            description="Fine-tune SAM 2 on a VOS data set, evaluate J&F, promote in MLflow (sam2-kubeflow)",
            namespace=ns,
        )
        pipeline_id = connection.call(
            f"creating pipeline {PIPELINE_NAME!r}",
            lambda: client.pipelines.pipeline_service_create_pipeline(pipeline=body).pipeline_id,
        )
        logger.info("created pipeline %s (%s)", PIPELINE_NAME, pipeline_id)
    name = f"{code or code_version()}{suffix}"
    version = connection.call(
        f"uploading pipeline version {name!r}",
        lambda: client.upload_pipeline_version(
            str(package),
            pipeline_version_name=name,
            pipeline_id=pipeline_id,
            description=f"compiled spec sha256 {digest}",
        ),
    )
    logger.info("uploaded pipeline version %s", name)
    return PipelineVersion(pipeline_id, version.pipeline_version_id, name, False)


def experiment_name(dataset: str) -> str:
    """One experiment per data set."""
    return f"sam2-{dataset}"


# backend/api/v2beta1/run.proto and recurring_run.proto: `plugins_input` first exists at tag 2.17.0; a
# 2.16 API server refuses it as an unknown field
PLUGINS_SINCE = (2, 17, 0)


def plugins_input(connection: Connection, dataset: str) -> dict[str, Any] | None:
    """KFP 2.17's MLflow integration: ask for the experiment `sam2-<dataset>` where the backend has the field.

    The API server reads `plugins_input.mlflow` as {experiment_name?, experiment_id?, disabled?}
    (backend/src/apiserver/plugins/mlflow/config.go at 2.17.0, `MLflowPluginInput`), and where an admin
    did not configure the integration it starts the run without it. None for older or unknown backends.
    """
    release = _release(connection.backend_version)
    if release is None or release < PLUGINS_SINCE:
        return None
    return {"mlflow": {"experiment_name": experiment_name(dataset)}}


def _experiment_id(connection: Connection, dataset: str) -> str:
    experiment = connection.call(
        f"getting or creating experiment {experiment_name(dataset)!r}",
        lambda: connection.client.create_experiment(experiment_name(dataset), namespace=connection.namespace),
    )
    return experiment.experiment_id


@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    version: PipelineVersion
    state: str | None = None


def submit(
    connection: Connection,
    arguments: dict[str, Any],
    dataset: str,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    wait_timeout_s: float | None = None,
    package: str | os.PathLike[str] | None = None,
    poll_s: float = 30.0,
) -> SubmittedRun:
    """Start one run from the uploaded pipeline version; waits for it when a timeout is given.

    Raises:
        ClusterError: the run could not start, or (waiting) ended in another state than SUCCEEDED.
    """
    version = ensure_pipeline_version(connection, package or _package())
    experiment_id = _experiment_id(connection, dataset)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    import kfp_server_api

    body = kfp_server_api.V2beta1Run(
        experiment_id=experiment_id,
        display_name=f"sam2-{dataset}-{stamp}",
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=version.pipeline_id, pipeline_version_id=version.version_id
        ),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=arguments),
        service_account=service_account,
        plugins_input=plugins_input(connection, dataset),
    )
    run = connection.call("starting the run", lambda: connection.client.runs.run_service_create_run(run=body))
    logger.info("started run %s from pipeline version %s", run.run_id, version.name)
    if not wait_timeout_s:
        return SubmittedRun(run.run_id, version)
    state = wait_for_run(connection, run.run_id, wait_timeout_s, poll_s)
    if state != "SUCCEEDED":
        raise ClusterError(
            f"run {run.run_id} ended as {state}; see it in the KFP UI at {run_url(connection, run.run_id)}"
        )
    return SubmittedRun(run.run_id, version, state)


# v2beta1 RuntimeState values a run does not leave (backend/api/v2beta1/run.proto)
FINAL_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})


FOLLOW_PATIENCE_S = 30 * 60  # how long following a run waits out a gateway or API server that is down


class FollowError(ClusterError):
    """Following a run stopped; the run itself goes on (the message says where and how to resume)."""


def run_url(connection: Connection, run_id: str) -> str:
    """The run's page in the KFP UI (served at the same address as its API, e.g. <gateway>/pipeline)."""
    return f"{connection.host}/#/runs/details/{run_id}"


def resume_command(run_id: str) -> str:
    return f"python -m pipelines.run follow {run_id} (or: make pipeline-follow RUN={run_id})"


def wait_for_run(
    connection: Connection,
    run_id: str,
    timeout_s: float,
    poll_s: float = 30.0,
    patience_s: float = FOLLOW_PATIENCE_S,
) -> str:
    """Poll the run until it is over; logs each state change once (kfp.Client's wait logs every 5 s).

    An expired Dex session is renewed by logging in again; 5xx answers and dropped connections are waited
    out for `patience_s` with backoff.

    Raises:
        FollowError: still not over after `timeout_s`, or the endpoint kept failing or refusing; the run
            goes on, and the message gives its UI link and the command that resumes following it.
    """
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            state = connection.call(
                f"getting the state of run {run_id}",
                lambda: connection.client.get_run(run_id).state,
                read=True,
                patience_s=patience_s,
            )
        except ClusterError as err:
            raise FollowError(
                f"stopped following run {run_id}: {err}\nThe run goes on in the cluster: {run_url(connection, run_id)}"
                f"\nResume following it with: {resume_command(run_id)}",
                err.status,
            ) from None
        if state != last:
            logger.info("run %s: %s", run_id, state)
            last = state
        if state in FINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            raise FollowError(
                f"run {run_id} is still {state} after {timeout_s / 3600:.1f} h; it goes on running: follow it in "
                f"the KFP UI at {run_url(connection, run_id)}\nResume following it with: {resume_command(run_id)}"
            )
        time.sleep(poll_s)


def check_cron(cron: str) -> str:
    """KFP cron expressions have six fields, seconds first; anything else is a ValueError saying so."""
    if len(cron.split()) != 6:
        if not cron.strip():
            raise ValueError('schedule needs --cron, e.g. --cron "0 0 3 * * 0" (six fields, seconds first)')
        raise ValueError(
            f"KFP cron expressions have six fields (seconds first), e.g. '0 0 3 * * 0'; got {cron!r}"
        )
    return cron


@dataclass(frozen=True)
class Schedule:
    recurring_run_id: str
    action: str  # "created", "replaced" or "unchanged"
    replaced: tuple[str, ...]
    version: PipelineVersion


def _same_schedule(
    existing: Any,
    experiment_id: str,
    version: PipelineVersion,
    cron: str,
    params: dict,
    service_account: str,
    plugins: dict | None,
) -> bool:
    reference = existing.pipeline_version_reference
    trigger = existing.trigger.cron_schedule if existing.trigger else None
    runtime = existing.runtime_config
    return (
        existing.experiment_id == experiment_id
        and reference is not None
        and reference.pipeline_version_id == version.version_id
        and trigger is not None
        and trigger.cron == cron
        and (runtime.parameters if runtime else None) == params
        and existing.service_account == service_account
        and existing.mode == "ENABLE"
        and (getattr(existing, "plugins_input", None) or None) == plugins
    )


def schedule(
    connection: Connection,
    arguments: dict[str, Any],
    dataset: str,
    cron: str,
    job_name: str,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    package: str | os.PathLike[str] | None = None,
) -> Schedule:
    """A recurring run named `job_name` (KFP cron: six fields, seconds first) from the uploaded version.

    An existing recurring run of that name in the namespace is kept when it already runs this version with
    these arguments on this cron, else replaced: the new one is created first, then the old one deleted, so
    a failure leaves the old schedule in place.
    """
    check_cron(cron)
    version = ensure_pipeline_version(connection, package or _package())
    experiment_id = _experiment_id(connection, dataset)
    client = connection.client
    existing: list[Any] = []
    token = ""
    while True:
        page = connection.call(
            f"listing recurring runs named {job_name!r}",
            lambda token=token: client.list_recurring_runs(
                page_token=token,
                page_size=100,
                namespace=connection.namespace,
                filter=_equals("display_name", job_name),
            ),
            read=True,
        )
        existing += [r for r in page.recurring_runs or [] if r.display_name == job_name]
        token = page.next_page_token or ""
        if not token:
            break
    if len(existing) == 1 and _same_schedule(
        existing[0],
        experiment_id,
        version,
        cron,
        arguments,
        service_account,
        plugins_input(connection, dataset),
    ):
        return Schedule(existing[0].recurring_run_id, "unchanged", (), version)
    import kfp_server_api

    body = kfp_server_api.V2beta1RecurringRun(
        experiment_id=experiment_id,
        display_name=job_name,
        mode=kfp_server_api.RecurringRunMode.ENABLE,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=version.pipeline_id, pipeline_version_id=version.version_id
        ),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=arguments),
        trigger=kfp_server_api.V2beta1Trigger(cron_schedule=kfp_server_api.V2beta1CronSchedule(cron=cron)),
        service_account=service_account,
        max_concurrency=1,
        no_catchup=True,
        plugins_input=plugins_input(connection, dataset),  # each triggered run inherits it
    )
    created = connection.call(
        f"creating recurring run {job_name!r}",
        lambda: client.recurring_runs.recurring_run_service_create_recurring_run(recurring_run=body),
    )
    for old in existing:
        connection.call(
            f"deleting the replaced recurring run {old.recurring_run_id}",
            lambda old=old: client.delete_recurring_run(old.recurring_run_id),
        )
    replaced = tuple(old.recurring_run_id for old in existing)
    return Schedule(created.recurring_run_id, "replaced" if replaced else "created", replaced, version)
