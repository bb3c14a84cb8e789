"""Kubeflow Trainer v2's CRDs (kept in ../shared/schemas/trainer-v<version>/) as validators, and the pruning
of unknown fields the API server applies to custom resources.

Files: manifests/base/crds/trainer.kubeflow.org_{trainjobs,trainingruntimes,clustertrainingruntimes}.yaml and
manifests/base/runtimes/torch_distributed.yaml of kubeflow/trainer at tags v2.1.0 and v2.3.0
(../shared/schemas/README.md). A structural schema's API server drops fields the schema does not name
(kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#field-pruning),
silently unless the request asks for fieldValidation=Strict, which fails it with 400 instead
(.../#field-validation): `unknown_fields` lists what would be dropped.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas"
VERSIONS = ("2.1.0", "2.3.0")
FILES = {
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
    "TrainingRuntime": "trainer.kubeflow.org_trainingruntimes.yaml",
    "ClusterTrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.yaml",
}


def folder(version: str) -> Path:
    path = SCHEMAS / f"trainer-v{version}"
    if not path.exists():
        pytest.skip(
            f"the Trainer v{version} CRDs are not at {path} (../shared/schemas is absent in this clone)"
        )
    return path


@functools.cache
def schema(version: str, kind: str) -> dict[str, Any]:
    """`spec.versions[name=v1alpha1].schema.openAPIV3Schema` of the `kind` CRD of Trainer `version`."""
    crd = yaml.load(
        (folder(version) / FILES[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )
    (v1alpha1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return v1alpha1["schema"]["openAPIV3Schema"]


def torch_distributed(version: str) -> dict[str, Any]:
    """The torch-distributed ClusterTrainingRuntime that Trainer `version` installs."""
    return yaml.safe_load((folder(version) / "torch_distributed.yaml").read_text())


def unknown_fields(obj: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """The paths of `obj` that schema `node` does not name (what pruning would drop); metadata is the API
    server's own (ObjectMeta), not pruned by the CRD."""
    found: list[str] = []
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return found
    if isinstance(obj, dict) and node.get("type") == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        for key, value in obj.items():
            here = f"{path}.{key}" if path else key
            if path == "" and key in ("apiVersion", "kind", "metadata", "status"):
                continue
            if props is not None and key in props:
                found += unknown_fields(value, props[key], here)
            elif isinstance(extra, dict):
                found += unknown_fields(value, extra, here)
            elif props is not None or extra is False:
                found.append(here)
    elif isinstance(obj, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(obj):
            found += unknown_fields(item, node["items"], f"{path}[{i}]")
    return found


def validate(obj: dict[str, Any], version: str) -> None:
    """Raise where `obj` (a TrainJob, TrainingRuntime or ClusterTrainingRuntime) breaks the CRD of Trainer
    `version`: `jsonschema.ValidationError`, or AssertionError naming fields the API server would drop."""
    import jsonschema

    node = schema(version, obj["kind"])
    jsonschema.Draft7Validator(node).validate(obj)
    dropped = unknown_fields(obj, node)
    assert not dropped, f"Trainer v{version} would drop {dropped}"


def prune(obj: Any, node: dict[str, Any], path: str = "") -> None:
    """Drop from `obj`, in place, what `unknown_fields` lists: what the API server does to a custom resource
    whose request did not ask for fieldValidation=Strict."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(obj, dict) and node.get("type") == "object":
        props, extra = node.get("properties"), node.get("additionalProperties")
        for key in list(obj):
            if path == "" and key in ("apiVersion", "kind", "metadata", "status"):
                continue
            if props is not None and key in props:
                prune(obj[key], props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                prune(obj[key], extra, f"{path}.{key}")
            elif props is not None or extra is False:
                del obj[key]
    elif isinstance(obj, list) and isinstance(node.get("items"), dict):
        for item in obj:
            prune(item, node["items"], path)
