"""Render a Kubeflow Trainer v2 TrainJob (and, where needed, its TrainingRuntime) from the PyTorchJob template.

The node's pod is the PyTorchJob's Master pod of `k8s/pytorchjob.yaml` (sam2.launch.pytorchjob), so both
kinds run the same container, env, volumes and security settings. A TrainJob carries that pod in pieces
(kubeflow/trainer, pkg/apis/trainer/v1alpha1/trainjob_types.go at v2.1.0 and v2.3.0):

- `spec.trainer`: image, command, args, env, resourcesPerNode, numNodes, numProcPerNode of the container
  named `node` (pkg/constants/constants.go: Node);
- the rest of the pod through `spec.podTemplateOverrides` (v2.1.0; metadata, serviceAccountName,
  nodeSelector, tolerations, volumes, and each container's env and volumeMounts) or `spec.runtimePatches`
  (v2.2.0 and newer; the same plus the pod's and containers' securityContext and
  terminationGracePeriodSeconds), strategically merged into the runtime's pod template
  (pkg/runtime/core/trainingruntime.go, mergePodTemplateOverrides / mergeRuntimePatches).

What a form cannot carry is never dropped: `RenderedTrainJob.runtime_fields` names it, and the launcher
then references a TrainingRuntime that holds it (`render_training_runtime`, the torch-distributed runtime's
shape with this project's pod), or refuses.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sam2.launch.pytorchjob import CONTAINER_NAME, KUEUE_QUEUE_LABEL, TrainingJobSpec, render_pytorchjob

TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_VERSION = "v1alpha1"
TRAINJOB_PLURAL = "trainjobs"
TRAINING_RUNTIME_PLURAL = "trainingruntimes"
NODE = "node"  # the replicated job and container name of the torch runtime (constants.Node)
# The two ways a TrainJob changes the runtime's pod: v2.2.0 and newer, and v2.1.0.
RUNTIME_PATCHES = "runtimePatches"
POD_TEMPLATE_OVERRIDES = "podTemplateOverrides"
TRAINER_APIS = (RUNTIME_PATCHES, POD_TEMPLATE_OVERRIDES)
# A TrainJob with spec.trainer alone, valid for both versions: every other pod setting is its runtime's
# (k8s/trainjob.yaml, for kubectl apply beside its own TrainingRuntime).
TRAINER_ONLY = "trainer"
FORMS = (*TRAINER_APIS, TRAINER_ONLY)
PATCH_MANAGER = "sam2-kubeflow"  # runtimePatches[].manager: who owns the patch entry
# The env the torch plugin sets itself; a TrainJob naming one is refused (plugins/torch/torch.go, Validate).
TORCH_RESERVED_ENV = frozenset(
    {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
)
# The Volcano plugin reads the queue from this annotation of the TrainJob's runtime info
# (plugins/volcano/volcano.go: volcanov1beta1.QueueNameAnnotationKey); gang scheduling itself is the
# runtime's podGroupPolicy.volcano.
VOLCANO_QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"
VOLCANO_SCHEDULER = "volcano"
# The pod spec fields each form carries (the CRDs' schemas at v2.1.0 and v2.3.0).
POD_FIELDS = {
    TRAINER_ONLY: frozenset(),
    POD_TEMPLATE_OVERRIDES: frozenset(
        {"serviceAccountName", "nodeSelector", "tolerations", "volumes", "affinity", "imagePullSecrets"}
    ),
    RUNTIME_PATCHES: frozenset(
        {
            "serviceAccountName",
            "nodeSelector",
            "tolerations",
            "volumes",
            "affinity",
            "imagePullSecrets",
            "securityContext",
            "terminationGracePeriodSeconds",
        }
    ),
}
CONTAINER_FIELDS = {
    TRAINER_ONLY: frozenset(),
    POD_TEMPLATE_OVERRIDES: frozenset({"volumeMounts"}),
    RUNTIME_PATCHES: frozenset({"volumeMounts", "securityContext"}),
}
# Container fields that go into spec.trainer (both versions).
TRAINER_FIELDS = {
    "image": "image",
    "command": "command",
    "args": "args",
    "env": "env",
    "resources": "resourcesPerNode",
}
# Template fields no TrainJob carries that need no runtime when they hold this value: why.
COVERED_ELSEWHERE = {
    "automountServiceAccountToken": (
        False,
        "the service account sam2-training sets automountServiceAccountToken: false (k8s/serviceaccount.yaml)",
    ),
    "imagePullPolicy": ("IfNotPresent", "Kubernetes' default for an image with a tag other than latest"),
}
# The torch runtime's Job: the PyTorchJob's restartPolicy ExitCode as batch/v1 podFailurePolicy (a
# replacement pod for exit codes 128-255, evictions not counted; 1-127 fail the job at once).
PERMANENT_EXIT_CODES = list(range(1, 128))


@dataclass(frozen=True)
class RuntimeRef:
    """The Trainer runtime a TrainJob references."""

    name: str = "torch-distributed"
    kind: str = "ClusterTrainingRuntime"


@dataclass
class RenderedTrainJob:
    """A TrainJob and the node pod settings its form could not carry (field path -> value)."""

    trainjob: dict[str, Any]
    api: str
    runtime_fields: dict[str, Any] = field(default_factory=dict)
    covered: dict[str, str] = field(default_factory=dict)


PodHook = Callable[[dict[str, Any]], None]


def node_pod_template(spec: TrainingJobSpec, customize: PodHook | None = None) -> dict[str, Any]:
    """The pod template every node runs: the PyTorchJob's Master pod for `spec`, its container renamed
    `node` (the name the torch plugin fills in); `customize` then changes its pod spec in place (the
    owner watch: sam2.launch.owner_watch.attach_owner_watch)."""
    job = render_pytorchjob(spec)
    template = copy.deepcopy(job["spec"]["pytorchReplicaSpecs"]["Master"]["template"])
    for container in template["spec"]["containers"]:
        if container["name"] == CONTAINER_NAME:
            container["name"] = NODE
    if customize is not None:
        customize(template["spec"])
    return template


def _node_container(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == NODE)


def procs_per_node(spec: TrainingJobSpec) -> int:
    """Training processes per node: one per GPU, else `cpu_procs_per_node` (never the plugin's "auto",
    which on a CPU node would start one process per CPU: plugins/torch/torch.go, getNumCPUPerNode)."""
    return spec.gpus_per_node if spec.gpus_per_node > 0 else spec.cpu_procs_per_node


def render_trainjob(
    spec: TrainingJobSpec, api: str, runtime: RuntimeRef | None = None, customize: PodHook | None = None
) -> RenderedTrainJob:
    """The TrainJob for `spec` in the form `api` ("runtimePatches" for Trainer >= v2.2.0,
    "podTemplateOverrides" for v2.1.0, "trainer" for spec.trainer alone), referencing `runtime`.

    Raises ValueError for an unknown form or an env name the torch plugin reserves.
    """
    if api not in FORMS:
        raise ValueError(f"api must be one of {', '.join(FORMS)}, got {api!r}")
    runtime = runtime or RuntimeRef()
    template = node_pod_template(spec, customize)
    pod, container = template["spec"], _node_container(template)
    reserved = sorted(TORCH_RESERVED_ENV & {e["name"] for e in container.get("env", [])})
    if reserved:
        raise ValueError(f"the node's env sets {reserved}, which the Trainer's torch plugin reserves")

    trainer: dict[str, Any] = {"numNodes": spec.num_nodes, "numProcPerNode": procs_per_node(spec)}
    for key, target in TRAINER_FIELDS.items():
        if key in container:
            trainer[target] = copy.deepcopy(container[key])
    rendered = RenderedTrainJob({}, api)
    pod_patch: dict[str, Any] = {}
    container_patch: dict[str, Any] = {"name": NODE}
    for key, value in pod.items():
        if key == "containers":
            continue
        if key in POD_FIELDS[api]:
            pod_patch[key] = copy.deepcopy(value)
        elif key in COVERED_ELSEWHERE and COVERED_ELSEWHERE[key][0] == value:
            rendered.covered[key] = COVERED_ELSEWHERE[key][1]
        else:
            rendered.runtime_fields[key] = copy.deepcopy(value)
    for key, value in container.items():
        if key == "name" or key in TRAINER_FIELDS:
            continue
        if key in CONTAINER_FIELDS[api]:
            container_patch[key] = copy.deepcopy(value)
        elif key in COVERED_ELSEWHERE and COVERED_ELSEWHERE[key][0] == value:
            rendered.covered[f"containers[{NODE}].{key}"] = COVERED_ELSEWHERE[key][1]
        else:
            rendered.runtime_fields[f"containers[{NODE}].{key}"] = copy.deepcopy(value)
    if spec.scheduler == "volcano":
        # Gang scheduling is the runtime's podGroupPolicy (plugins/volcano/volcano.go, EnforcePodGroupPolicy).
        rendered.runtime_fields["podGroupPolicy"] = {"volcano": {}}
    pod_patch["containers"] = [container_patch]
    pod_metadata = copy.deepcopy(template.get("metadata", {}))

    metadata: dict[str, Any] = {"name": spec.name, "labels": {"app.kubernetes.io/part-of": "sam2-kubeflow"}}
    if spec.namespace:
        metadata["namespace"] = spec.namespace
    metadata["labels"].update(spec.labels)
    if spec.owner is not None:
        metadata["ownerReferences"] = [dict(spec.owner)]
    job_spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": runtime.kind, "name": runtime.name},
        "trainer": trainer,
    }
    if spec.scheduler == "kueue":
        # Kueue's TrainJob integration: the LocalQueue label, and created suspended so that no pod starts
        # before Kueue admitted the whole job (kueue.sigs.k8s.io/docs/tasks/run/trainjobs/).
        metadata["labels"][KUEUE_QUEUE_LABEL] = spec.queue
        job_spec["suspend"] = True
    job_annotations = (
        {VOLCANO_QUEUE_ANNOTATION: spec.queue} if spec.scheduler == "volcano" and spec.queue else {}
    )
    if api == POD_TEMPLATE_OVERRIDES:
        override: dict[str, Any] = {"targetJobs": [{"name": NODE}], "spec": pod_patch}
        if pod_metadata:
            override["metadata"] = pod_metadata
        job_spec["podTemplateOverrides"] = [override]
        if job_annotations:
            job_spec["annotations"] = job_annotations
        if spec.active_deadline_seconds is not None:
            rendered.covered["activeDeadlineSeconds"] = "the train step deletes the TrainJob at its timeout"
    elif api == RUNTIME_PATCHES:
        node_job: dict[str, Any] = {"name": NODE, "template": {"spec": {"template": {"spec": pod_patch}}}}
        if pod_metadata:
            node_job["template"]["spec"]["template"]["metadata"] = pod_metadata
        runtime_spec: dict[str, Any] = {"template": {"spec": {"replicatedJobs": [node_job]}}}
        if job_annotations:
            runtime_spec["template"]["metadata"] = {"annotations": job_annotations}
        job_spec["runtimePatches"] = [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": runtime_spec}]
        if spec.active_deadline_seconds is not None:
            job_spec["activeDeadlineSeconds"] = int(spec.active_deadline_seconds)
    elif job_annotations:
        rendered.runtime_fields["metadata.annotations"] = job_annotations
    rendered.trainjob = {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainJob",
        "metadata": metadata,
        "spec": job_spec,
    }
    return rendered


def render_training_runtime(
    spec: TrainingJobSpec,
    api: str,
    customize: PodHook | None = None,
    name_prefix: str = "sam2-torch",
    name: str | None = None,
) -> dict[str, Any]:
    """A namespaced TrainingRuntime shaped like the Trainer's torch-distributed one (torch mlPolicy, one
    replicated job `node` labelled as the trainer step) holding the node pod settings that a TrainJob in
    form `api` cannot carry (securityContext and grace period under v2.1.0, priority class, Volcano gang
    scheduling); what the TrainJob carries (image, command, args, env, resources, volumes, placement) is
    left to it, so the runtime does not change from run to run. Its Job replaces a failed pod for exit
    codes 128-255 and fails at once for 1-127 (podFailurePolicy with restartPolicy Never), as the
    PyTorchJob's restartPolicy ExitCode does.

    The name ends in a hash of the content, so one name is always one runtime (created once, never updated);
    `name` names it instead (k8s/trainjob.yaml's).
    """
    if api not in FORMS:
        raise ValueError(f"api must be one of {', '.join(FORMS)}, got {api!r}")
    template = node_pod_template(spec, customize)
    pod = template["spec"]
    for key in POD_FIELDS[api]:
        pod.pop(key, None)
    for container in pod["containers"]:
        for key in (*TRAINER_FIELDS, *CONTAINER_FIELDS[api]):
            if key != "image":
                container.pop(key, None)
    pod["restartPolicy"] = "Never"
    if spec.scheduler == "volcano":
        pod["schedulerName"] = VOLCANO_SCHEDULER
    job_spec = {
        "backoffLimit": 3,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": NODE, "operator": "In", "values": PERMANENT_EXIT_CODES},
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": template,
    }
    runtime_spec: dict[str, Any] = {
        "mlPolicy": {"numNodes": 1, "torch": {}},
        "template": {
            "spec": {
                "replicatedJobs": [
                    {
                        "name": NODE,
                        "template": {
                            # Marks the pods the torch plugin sizes (numNodes) and fills (PET_* env).
                            "metadata": {
                                "labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
                            },
                            "spec": job_spec,
                        },
                    }
                ]
            }
        },
    }
    if spec.scheduler == "volcano":
        runtime_spec["podGroupPolicy"] = {"volcano": {}}
    digest = hashlib.sha256(json.dumps(runtime_spec, sort_keys=True).encode()).hexdigest()[:10]
    metadata: dict[str, Any] = {
        "name": name or f"{name_prefix}-{digest}",
        "labels": {"app.kubernetes.io/part-of": "sam2-kubeflow", "trainer.kubeflow.org/framework": "torch"},
    }
    if spec.namespace:
        metadata["namespace"] = spec.namespace
    return {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainingRuntime",
        "metadata": metadata,
        "spec": runtime_spec,
    }


MANIFEST_RUNTIME = "sam2-torch-distributed"


def render_manifest() -> list[dict[str, Any]]:
    """k8s/trainjob.yaml: a TrainingRuntime holding the whole node pod of k8s/pytorchjob.yaml (restricted,
    its volumes, grace period) and a TrainJob with spec.trainer alone that references it, so one file is
    valid for Trainer v2.1.0 and v2.3.0 alike; the same training as `kubectl apply -f k8s/pytorchjob.yaml`."""
    from sam2.launch.pytorchjob import load_template

    template = load_template()
    master = template["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    spec = TrainingJobSpec(
        name=template["metadata"]["name"],
        image=master["image"],
        args=list(master["args"]),
        num_nodes=1 + template["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"],
        gpus_per_node=int(master["resources"]["limits"]["nvidia.com/gpu"]),
    )
    runtime = render_training_runtime(spec, TRAINER_ONLY, name=MANIFEST_RUNTIME)
    trainjob = render_trainjob(spec, TRAINER_ONLY, RuntimeRef(MANIFEST_RUNTIME, "TrainingRuntime")).trainjob
    return [runtime, trainjob]
