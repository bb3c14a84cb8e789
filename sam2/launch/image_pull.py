"""Image pull Secrets for the pods the pipeline creates: a private registry's image must reach every node.

A pipeline step's pod gets them from KFP (kfp-kubernetes `set_image_pull_secrets`, which the KFP driver turns
into the pod's `imagePullSecrets`: kubeflow/pipelines 2.16.x-2.17.0 backend/src/v2/driver/k8s.go); the
training job's pods get the same names here, rendered into each pod template. A Secret is a
`kubernetes.io/dockerconfigjson` in the job's namespace (`kubectl create secret docker-registry ...`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def parse_image_pull_secrets(text: str, setting: str = "image_pull_secrets") -> tuple[str, ...]:
    """Secret names from `text` (separated by commas or spaces; empty: none), in order, each once.

    Raises ValueError naming `setting` and the name when one is not a Secret name (a DNS-1123 subdomain).
    """
    names: list[str] = []
    for name in re.split(r"[,\s]+", text.strip()):
        if not name:
            continue
        if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
            raise ValueError(
                f"{setting}: {name!r} is not a Secret name (lower-case letters, digits, '-' and '.'); give the "
                "names of docker-registry Secrets in the namespace, separated by commas"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def add_image_pull_secrets(pod_spec: dict[str, Any], names: Iterable[str]) -> None:
    """Append `names` to a pod template's `imagePullSecrets` (those it has stay first; none twice)."""
    entries = pod_spec.setdefault("imagePullSecrets", [])
    present = {entry.get("name") for entry in entries}
    for name in names:
        if name not in present:
            entries.append({"name": name})
            present.add(name)
    if not entries:
        del pod_spec["imagePullSecrets"]
