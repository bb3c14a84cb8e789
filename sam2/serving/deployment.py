"""Create or update the InferenceService that serves the champion: the pipeline's `deploy` step.

The object is rendered from the manifest `k8s/` ships (`sam2/serving/inferenceservice*.yaml` are symlinks
to it) with the new champion's version pinned (`SAM2_MODEL_URI=models:/sam2-<data set>/<version>`), so
the change of version is a change of the pod template: KServe rolls out a new revision (Serverless: a
Knative revision that takes the traffic once ready; RawDeployment: a Deployment rolling update), and the
old version serves until the new one is ready. A version that stayed challenger changes nothing.

The API calls are exactly what k8s/rbac.yaml grants for it: get, create, patch on inferenceservices.
Custom resources take JSON merge patches (RFC 7386; the API server offers no strategic merge for them),
so the spec is sent whole and its lists replace the old ones.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
TEMPLATES = {"gpu": "inferenceservice.yaml", "cpu": "inferenceservice-cpu.yaml"}
MODEL_URI_ENV = "SAM2_MODEL_URI"
MODEL_URI_ANNOTATION = "sam2-kubeflow/model-uri"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
CHAMPION = "champion"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_MODEL_VERSION = re.compile(r"^(sam2-[A-Za-z0-9_.-]+)/([0-9]+)$")


class DeployError(RuntimeError):
    """The InferenceService could not be created or updated; the message says what to change."""


@dataclass(frozen=True)
class ServingTarget:
    """Which InferenceService to run and how it reaches the registry and object storage; empty strings
    keep what the template says."""

    name: str = "sam2"
    variant: str = "gpu"
    image: str = ""
    mlflow_tracking_uri: str = ""
    s3_endpoint_url: str = ""
    s3_secret_name: str = ""

    def __post_init__(self) -> None:
        if self.variant not in TEMPLATES:
            raise ValueError(f"serving variant {self.variant!r} is not one of {sorted(TEMPLATES)}")
        if not _DNS1035.match(self.name):
            raise ValueError(
                f"InferenceService name {self.name!r} is not a DNS-1035 label (lower case letters, digits, '-')"
            )


@dataclass(frozen=True)
class DeployResult:
    """What the step did: `created`, `patched`, `unchanged` (already serving that version) or `skipped`."""

    action: str
    name: str
    namespace: str
    model_uri: str
    reason: str


def version_model_uri(model_version: str) -> str:
    """`sam2-demo/3` (the promote step's model_version) -> `models:/sam2-demo/3`. Raises ValueError."""
    match = _MODEL_VERSION.match(model_version)
    if not match:
        raise ValueError(
            f"model_version {model_version!r} is not <registered model>/<version>, e.g. sam2-demo/3"
        )
    return f"models:/{match.group(1)}/{match.group(2)}"


def load_template(variant: str) -> dict[str, Any]:
    """The InferenceService of `k8s/inferenceservice*.yaml` for `variant`, parsed (a fresh copy)."""
    text = resources.files("sam2.serving").joinpath(TEMPLATES[variant]).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def render_inferenceservice(model_uri: str, target: ServingTarget) -> dict[str, Any]:
    """The InferenceService serving `model_uri` as `target` says (the template's values where it is silent)."""
    isvc = load_template(target.variant)
    isvc["metadata"]["name"] = target.name
    isvc["metadata"].setdefault("annotations", {})[MODEL_URI_ANNOTATION] = model_uri
    (container,) = isvc["spec"]["predictor"]["containers"]
    if target.image:
        container["image"] = target.image
    values = {
        MODEL_URI_ENV: model_uri,
        "MLFLOW_TRACKING_URI": target.mlflow_tracking_uri,
        "S3_ENDPOINT_URL": target.s3_endpoint_url,
        "MLFLOW_S3_ENDPOINT_URL": target.s3_endpoint_url,
    }
    for entry in container["env"]:
        if values.get(entry["name"]):
            entry["value"] = values[entry["name"]]
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if ref and target.s3_secret_name and entry["name"].startswith("AWS_"):
            ref["name"] = target.s3_secret_name
    return isvc


def current_namespace() -> str:
    """The namespace this pod runs in (its service account's), else the kube context's."""
    if NAMESPACE_FILE.is_file():
        return NAMESPACE_FILE.read_text().strip()
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts()
    except (config.ConfigException, OSError):
        active = None
    namespace = ((active or {}).get("context") or {}).get("namespace")
    if not namespace:
        raise DeployError(
            "no namespace to deploy to: pass the deploy step's namespace or set one in the kube context"
        )
    return namespace


def kube_api_client() -> Any:
    """A `kubernetes` ApiClient: the pod's service account in a cluster, else the kube config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def deploy_champion(
    api_client: Any, namespace: str, decision: str, model_version: str, target: ServingTarget
) -> DeployResult:
    """Point the InferenceService `target.name` at `model_version` when it became champion.

    Creates it when missing, patches it when it serves another version, and leaves it alone when the
    version stayed challenger or it already serves this version. Raises DeployError (the cluster has no
    KServe, the account may not, the API refused the object) and ValueError (a bad model_version).
    """
    model_uri = version_model_uri(model_version)
    if decision != CHAMPION:
        reason = f"{model_version} stayed {decision}: the InferenceService keeps serving the champion"
        logger.info("%s", reason)
        return DeployResult("skipped", target.name, namespace, model_uri, reason)
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(api_client)
    body = render_inferenceservice(model_uri, target)
    where = f"{KIND} {namespace}/{target.name}"
    try:
        current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, target.name)
    except ApiException as exc:
        if exc.status != 404:
            raise DeployError(_explain(exc, f"reading {where}")) from None
        current = None
    if current is None:
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        except ApiException as exc:
            if exc.status != 409:  # 409: another run created it since; update it below
                raise DeployError(_explain(exc, f"creating {where}")) from None
        else:
            reason = f"created {where} serving {model_uri}"
            logger.info("%s", reason)
            return DeployResult("created", target.name, namespace, model_uri, reason)
        current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, target.name)
    serving = _served_uri(current)
    if serving == model_uri and _same_spec(current, body):
        reason = f"{where} already serves {model_uri}"
        logger.info("%s", reason)
        return DeployResult("unchanged", target.name, namespace, model_uri, reason)
    patch = {
        "metadata": {
            "labels": body["metadata"].get("labels", {}),
            "annotations": body["metadata"]["annotations"],
        },
        "spec": body["spec"],
    }
    try:
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, target.name, patch)
    except ApiException as exc:
        raise DeployError(_explain(exc, f"updating {where}")) from None
    reason = f"updated {where} from {serving or 'an unknown version'} to {model_uri} (rolling update)"
    logger.info("%s", reason)
    return DeployResult("patched", target.name, namespace, model_uri, reason)


def _served_uri(isvc: dict[str, Any]) -> str | None:
    for container in isvc.get("spec", {}).get("predictor", {}).get("containers", []):
        for entry in container.get("env", []):
            if entry.get("name") == MODEL_URI_ENV:
                return entry.get("value")
    return None


def _same_spec(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether every field we set is already what the cluster holds (fields KServe defaulted are ignored)."""

    def covered(have: Any, want: Any) -> bool:
        if isinstance(want, dict):
            return isinstance(have, dict) and all(covered(have.get(k), v) for k, v in want.items())
        if isinstance(want, list):
            return isinstance(have, list) and len(have) == len(want) and all(map(covered, have, want))
        return have == want

    return covered(current.get("spec"), copy.deepcopy(wanted["spec"]))


def _explain(exc: Any, doing: str) -> str:
    import json

    message = ""
    with contextlib.suppress(TypeError, ValueError):
        message = json.loads(exc.body or "{}").get("message", "")
    if exc.status == 404:
        return (
            f"{doing}: the cluster serves no {GROUP}/{VERSION} {KIND} (is KServe installed?) {message}".strip()
            + "; install KServe or run the pipeline with deploy=false"
        )
    if exc.status == 403:
        return (
            f"{doing}: forbidden for this service account ({message}); apply k8s/rbac.yaml, which grants "
            "get/create/patch on inferenceservices"
        )
    return f"{doing}: the API server answered {exc.status} {exc.reason}: {message}"


def namespace_or_current(namespace: str) -> str:
    """`namespace` when given, else this pod's (see current_namespace)."""
    return namespace or os.environ.get("SAM2_NAMESPACE", "") or current_namespace()
