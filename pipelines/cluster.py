"""Start and schedule the pipeline on a Kubeflow Pipelines endpoint (KFP_HOST), as a multi-user Kubeflow needs.

- Credentials, first found wins: an explicit token (`--token` / `KFP_TOKEN`), the in-cluster service-account
  token file (`KF_PIPELINES_SA_TOKEN_PATH`, else KFP's default path), a Dex / oauth2-proxy session cookie
  (`KFP_COOKIES`), or none (a single-user install, or a port-forward to the API server).
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
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.sam2_finetune import PIPELINE_NAME
from sam2.utils.code_version import code_version

logger = logging.getLogger(__name__)

# Every step runs as this account; k8s/rbac.yaml grants it PyTorchJobs, their pods and logs, what the KFP
# driver/launcher and Argo's executor need, and get on KFP's artifact-store Secret.
DEFAULT_SERVICE_ACCOUNT = "sam2-pipeline"
TOKEN_ENV = "KFP_TOKEN"
COOKIES_ENV = "KFP_COOKIES"
NAMESPACE_ENV = "KFP_NAMESPACE"
# kfp.client.KF_PIPELINES_SA_TOKEN_ENV / KF_PIPELINES_SA_TOKEN_PATH (kfp/client/__init__.py), spelled out so
# that this module imports without kfp's client.
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
DEFAULT_SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
POD_NAMESPACE_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class ClusterError(RuntimeError):
    """The KFP endpoint could not do what was asked; the message says what to change."""


class ClusterAuthError(ClusterError):
    """The KFP endpoint (or the auth proxy in front of it) refused the request."""


@dataclass(frozen=True)
class Credentials:
    """How requests are authenticated; `source` names the setting it came from (never the secret)."""

    source: str
    token: str | None = field(default=None, repr=False)
    token_path: str | None = None
    cookies: str | None = field(default=None, repr=False)


def resolve_credentials(token: str | None = None, environ: Mapping[str, str] | None = None) -> Credentials:
    """The credentials a user expects, in order: explicit token, service-account token file, cookie, none."""
    env = os.environ if environ is None else environ
    if token:
        return Credentials("--token", token=token.strip())
    if env.get(TOKEN_ENV, "").strip():
        return Credentials(TOKEN_ENV, token=env[TOKEN_ENV].strip())
    explicit_path = env.get(SA_TOKEN_PATH_ENV, "").strip()
    path = explicit_path or DEFAULT_SA_TOKEN_PATH
    if Path(path).is_file():
        return Credentials(f"{SA_TOKEN_PATH_ENV}={path}" if explicit_path else path, token_path=path)
    if explicit_path:
        raise ClusterAuthError(f"{SA_TOKEN_PATH_ENV}={explicit_path}: no such file")
    if env.get(COOKIES_ENV, "").strip():
        return Credentials(COOKIES_ENV, cookies=env[COOKIES_ENV].strip())
    return Credentials("none")


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


def _auth_hint(host: str, credentials: Credentials) -> str:
    tried = "no credentials" if credentials.source == "none" else f"the credentials from {credentials.source}"
    return (
        f"{host} refused {tried}. Set {TOKEN_ENV} to a bearer token the cluster accepts (on Kubeflow: "
        "`kubectl -n <your-namespace> create token default-editor`) or "
        f"{COOKIES_ENV} to your Dex session cookie (e.g. 'oauth2_proxy_kubeflow=...', copied from the browser "
        "after logging in to the Kubeflow UI)"
    )


def _api_error(
    err: Exception, host: str, credentials: Credentials, doing: str, namespace: str | None
) -> ClusterError:
    status = getattr(err, "status", None)
    if status == 401:
        return ClusterAuthError(f"{doing}: 401 Unauthorized. {_auth_hint(host, credentials)}")
    if status == 403:
        where = f"namespace {namespace!r}" if namespace else "the shared namespace"
        return ClusterAuthError(
            f"{doing}: 403 Forbidden in {where}. Check {NAMESPACE_ENV} names a profile namespace you may use "
            f"(a contributor of that profile), and that the credentials ({credentials.source}) are yours"
        )
    body = (getattr(err, "body", None) or "").strip()
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    reason = getattr(err, "reason", None) or err
    return ClusterError(f"{doing} on {host} failed: {status or ''} {reason} {body[:500]}".strip())


@dataclass
class Connection:
    """A `kfp.Client` with where it points and how it authenticates."""

    client: Any
    host: str
    namespace: str | None
    credentials: Credentials
    multi_user: bool

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
            raise ClusterError(f"{doing}: cannot reach {self.host} ({err}); check KFP_HOST") from None


def _probe(host: str, credentials: Credentials) -> bool:
    """GET healthz once with the credentials; returns the backend's multi_user flag.

    kfp.Client retries healthz five times with sleeps on any error, so a rejected token would take half a
    minute to surface; an auth proxy may also answer with its login page (HTTP 200, HTML) instead of 401.
    """
    import kfp_server_api
    import urllib3

    config = kfp_server_api.Configuration(host=host)
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
        raise _api_error(err, host, credentials, doing, None) from None
    except urllib3.exceptions.HTTPError as err:
        raise ClusterError(f"{doing}: cannot reach {host} ({err}); check KFP_HOST") from None
    if response.status in (401, 403):
        raise ClusterAuthError(f"{doing}: {response.status}. {_auth_hint(host, credentials)}")
    if response.status >= 300:
        raise ClusterError(
            f"{doing}: HTTP {response.status} from {host}; check KFP_HOST (the KFP API's base URL)"
        )
    try:
        health = json.loads(response.data)
    except ValueError:
        raise ClusterAuthError(
            f"{doing}: {host} answered with a page that is not the KFP API (a login page?). "
            + _auth_hint(host, credentials)
        ) from None
    return bool(health.get("multi_user"))


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
    multi_user = _probe(host, credentials)
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
    kwargs: dict[str, Any] = {"host": host, "namespace": resolved}
    if credentials.token:
        kwargs["existing_token"] = credentials.token
    elif credentials.token_path:
        # re-read before every request: the kubelet rotates projected tokens
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(credentials.token_path)
    elif credentials.cookies:
        kwargs["cookies"] = credentials.cookies
    connection = Connection(None, host, resolved, credentials, multi_user)
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
    with connection.calling(f"looking up pipeline {PIPELINE_NAME!r}"):
        found = client.list_pipelines(
            filter=_equals("display_name", PIPELINE_NAME), namespace=ns, page_size=2
        )
    pipelines = found.pipelines or []
    if len(pipelines) > 1:
        raise ClusterError(f"{len(pipelines)} pipelines are named {PIPELINE_NAME!r} in {ns or 'the cluster'}")
    if pipelines:
        pipeline_id = pipelines[0].pipeline_id
        token = ""
        while True:
            with connection.calling(f"listing the versions of {PIPELINE_NAME!r}"):
                page = client.list_pipeline_versions(pipeline_id, page_token=token, page_size=100)
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
        with connection.calling(f"creating pipeline {PIPELINE_NAME!r}"):
            pipeline_id = client.pipelines.pipeline_service_create_pipeline(pipeline=body).pipeline_id
        logger.info("created pipeline %s (%s)", PIPELINE_NAME, pipeline_id)
    name = f"{code or code_version()}{suffix}"
    with connection.calling(f"uploading pipeline version {name!r}"):
        version = client.upload_pipeline_version(
            str(package),
            pipeline_version_name=name,
            pipeline_id=pipeline_id,
            description=f"compiled spec sha256 {digest}",
        )
    logger.info("uploaded pipeline version %s", name)
    return PipelineVersion(pipeline_id, version.pipeline_version_id, name, False)


def experiment_name(dataset: str) -> str:
    """One experiment per data set."""
    return f"sam2-{dataset}"


def _experiment_id(connection: Connection, dataset: str) -> str:
    with connection.calling(f"getting or creating experiment {experiment_name(dataset)!r}"):
        experiment = connection.client.create_experiment(
            experiment_name(dataset), namespace=connection.namespace
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
    with connection.calling("starting the run"):
        run = connection.client.run_pipeline(
            experiment_id=experiment_id,
            job_name=f"sam2-{dataset}-{stamp}",
            params=arguments,
            pipeline_id=version.pipeline_id,
            version_id=version.version_id,
            service_account=service_account,
        )
    logger.info("started run %s from pipeline version %s", run.run_id, version.name)
    if not wait_timeout_s:
        return SubmittedRun(run.run_id, version)
    state = wait_for_run(connection, run.run_id, wait_timeout_s, poll_s)
    if state != "SUCCEEDED":
        raise ClusterError(f"run {run.run_id} ended as {state}; see it in the KFP UI at {connection.host}")
    return SubmittedRun(run.run_id, version, state)


# v2beta1 RuntimeState values a run does not leave (backend/api/v2beta1/run.proto)
FINAL_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})


def wait_for_run(connection: Connection, run_id: str, timeout_s: float, poll_s: float = 30.0) -> str:
    """Poll the run until it is over; logs each state change once (kfp.Client's wait logs every 5 s).

    Raises:
        ClusterError: still not over after `timeout_s` (the run itself goes on).
    """
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        with connection.calling(f"getting the state of run {run_id}"):
            state = connection.client.get_run(run_id).state
        if state != last:
            logger.info("run %s: %s", run_id, state)
            last = state
        if state in FINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"run {run_id} is still {state} after {timeout_s / 3600:.1f} h; it goes on running: follow it in "
                f"the KFP UI at {connection.host}"
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
    existing: Any, experiment_id: str, version: PipelineVersion, cron: str, params: dict, service_account: str
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
        with connection.calling(f"listing recurring runs named {job_name!r}"):
            page = client.list_recurring_runs(
                page_token=token,
                page_size=100,
                namespace=connection.namespace,
                filter=_equals("display_name", job_name),
            )
        existing += [r for r in page.recurring_runs or [] if r.display_name == job_name]
        token = page.next_page_token or ""
        if not token:
            break
    if len(existing) == 1 and _same_schedule(
        existing[0], experiment_id, version, cron, arguments, service_account
    ):
        return Schedule(existing[0].recurring_run_id, "unchanged", (), version)
    with connection.calling(f"creating recurring run {job_name!r}"):
        created = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            cron_expression=cron,
            params=arguments,
            pipeline_id=version.pipeline_id,
            version_id=version.version_id,
            service_account=service_account,
            max_concurrency=1,
            no_catchup=True,
        )
    for old in existing:
        with connection.calling(f"deleting the replaced recurring run {old.recurring_run_id}"):
            client.delete_recurring_run(old.recurring_run_id)
    replaced = tuple(old.recurring_run_id for old in existing)
    return Schedule(created.recurring_run_id, "replaced" if replaced else "created", replaced, version)
