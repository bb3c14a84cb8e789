"""Which kind of training job this cluster runs: `train_launcher=auto` asks the API server's discovery.

`GET /apis/kubeflow.org/v1` lists `pytorchjobs` where the Kubeflow Training Operator v1 is installed, and
`GET /apis/trainer.kubeflow.org/v1alpha1` lists `trainjobs` where Kubeflow Trainer v2 is (what Kubeflow
Community Distribution 26.03 installs by default); a group nothing serves answers 404. The PyTorchJob stays
the choice wherever it is served, as before; else the TrainJob; neither fails at once naming both and how
to install either. Discovery is readable by every authenticated account (the `system:discovery`
ClusterRole), so it needs no rule in k8s/rbac.yaml.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sam2.launch.launcher import TrainingFailed

logger = logging.getLogger(__name__)

LAUNCHERS = ("auto", "pytorchjob", "trainjob", "local")
# kind -> (API group, version, resource)
KINDS = {
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs"),
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
}
INSTALL_HINT = (
    "install one: Kubeflow Trainer v2 (TrainJob; what Kubeflow 26.03 ships): kubectl apply --server-side -k "
    '"https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.1.0" and its runtimes '
    "(.../manifests/overlays/runtimes?ref=v2.1.0); or the Training Operator v1 (PyTorchJob): kubectl apply "
    '--server-side -k "https://github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0"; '
    "or train without a cluster job: train_launcher=local (docs/job-kinds.md)"
)


class NoJobKind(TrainingFailed):
    """The cluster serves neither PyTorchJobs nor TrainJobs."""


def served(custom_api: Any, kind: str) -> bool:
    """Whether the API server serves `kind` ("pytorchjob" or "trainjob"): its resource in its group's
    discovery document. Raises the client's ApiException for answers other than 200 and 404."""
    from kubernetes.client.exceptions import ApiException

    group, version, plural = KINDS[kind]
    try:
        found = custom_api.get_api_resources(group, version)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return any(getattr(r, "name", None) == plural for r in (getattr(found, "resources", None) or []))


def choose_job_kind(custom_api: Any) -> tuple[str, str]:
    """("pytorchjob" | "trainjob", why), from the API server's discovery (module doc); `NoJobKind` with one
    message naming both kinds and how to install either when it serves neither."""
    have = {kind: served(custom_api, kind) for kind in KINDS}
    if have["pytorchjob"]:
        why = "the API server serves kubeflow.org/v1 pytorchjobs (the Training Operator is installed)"
        if have["trainjob"]:
            why += "; it serves trainer.kubeflow.org/v1alpha1 trainjobs too, and the PyTorchJob comes first"
        return "pytorchjob", why
    if have["trainjob"]:
        return "trainjob", (
            "the API server serves trainer.kubeflow.org/v1alpha1 trainjobs (Kubeflow Trainer v2) and no "
            "kubeflow.org/v1 pytorchjobs (no Training Operator)"
        )
    raise NoJobKind(
        "this cluster serves neither PyTorchJob (kubeflow.org/v1 pytorchjobs, Kubeflow Training Operator v1) nor "
        "TrainJob (trainer.kubeflow.org/v1alpha1 trainjobs, Kubeflow Trainer v2), so the train step cannot "
        "start a training job; " + INSTALL_HINT
    )


def cluster_launcher(kind: str, settings: Any, custom_api: Any = None, core_api: Any = None) -> Any:
    """The launcher of `kind` ("auto", "pytorchjob" or "trainjob") for `settings`; "auto" asks discovery
    and logs which kind it chose and why. Raises ValueError for another kind, `NoJobKind` (auto) when the
    cluster serves neither."""
    if kind not in ("auto", *KINDS):
        raise ValueError(f"train_launcher must be one of {', '.join(LAUNCHERS)}, got {kind!r}")
    if custom_api is None or core_api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            # not in a pod: $KUBECONFIG as it is now (the client reads it only at import)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        custom_api = custom_api or client.CustomObjectsApi()
        core_api = core_api or client.CoreV1Api()
    if kind == "auto":
        kind, why = choose_job_kind(custom_api)
        logger.info(
            "train_launcher=auto chose %s: %s", "PyTorchJob" if kind == "pytorchjob" else "TrainJob", why
        )
    if kind == "pytorchjob":
        from sam2.launch.kubeflow import PyTorchJobLauncher

        return PyTorchJobLauncher(settings, custom_api, core_api)
    from sam2.launch.trainjob_launcher import TrainJobLauncher

    return TrainJobLauncher(settings, custom_api, core_api)
