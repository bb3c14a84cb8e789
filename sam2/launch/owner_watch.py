"""A training job never outlives the pipeline step that started it: each node watches the step's pod.

Why the step alone cannot guarantee it: KFP's TerminateRun only sets the workflow's
`activeDeadlineSeconds` to 0 (kubeflow/pipelines 2.16.x-2.17.0, backend/src/apiserver/resource/
resource_manager.go, TerminateRun -> TerminateWorkflow); the step pod is not deleted, so the job's
ownerReference to it never fires. Argo then signals the step's main container; its emissary forwards the
signal to the whole process group (argo-workflows v3.5+, cmd/argoexec/commands/emissary.go), KFP's Go
launcher has no signal handler (no `signal.Notify` under backend/src/v2 at those tags) and dies at once,
and the container ends with it, killing the step's Python within milliseconds, often before its delete
of the job is on the wire. The same happens on a deleted run whose pods Argo removes, an evicted or
killed step pod, or a lost node.

So the launcher renders the job with the step pod's identity (`owner_env`) and an API token
(`attach_owner_watch`), and every node runs `OwnerWatch`: each `poll_s` it reads that one pod and, once it
is over (`owner_over`: gone, replaced by a pod of another uid, being deleted, Succeeded or Failed, or its
`main` container terminated), ends the node for good: `GracefulStop.stop_for_good(EXIT_OWNER_GONE)`
stops torchrun, lets node rank 0 upload the newest checkpoint (a retried run resumes from it), and exits
`EXIT_OWNER_GONE`. That code is permanent under restartPolicy ExitCode (1-127; training-operator v1.9.0
pkg/util/train/train_util.go IsRetryableExitCode is `>= 128`), so the operator marks the job Failed and,
with cleanPodPolicy Running, deletes its other Running and Pending pods (v1.9.0
pkg/controller.v1/common/job.go, DeletePodsAndServices): no pod is recreated and every GPU is released.
Ending by exit code needs only `get` on pods (k8s/serviceaccount.yaml), not `delete` on jobs.

Bound: the node starts stopping at most `poll_s` (30 s) after the API server shows the step pod over
(the kubelet reports a dead container within seconds); torchrun gets `--stop-grace-s` (90 s) at most,
then the upload; `hard_stop_s` (240 s) after the start the node exits regardless. So the GPUs are free
within 30 s + the node's stop (seconds to 4.5 min worst case), not the job's activeDeadlineSeconds (72 h).

An API that does not answer, or refuses (no RBAC), never counts as the owner being over: the watch logs
it and keeps asking, and the job's activeDeadlineSeconds still bounds it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

OWNER_NAME_ENV = "SAM2_OWNER_POD_NAME"
OWNER_UID_ENV = "SAM2_OWNER_POD_UID"
OWNER_NAMESPACE_ENV = "SAM2_OWNER_POD_NAMESPACE"
OWNER_CONTAINER_ENV = "SAM2_OWNER_CONTAINER"
OWNER_POLL_ENV = "SAM2_OWNER_POLL_S"
# Argo names the container that runs a step's command `main` (argo-workflows workflow/common/common.go,
# MainContainerName); KFP v2 runs its launcher, and our Python under it, there.
DEFAULT_OWNER_CONTAINER = "main"
DEFAULT_POLL_S = 30.0
DEFAULT_HARD_STOP_S = 240.0
# 1-127: permanent under restartPolicy ExitCode, so the job fails instead of the pod coming back.
EXIT_OWNER_GONE = 3


@dataclass(frozen=True)
class OwnerPod:
    """The pipeline step's pod the job belongs to (from the downward API of that pod)."""

    namespace: str
    name: str
    uid: str
    container: str = DEFAULT_OWNER_CONTAINER

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OwnerPod | None:
        """The owner named by the SAM2_OWNER_POD_* variables; None when the job has none (applied by
        hand, or a local run). Raises ValueError naming the variable when only part of it is set."""
        env = os.environ if env is None else env
        values = {
            key: env.get(key, "").strip() for key in (OWNER_NAME_ENV, OWNER_UID_ENV, OWNER_NAMESPACE_ENV)
        }
        if not any(values.values()):
            return None
        missing = [key for key, value in values.items() if not value]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} not set while {OWNER_NAME_ENV} and its siblings are: the job's template "
                "names the pipeline step's pod only in part; set all three or none"
            )
        return cls(
            values[OWNER_NAMESPACE_ENV],
            values[OWNER_NAME_ENV],
            values[OWNER_UID_ENV],
            env.get(OWNER_CONTAINER_ENV, "").strip() or DEFAULT_OWNER_CONTAINER,
        )


