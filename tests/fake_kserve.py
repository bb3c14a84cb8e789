"""A cluster with KServe for the deploy step: tests/fake_cluster.py's API server, serving InferenceServices.

Served over HTTP by `fake_cluster.serve`, so the real `kubernetes` client talks to it. What it answers,
and where that behaviour comes from:

- Create stores the object with a uid, `metadata.generation` 1 and a resourceVersion; an existing name is
  409 AlreadyExists, a missing one on get/patch 404 NotFound (kubernetes apiserver, the generic registry:
  staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go).
- The object must satisfy the CRD's `v1beta1` schema (KServe v0.18.1, config/crd/full/
  serving.kserve.io_inferenceservices.yaml, in ../shared/schemas): otherwise 422 Invalid, as the
  apiextensions-apiserver's schema validation answers.
- PATCH takes `application/merge-patch+json` (RFC 7386: objects merge, lists are replaced whole, null
  deletes); custom resources offer no strategic merge patch (apiextensions-apiserver
  pkg/apiserver/customresource_handler.go: supportedTypes json-patch and merge-patch). A change of `spec`
  bumps `metadata.generation` (pkg/registry/customresource/strategy.go PrepareForUpdate).
- KServe's controller then reports `status.url` and a `Ready` condition per generation
  (kserve v0.18.1 pkg/apis/serving/v1beta1/inference_service_status.go); `ready()` plays that part.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from fake_cluster import FakeCluster, api_error

CRD = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "schemas"
    / "kserve-v0.18.1"
    / ("serving.kserve.io_inferenceservices.yaml")
)
_versions = itertools.count(1)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of `target` by `patch`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def isvc_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    (v1beta1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return v1beta1["schema"]["openAPIV3Schema"]


class FakeKServeCluster(FakeCluster):
    """InferenceServices in one namespace, with the API server's create/get/merge-patch behaviour."""

    served = frozenset({"pytorchjobs", "inferenceservices"})

    def __init__(self) -> None:
        super().__init__()
        self.isvcs: dict[str, dict] = {}
        self.schema = isvc_schema()
        self.verbs: list[tuple[str, str]] = []  # (verb, name) of every InferenceService call

    def _check(self, obj: dict) -> None:
        try:
            jsonschema.validate(obj, self.schema)
        except jsonschema.ValidationError as exc:
            raise api_error(422, "Invalid", message=f"InferenceService is invalid: {exc.message}") from None

    def create_trainer_object(self, plural, body, field_validation):
        name = body["metadata"]["name"]
        self.verbs.append(("create", name))
        self._check(body)
        with self.lock:
            if name in self.isvcs:
                raise api_error(409, "AlreadyExists", message=f'inferenceservices "{name}" already exists')
            stored = copy.deepcopy(body)
            stored["metadata"].update(
                uid=f"isvc-{next(_versions)}", generation=1, resourceVersion=str(next(_versions))
            )
            self.isvcs[name] = stored
            return copy.deepcopy(stored)

    def get_trainer_object(self, plural, name):
        self.verbs.append(("get", name))
        with self.lock:
            if name not in self.isvcs:
                raise api_error(404, "NotFound", message=f'inferenceservices "{name}" not found')
            return copy.deepcopy(self.isvcs[name])

    def patch_trainer_object(self, plural, name, body):
        self.verbs.append(("patch", name))
        with self.lock:
            if name not in self.isvcs:
                raise api_error(404, "NotFound", message=f'inferenceservices "{name}" not found')
            old = self.isvcs[name]
            new = merge_patch(old, body)
            self._check(new)
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = old["metadata"]["generation"] + 1
            new["metadata"]["resourceVersion"] = str(next(_versions))
            self.isvcs[name] = new
            return copy.deepcopy(new)

    def ready(self, name: str) -> None:
        """KServe's controller reporting the current generation ready at the service's URL."""
        with self.lock:
            isvc = self.isvcs[name]
            isvc["status"] = {
                "url": f"http://{name}.kubeflow-user.example.com",
                "observedGeneration": isvc["metadata"]["generation"],
                "conditions": [{"type": "Ready", "status": "True"}],
            }

    def served_uri(self, name: str) -> str:
        (container,) = self.isvcs[name]["spec"]["predictor"]["containers"]
        return {e["name"]: e.get("value") for e in container["env"]}["SAM2_MODEL_URI"]
