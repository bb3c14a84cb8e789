"""Kubeflow Trainer v2 and JobSet as controllers of the fake cluster (tests/fake_cluster.py), answering as
the real ones do. Each behaviour and its source (kubeflow/trainer at tags v2.1.0 and v2.3.0, JobSet v0.10.1 /
v0.12.0, the versions those Trainer releases build with, go.mod):

- Admission: the API server prunes fields the CRD's schema does not name, or refuses them with 400
  "strict decoding error: unknown field ..." when the request asks fieldValidation=Strict
  (tests/trainer_crds.py). The Trainer's webhook refuses a TrainJob whose runtime does not exist
  (pkg/runtime/core/trainingruntime.go, ValidateObjects: "specified trainingRuntime must be created before
  the TrainJob is created"; clustertrainingruntime.go likewise) and one whose trainer env sets a PET_* name
  the torch plugin reserves (pkg/runtime/framework/plugins/torch/torch.go, Validate), with 422 Invalid.
- The node pods: the runtime's `node` replicated job with the TrainJob's podTemplateOverrides (v2.1.0) or
  runtimePatches (v2.3.0) strategically merged in (pkg/runtime/core/trainingruntime.go,
  mergePodTemplateOverrides / mergeRuntimePatches); the trainer's image, command, args replaced, resources
  replaced (v2.1.0) or merged (v2.3.0), env upserted (plugins/jobset/builder.go, Trainer;
  trainingruntime.go, newRuntimeInfo); the torch plugin's PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK
  (from the pod's job-completion-index annotation), PET_MASTER_ADDR (<job>-node-0-0.<job>) and
  PET_MASTER_PORT (29500) (plugins/torch/torch.go, EnforceMLPolicy; pkg/constants/constants.go). numNodes
  pods of one indexed Job, named <job>-node-0-<index>-<suffix>, labelled jobset.sigs.k8s.io/jobset-name,
  replicatedjob-name, job-index and batch.kubernetes.io/job-completion-index (JobSet
  api/jobset/v1alpha2/jobset_types.go; the batch Job controller). A pod template without restartPolicy gets
  OnFailure (JobSet pkg/webhooks/jobset_webhook.go, Default).
- Status: a suspended TrainJob has condition Suspended=True (reason Suspended, "TrainJob is suspended");
  unsuspending sets it False (reason Resumed) and the pods start (pkg/controller/trainjob_controller.go,
  setSuspendedCondition; plugins/jobset/jobset.go, Build). Complete and Failed are the JobSet's Completed
  and Failed conditions copied over (plugins/jobset/jobset.go, Status): reason AllJobsCompleted "jobset
  completed successfully", or FailedJobs "jobset failed due to one or more job failures" (JobSet
  pkg/constants/constants.go); the runtime sets no JobSet failurePolicy, so one failed Job fails the
  JobSet. There is no Created or Running condition.
- Failures: under restartPolicy OnFailure the kubelet restarts the container in the same pod
  (restartCount + 1) and the Job fails once more than backoffLimit (6 when unset, batch/v1) restarts
  happened; its running pods are then deleted. Under Never a failed pod stays, and the Job creates a new
  pod for that index unless its podFailurePolicy says FailJob or backoffLimit failures were reached.
- Deletion: the JobSet carries an ownerReference to the TrainJob (controller, blockOwnerDeletion:
  plugins/jobset/jobset.go, Build), its Jobs to it and the pods to them, so deleting the TrainJob removes
  them all (garbage collector).
"""

from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace
from typing import Any

import trainer_crds
from fake_cluster import FakeCluster, api_error

JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
MASTER_PORT = 29500
DEFAULT_BACKOFF_LIMIT = 6
# patchMergeKey of the lists the strategic merges touch (k8s.io/api core/v1 types.go; JobSet's replicatedJobs).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "ports": "containerPort",
    "replicatedJobs": "name",
}
_suffixes = itertools.count(10000)


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """`patch` strategically merged into `base` (k8s.io/apimachinery strategicpatch): maps merge, lists
    with a merge key merge item by item, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        by = MERGE_KEYS[key]
        out = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, b in enumerate(out) if b.get(by) == item.get(by)), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = strategic_merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def upsert(items: list[dict[str, Any]], new: list[dict[str, Any]], by: str = "name") -> None:
    """apply.UpsertEnvVars / UpsertPort: replace the item of that name, else append."""
    for item in new:
        for i, old in enumerate(items):
            if old.get(by) == item.get(by):
                items[i] = copy.deepcopy(item)
                break
        else:
            items.append(copy.deepcopy(item))


def node_job(trainjob: dict[str, Any], runtime: dict[str, Any], version: str) -> dict[str, Any]:
    """The batch Job template (spec) of the `node` replicated job the Trainer builds for `trainjob` from
    `runtime`, at Trainer `version`: its pod template is what every node pod runs."""
    jobset = copy.deepcopy(runtime["spec"]["template"]["spec"])
    spec = trainjob["spec"]
    if version == "2.1.0":
        for override in spec.get("podTemplateOverrides", []):
            targets = {t["name"] for t in override.get("targetJobs", [])}
            for rjob in jobset["replicatedJobs"]:
                if rjob["name"] in targets:
                    patch = {"spec": override.get("spec", {})}
                    meta = {
                        k: v
                        for k, v in (override.get("metadata") or {}).items()
                        if k in ("labels", "annotations")
                    }
                    if meta:
                        patch["metadata"] = meta
                    rjob["template"]["spec"]["template"] = strategic_merge(
                        rjob["template"]["spec"]["template"], patch
                    )
    else:
        for patch in spec.get("runtimePatches", []):
            template = (patch.get("trainingRuntimeSpec") or {}).get("template") or {}
            if template.get("spec"):
                jobset = strategic_merge(jobset, template["spec"])
    (rjob,) = [r for r in jobset["replicatedJobs"] if r["name"] == "node"]
    job = rjob["template"]["spec"]
    pod = job["template"]["spec"]
    pod.setdefault("restartPolicy", "OnFailure")
    trainer = spec.get("trainer") or {}
    container = next(c for c in pod["containers"] if c["name"] == "node")
    for key in ("image", "command", "args"):
        if key in trainer:
            container[key] = copy.deepcopy(trainer[key])
    if "resourcesPerNode" in trainer:
        if version == "2.1.0":
            container["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
        else:
            container["resources"] = strategic_merge(
                container.get("resources", {}), trainer["resourcesPerNode"]
            )
    env = container.setdefault("env", [])
    upsert(env, trainer.get("env", []))
    name = trainjob["metadata"]["name"]
    nodes = int(trainer.get("numNodes", runtime["spec"].get("mlPolicy", {}).get("numNodes", 1)))
    upsert(
        env,
        [
            {"name": "PET_NNODES", "value": str(nodes)},
            {"name": "PET_NPROC_PER_NODE", "value": str(trainer.get("numProcPerNode", "auto"))},
            {
                "name": "PET_NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
            },
            {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
            {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
        ],
    )
    upsert(container.setdefault("ports", []), [{"containerPort": MASTER_PORT}], by="containerPort")
    job["parallelism"] = job["completions"] = nodes
    return job


def trainer_pod(job: str, index: int, phase: str = "Running", labels: dict | None = None) -> SimpleNamespace:
    """A V1Pod-shaped node pod of TrainJob `job` (container `node`)."""
    name = f"{job}-node-0-{index}-{next(_suffixes)}"
    status = SimpleNamespace(
        name="node",
        image="registry.example/sam2:1",
        image_id="registry.example/sam2@sha256:0",
        ready=phase == "Running",
        restart_count=0,
        state=SimpleNamespace(
            running=SimpleNamespace() if phase == "Running" else None, terminated=None, waiting=None
        ),
        last_state=SimpleNamespace(terminated=None),
    )
    all_labels = dict(labels or {}) | {
        JOBSET_NAME_LABEL: job,
        REPLICATED_JOB_LABEL: "node",
        JOB_INDEX_LABEL: "0",
        COMPLETION_INDEX: str(index),
    }
    return SimpleNamespace(
        metadata=SimpleNamespace(
            name=name, uid=f"uid-{name}", labels=all_labels, annotations={COMPLETION_INDEX: str(index)}
        ),
        status=SimpleNamespace(phase=phase, container_statuses=[] if phase == "Pending" else [status]),
    )


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


class FakeTrainerCluster(FakeCluster):
    """A namespace of a cluster with Kubeflow Trainer `version` ("2.1.0" or "2.3.0") installed (and the
    Training Operator too when `served` includes pytorchjobs). `pod_phase`: the phase new node pods get
    ("Pending" for a cluster without room)."""

    def __init__(
        self, version: str = "2.1.0", served: frozenset[str] | None = None, pod_phase: str = "Running"
    ):
        super().__init__()
        self.version = version
        self.served = served or frozenset({"trainjobs", "trainingruntimes", "clustertrainingruntimes"})
        self.trainjobs: dict[str, dict] = {}
        self.runtimes: dict[str, dict] = {}  # namespaced TrainingRuntimes
        self.cluster_runtimes = {"torch-distributed": trainer_crds.torch_distributed(version)}
        self.conditions: dict[str, list[dict]] = {}
        self.pod_specs: dict[str, dict] = {}  # pod name -> its pod template (metadata, spec) as built
        self.failures: dict[str, int] = {}
        self.pod_phase = pod_phase
        self.created: list[dict] = []  # every accepted create body, after pruning

    # -- admission -----------------------------------------------------------------------------------------
    def create_trainer_object(self, plural, body, field_validation):
        kind = {"trainjobs": "TrainJob", "trainingruntimes": "TrainingRuntime"}[plural]
        node = trainer_crds.schema(self.version, kind)
        unknown = trainer_crds.unknown_fields(body, node)
        body = copy.deepcopy(body)
        if unknown and field_validation == "Strict":
            raise api_error(
                400,
                "BadRequest",
                message=f'{kind} in version "v1alpha1" cannot be handled as a {kind}: strict decoding error: '
                + ", ".join(f'unknown field "{u}"' for u in unknown),
            )
        trainer_crds.prune(body, node)
        import jsonschema

        try:
            jsonschema.Draft7Validator(node).validate(body)
        except jsonschema.ValidationError as exc:
            raise api_error(422, "Invalid", message=f"{kind} is invalid: {exc.message}") from None
        name = body["metadata"]["name"]
        store = self.trainjobs if plural == "trainjobs" else self.runtimes
        if plural == "trainjobs":
            self._validate_trainjob(body)
        with self.lock:
            if name in store:
                raise api_error(409, "AlreadyExists")
            body["metadata"]["uid"] = f"{plural}-{next(_suffixes)}"
            store[name] = body
            self.created.append(copy.deepcopy(body))
        if plural == "trainjobs":
            self._reconcile(name)
        return copy.deepcopy(body)

    def _runtime_of(self, trainjob: dict) -> dict | None:
        ref = trainjob["spec"]["runtimeRef"]
        pool = (
            self.cluster_runtimes
            if ref.get("kind", "ClusterTrainingRuntime") == "ClusterTrainingRuntime"
            else self.runtimes
        )
        return pool.get(ref["name"])

    def _validate_trainjob(self, body: dict) -> None:
        name = body["metadata"]["name"]
        if self._runtime_of(body) is None:
            ref = body["spec"]["runtimeRef"]
            raise api_error(
                422,
                "Invalid",
                message=f'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
                f'TrainJob.trainer.kubeflow.org "{name}" is invalid: spec.runtimeRef: Invalid value: '
                f'{ref.get("kind")} "{ref["name"]}" not found: specified trainingRuntime must be created before the '
                "TrainJob is created",
            )
        reserved = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
        names = sorted(reserved & {e["name"] for e in body["spec"].get("trainer", {}).get("env", [])})
        if names:
            raise api_error(
                422,
                "Invalid",
                message=f"spec.trainer.env: must not have reserved envs, invalid envs configured: {names}",
            )

    # -- the controllers ---------------------------------------------------------------------------------
    def node_job(self, name: str) -> dict:
        """The node Job template the Trainer builds for TrainJob `name` (see `node_job`)."""
        with self.lock:
            trainjob = copy.deepcopy(self.trainjobs[name])
        return node_job(trainjob, self._runtime_of(trainjob), self.version)

    def _reconcile(self, name: str) -> None:
        """The TrainJob controller: the Suspended condition, or the JobSet's pods."""
        with self.lock:
            trainjob = self.trainjobs[name]
            suspended = bool(trainjob["spec"].get("suspend"))
            conditions = self.conditions.setdefault(name, [])
            had = any(c["type"] == "Suspended" and c["status"] == "True" for c in conditions)
            conditions[:] = [c for c in conditions if c["type"] != "Suspended"]
            if suspended:
                conditions.append(_condition("Suspended", "True", "Suspended", "TrainJob is suspended"))
            elif had:
                conditions.append(_condition("Suspended", "False", "Resumed", "TrainJob is resumed"))
        if not suspended and not any(
            p.metadata.labels.get(JOBSET_NAME_LABEL) == name for p in self.pods.values()
        ):
            job = self.node_job(name)
            for index in range(job["parallelism"]):
                self._new_pod(name, index, job)

    def _new_pod(self, name: str, index: int, job: dict) -> SimpleNamespace:
        labels = job["template"].get("metadata", {}).get("labels", {})
        made = trainer_pod(name, index, self.pod_phase, labels)
        with self.lock:
            self.pods[made.metadata.name] = made
            self.pod_specs[made.metadata.name] = copy.deepcopy(job["template"])
        return made

    def admit(self, name: str) -> None:
        """Kueue admits the workload: it sets spec.suspend false (kueue pkg/controller/jobframework)."""
        with self.lock:
            self.trainjobs[name]["spec"]["suspend"] = False
        self._reconcile(name)

    def complete(self, name: str) -> None:
        """Every node exits 0: the Job, then the JobSet completes."""
        with self.lock:
            for p in self._pods_of(name):
                p.status.phase = "Succeeded"
            self.conditions.setdefault(name, []).append(
                _condition("Complete", "True", "AllJobsCompleted", "jobset completed successfully")
            )

    def _pods_of(self, name: str) -> list[SimpleNamespace]:
        return [p for p in self.pods.values() if p.metadata.labels.get(JOBSET_NAME_LABEL) == name]

    def _fail_job(self, name: str) -> None:
        self.conditions.setdefault(name, []).append(
            _condition("Failed", "True", "FailedJobs", "jobset failed due to one or more job failures")
        )

    def exit_node(self, name: str, index: int, exit_code: int, reason: str = "Error", log: str = "") -> None:
        """Node `index` of TrainJob `name` exits; kubelet, Job, JobSet and Trainer react (module doc)."""
        job = self.node_job(name)
        limit = int(job.get("backoffLimit", DEFAULT_BACKOFF_LIMIT))
        with self.lock:
            (pod,) = [
                p
                for p in self._pods_of(name)
                if p.metadata.labels[COMPLETION_INDEX] == str(index)
                and p.status.phase in ("Running", "Pending")
            ]
            if log:
                self.logs[pod.metadata.name] = log
            status = pod.status.container_statuses[0]
            ended = SimpleNamespace(exit_code=exit_code, reason=reason, message=None)
            self.failures[name] = self.failures.get(name, 0) + 1
            if job["template"]["spec"]["restartPolicy"] == "OnFailure":
                status.restart_count += 1
                status.last_state = SimpleNamespace(terminated=ended)
                if self.failures[name] > limit:
                    for p in self._pods_of(name):  # the Job controller deletes its pods
                        del self.pods[p.metadata.name]
                    self._fail_job(name)
                return
            status.state = SimpleNamespace(running=None, terminated=ended, waiting=None)
            pod.status.phase = "Failed"
            rules = job.get("podFailurePolicy", {}).get("rules", [])
            fail_now = any(
                r["action"] == "FailJob" and exit_code in r.get("onExitCodes", {}).get("values", [])
                for r in rules
            )
            if fail_now or self.failures[name] > limit:
                self._fail_job(name)
                return
        self._new_pod(name, index, job)

    # -- CustomObjectsApi on trainer objects ---------------------------------------------------------------
    def get_trainer_object(self, plural, name):
        with self.lock:
            store = self.trainjobs if plural == "trainjobs" else self.runtimes
            if name not in store:
                raise api_error(404, "NotFound")
            found = copy.deepcopy(store[name])
            if plural == "trainjobs":
                found["status"] = {"conditions": copy.deepcopy(self.conditions.get(name, []))}
            return found

    def patch_trainer_object(self, plural, name, body):
        with self.lock:
            if name not in self.trainjobs:
                raise api_error(404, "NotFound")
            self.patches.append(copy.deepcopy(body))
            self.trainjobs[name]["metadata"].update(copy.deepcopy(body.get("metadata", {})))
            return copy.deepcopy(self.trainjobs[name])

    def delete_trainer_object(self, plural, name, propagation_policy=None):
        with self.lock:
            if name not in self.trainjobs:
                raise api_error(404, "NotFound")
            self.deleted.append((name, propagation_policy))
            del self.trainjobs[name]
            self.conditions.pop(name, None)
            for p in self._pods_of(name):  # JobSet -> Jobs -> pods, by ownerReferences
                del self.pods[p.metadata.name]

    def delete_owner_pod(self, uid: str) -> None:
        """Delete a step pod; the garbage collector deletes every TrainJob none of whose owners remain."""
        super().delete_owner_pod(uid)
        with self.lock:
            for name, job in list(self.trainjobs.items()):
                owners = job["metadata"].get("ownerReferences") or []
                if owners and not any(o["uid"] in self.owner_pods for o in owners):
                    del self.trainjobs[name]
                    for p in self._pods_of(name):
                        del self.pods[p.metadata.name]
                    self.deleted.append((name, "garbage-collector"))