def owner_env(owner: OwnerPod, poll_s: float = DEFAULT_POLL_S) -> dict[str, str]:
    """The variables that make a job's nodes watch `owner` (`OwnerPod.from_env` reads them back)."""
    return {
        OWNER_NAMESPACE_ENV: owner.namespace,
        OWNER_NAME_ENV: owner.name,
        OWNER_UID_ENV: owner.uid,
        OWNER_CONTAINER_ENV: owner.container,
        OWNER_POLL_ENV: f"{poll_s:g}",
    }


def attach_owner_watch(pod_spec: dict[str, Any], container: str, owner: OwnerPod, poll_s: float) -> None:
    """Make a rendered pod template's `container` watch `owner`: its variables, and a service-account token
    mounted (the pod's automountServiceAccountToken overrides the account's `false`). The account needs
    `get` on pods (k8s/serviceaccount.yaml, Role sam2-training-owner-watch)."""
    pod_spec["automountServiceAccountToken"] = True
    for item in pod_spec.get("containers", []):
        if item.get("name") != container:
            continue
        env = item.setdefault("env", [])
        values = owner_env(owner, poll_s)
        env[:] = [e for e in env if e.get("name") not in values]
        env.extend({"name": key, "value": value} for key, value in values.items())
        return
    raise ValueError(f"the pod template has no container named {container!r} to watch the step's pod")


def attach_owner_watch_to_pytorchjob(
    job: dict[str, Any], owner: OwnerPod, poll_s: float = DEFAULT_POLL_S
) -> None:
    """`attach_owner_watch` on every replica of a rendered PyTorchJob (container `pytorch`)."""
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        attach_owner_watch(replica["template"]["spec"], "pytorch", owner, poll_s)


def _field(obj: Any, *path: str) -> Any:
    for name in path:
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def owner_over(pod: Any, owner: OwnerPod) -> str | None:
    """Why the step is over, or None while it runs. `pod` is the API's answer for the owner's name (a
    V1Pod), None when there is no such pod (404)."""
    if pod is None:
        return f"pod {owner.namespace}/{owner.name} is gone"
    uid = _field(pod, "metadata", "uid")
    if uid and uid != owner.uid:
        return (
            f"pod {owner.namespace}/{owner.name} is another pod now (uid {uid}, the step's was {owner.uid})"
        )
    if _field(pod, "metadata", "deletion_timestamp"):
        return f"pod {owner.namespace}/{owner.name} is being deleted"
    phase = _field(pod, "status", "phase")
    if phase in ("Succeeded", "Failed"):
        return f"pod {owner.namespace}/{owner.name} is {phase}"
    for status in _field(pod, "status", "container_statuses") or []:
        terminated = _field(status, "state", "terminated")
        if _field(status, "name") == owner.container and terminated is not None:
            code = _field(terminated, "exit_code")
            reason = _field(terminated, "reason") or "terminated"
            return f"container {owner.container} of pod {owner.namespace}/{owner.name} ended ({reason}, exit {code})"
    return None


def kubernetes_core_api() -> Any:
    """A CoreV1Api with the pod's service-account token (in a pod), else the kube config's context."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api()


class OwnerWatch(threading.Thread):
    """Polls the owner pod every `poll_s` and calls `on_over(reason)` once when it is over (a daemon thread).

    Transient API errors and refusals are logged (a refusal once, naming the RBAC to grant) and asked
    again; they never end the node.
    """

    def __init__(
        self,
        owner: OwnerPod,
        core_api: Any,
        on_over: Callable[[str], None],
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        super().__init__(name="owner-watch", daemon=True)
        self.owner = owner
        self.core = core_api
        self.on_over = on_over
        self.poll_s = poll_s
        self.stopped = threading.Event()
        self.reason: str | None = None

    def check(self) -> str | None:
        """One look at the owner: why it is over, or None (running, or the API did not say)."""
        from kubernetes.client.exceptions import ApiException

        try:
            pod = self.core.read_namespaced_pod(self.owner.name, self.owner.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return owner_over(None, self.owner)
            if exc.status in (401, 403):
                logger.error(
                    "cannot read the pipeline step's pod %s/%s (%s %s): this job will not stop by itself when "
                    "the run is terminated; grant get on pods to the job's service account "
                    "(k8s/serviceaccount.yaml, Role sam2-training-owner-watch)",
                    self.owner.namespace,
                    self.owner.name,
                    exc.status,
                    exc.reason,
                )
            else:
                logger.warning("reading the step's pod %s: %s %s", self.owner.name, exc.status, exc.reason)
            return None
        except Exception as exc:  # noqa: BLE001 - an API that does not answer is not a finished step
            logger.warning("reading the step's pod %s: %s: %s", self.owner.name, type(exc).__name__, exc)
            return None
        return owner_over(pod, self.owner)

    def run(self) -> None:
        logger.info(
            "watching the pipeline step's pod %s/%s (uid %s) every %gs: the job ends when it does",
            self.owner.namespace,
            self.owner.name,
            self.owner.uid,
            self.poll_s,
        )
        # The first look is at once: a pod that starts (or is restarted) after its step ended stops before
        # staging or training anything.
        while True:
            reason = self.check()
            if reason is not None:
                self.reason = reason
                logger.warning("the pipeline step is over (%s): ending this training node for good", reason)
                self.on_over(reason)
                return
            if self.stopped.wait(self.poll_s):
                return

    def stop(self) -> None:
        self.stopped.set()


def end_node_for_good(stop: Any, hard_stop_s: float = DEFAULT_HARD_STOP_S) -> Callable[[str], None]:
    """The `on_over` of a training node: `stop.stop_for_good(EXIT_OWNER_GONE)` (stop torchrun, upload the
    newest checkpoint, exit permanently), then, should the node still be alive `hard_stop_s` later (a
    stuck upload), exit at once with the same code."""

    def on_over(_reason: str) -> None:
        stop.stop_for_good(EXIT_OWNER_GONE)
        threading.Event().wait(hard_stop_s)
        logger.error(
            "the node did not end within %.0fs of its step: exiting %d now", hard_stop_s, EXIT_OWNER_GONE
        )
        logging.shutdown()
        os._exit(EXIT_OWNER_GONE)

    return on_over


def start_owner_watch(
    stop: Any, env: Mapping[str, str] | None = None, core_api: Any = None
) -> OwnerWatch | None:
    """Start watching the step pod the environment names (see `OwnerPod.from_env`); None when it names
    none. A client that cannot be configured is logged and the node trains unwatched."""
    env = os.environ if env is None else env
    owner = OwnerPod.from_env(env)
    if owner is None:
        return None
    try:
        poll_s = float(env.get(OWNER_POLL_ENV, "") or DEFAULT_POLL_S)
    except ValueError:
        raise ValueError(f"{OWNER_POLL_ENV}={env.get(OWNER_POLL_ENV)!r} is not a number of seconds") from None
    if core_api is None:
        try:
            core_api = kubernetes_core_api()
        except Exception as exc:  # noqa: BLE001 - training goes on; activeDeadlineSeconds still bounds it
            logger.error(
                "no Kubernetes API client (%s): this node cannot watch the pipeline step's pod %s/%s and "
                "will not stop by itself when the run is terminated",
                exc,
                owner.namespace,
                owner.name,
            )
            return None
    watch = OwnerWatch(owner, core_api, end_node_for_good(stop), poll_s)
    watch.start()
    return watch
