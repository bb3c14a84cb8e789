"""The Kubeflow Trainer v2 path: the TrainJob renderer against the v2.1.0 and v2.3.0 CRDs, and the TrainJob
launcher against the HTTP test cluster with the real `kubernetes` client.

The cluster is tests/fake_cluster.py with tests/fake_trainer.py's Trainer and JobSet controllers; its module
doc names, for each behaviour, the kubeflow/trainer (v2.1.0, v2.3.0) and JobSet source it follows.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
from pathlib import Path

import pytest
import trainer_crds
from fake_cluster import event, serve
from fake_trainer import FakeTrainerCluster, node_job
from kubernetes import client
from pod_security import restricted_violations

from sam2.launch.cluster_settings import ClusterSettings
from sam2.launch.job_watch import PendingTimeout
from sam2.launch.kubeflow import job_spec_for
from sam2.launch.launcher import TrainingFailed, TrainingRequest
from sam2.launch.pytorchjob import KUEUE_QUEUE_LABEL, TrainingJobSpec, job_name_for, render_pytorchjob
from sam2.launch.trainjob import (
    POD_TEMPLATE_OVERRIDES,
    RUNTIME_PATCHES,
    TRAINER_APIS,
    node_pod_template,
    render_training_runtime,
    render_trainjob,
)
from sam2.launch.trainjob_launcher import TrainJobLauncher

NAME = job_name_for("run-7")
ROOT = Path(__file__).resolve().parents[1]
FORM_OF = {"2.1.0": POD_TEMPLATE_OVERRIDES, "2.3.0": RUNTIME_PATCHES}
GPU_MESSAGE = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."


def _request(**kw) -> TrainingRequest:
    base = dict(
        run_id="run-7",
        config="configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
        dataset_uri="s3://sam2-data/datasets/demo/v1",
        run_uri="s3://sam2-runs/run-7",
        num_nodes=2,
        scratch_bytes=10**9,
    )
    return TrainingRequest(**(base | kw))


def _spec(**kw) -> TrainingJobSpec:
    base = dict(
        name="sam2-train-x",
        image="registry.example/sam2:1",
        args=["--scratch-dir", "/scratch"],
        num_nodes=3,
        gpus_per_node=2,
        namespace="team-a",
        scratch_bytes=10**10,
        shared_data_pvc="sam2-shared-data",
        node_selector={"gpu": "h100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        owner={"apiVersion": "v1", "kind": "Pod", "name": "step", "uid": "uid-1"},
        env={"S3_ENDPOINT_URL": "http://minio:9000"},
    )
    return TrainingJobSpec(**(base | kw))


# -- the renderer against both CRDs --------------------------------------------------------------------------


@pytest.mark.parametrize("api", TRAINER_APIS)
@pytest.mark.parametrize("scheduler", ["none", "kueue", "volcano"])
def test_each_rendered_trainjob_is_schema_valid_for_both_trainer_versions(api, scheduler):
    """jsonschema against v2.1.0's and v2.3.0's TrainJob CRD; nothing of the form is dropped by the version
    it is for, and the other version drops exactly the form's own field (so the launcher must never send
    one blind: test_a_wrong_guess_is_refused_not_dropped)."""
    import jsonschema

    job = render_trainjob(_spec(scheduler=scheduler, queue="q"), api).trainjob
    for version in trainer_crds.VERSIONS:
        jsonschema.Draft7Validator(trainer_crds.schema(version, "TrainJob")).validate(job)
        dropped = trainer_crds.unknown_fields(job, trainer_crds.schema(version, "TrainJob"))
        if FORM_OF[version] == api:
            assert dropped == [], version
        else:
            assert f"spec.{api}" in dropped, version
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 2
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    if scheduler == "kueue":
        assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "q" and job["spec"]["suspend"] is True
    else:
        assert "suspend" not in job["spec"] and KUEUE_QUEUE_LABEL not in job["metadata"]["labels"]


def test_a_named_runtime_is_referenced_and_cpu_training_sets_its_process_count():
    """numProcPerNode is always a number: the plugin's "auto" would start one process per CPU on a node
    without GPUs (trainer plugins/torch/torch.go, EnforceMLPolicy / getNumCPUPerNode)."""
    from sam2.launch.trainjob import RuntimeRef

    job = render_trainjob(
        _spec(gpus_per_node=0, cpu_procs_per_node=2),
        RUNTIME_PATCHES,
        RuntimeRef("team-torch", "TrainingRuntime"),
    ).trainjob
    assert (
        job["spec"]["runtimeRef"]["name"] == "team-torch"
        and job["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"
    )
    assert job["spec"]["trainer"]["numProcPerNode"] == 2
    assert "nvidia.com/gpu" not in job["spec"]["trainer"]["resourcesPerNode"]["limits"]


@pytest.mark.parametrize("version", trainer_crds.VERSIONS)
def test_what_a_form_cannot_carry_is_named_and_the_runtime_holds_it(version):
    """v2.1.0's podTemplateOverrides has no securityContext or grace period; neither form has a priority
    class or Volcano's podGroupPolicy: `runtime_fields` names each, and the rendered TrainingRuntime (valid
    against both versions' CRD) holds them."""
    api = FORM_OF[version]
    spec = _spec(priority_class="training-high", scheduler="volcano", queue="gpu-queue")
    rendered = render_trainjob(spec, api)
    expected = {"priorityClassName", "podGroupPolicy", "schedulerName"}
    if api == POD_TEMPLATE_OVERRIDES:
        expected |= {"securityContext", "terminationGracePeriodSeconds", "containers[node].securityContext"}
    assert set(rendered.runtime_fields) == expected
    runtime = render_training_runtime(spec, api)
    for v in trainer_crds.VERSIONS:
        trainer_crds.validate(runtime, v)
        trainer_crds.validate(trainer_crds.torch_distributed(v), v)
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "training-high" and pod["schedulerName"] == "volcano"
    assert runtime["spec"]["podGroupPolicy"] == {"volcano": {}}
    # the same settings give the same runtime (created once per namespace, never updated)
    assert (
        render_training_runtime(
            _spec(priority_class="training-high", scheduler="volcano", queue="gpu-queue", name="other"), api
        )["metadata"]["name"]
        == runtime["metadata"]["name"]
    )


@pytest.mark.parametrize("version", trainer_crds.VERSIONS)
def test_the_node_pod_the_trainer_builds_is_the_pytorchjobs_master_pod_and_restricted(version):
    """The pod the Trainer makes from TrainJob + runtime (fake_trainer.node_job, after
    pkg/runtime/core/trainingruntime.go and plugins/jobset/builder.go) has the PyTorchJob Master's
    container, env, volumes, mounts, resources and security settings, plus the torch plugin's PET_* env, and
    passes the restricted Pod Security Standard."""
    api = FORM_OF[version]
    spec = _spec()
    rendered = render_trainjob(spec, api)
    runtime = trainer_crds.torch_distributed(version)
    if rendered.runtime_fields:  # v2.1.0: the launcher references its own runtime
        runtime = render_training_runtime(spec, api)
        from sam2.launch.trainjob import RuntimeRef

        rendered = render_trainjob(spec, api, RuntimeRef(runtime["metadata"]["name"], "TrainingRuntime"))
    built = node_job(rendered.trainjob, runtime, version)["template"]
    master = render_pytorchjob(spec)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    (node,) = built["spec"]["containers"]
    (pytorch,) = master["spec"]["containers"]
    assert restricted_violations(built["spec"]) == []
    assert built["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sam2-kubeflow"
    assert built["metadata"]["annotations"] == master["metadata"]["annotations"]
    for key in ("image", "command", "args", "resources", "volumeMounts", "securityContext"):
        assert node[key] == pytorch[key], key
    pet = {
        e["name"]: e
        for e in node["env"]
        if e["name"].startswith("PET_") and e["name"] not in {x["name"] for x in pytorch["env"]}
    }
    assert [e for e in node["env"] if e["name"] not in pet] == pytorch["env"]
    assert pet == {
        "PET_NNODES": {"name": "PET_NNODES", "value": "3"},
        "PET_NPROC_PER_NODE": {"name": "PET_NPROC_PER_NODE", "value": "2"},
        "PET_NODE_RANK": {
            "name": "PET_NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
        "PET_MASTER_ADDR": {"name": "PET_MASTER_ADDR", "value": "sam2-train-x-node-0-0.sam2-train-x"},
        "PET_MASTER_PORT": {"name": "PET_MASTER_PORT", "value": "29500"},
    }
    for key in (
        "volumes",
        "securityContext",
        "terminationGracePeriodSeconds",
        "serviceAccountName",
        "nodeSelector",
        "tolerations",
    ):
        assert built["spec"][key] == master["spec"][key], key
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in built["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["sam2-shared-data"]


def test_without_its_runtime_v2_1_pods_would_not_be_restricted():
    """Why the launcher brings a runtime under v2.1.0: the stock torch-distributed runtime with the
    TrainJob's podTemplateOverrides alone gives pods without any security context."""
    rendered = render_trainjob(_spec(), POD_TEMPLATE_OVERRIDES)
    built = node_job(rendered.trainjob, trainer_crds.torch_distributed("2.1.0"), "2.1.0")["template"]
    assert restricted_violations(built["spec"]) != []


# -- the launcher against the HTTP test cluster ------------------------------------------------------------


class _Http:
    """A FakeTrainerCluster behind HTTP and a TrainJobLauncher whose real kubernetes client talks to it."""

    def __init__(self, cluster: FakeTrainerCluster, **kw) -> None:
        self.cluster = cluster
        self.server, self.api_client = serve(cluster)
        # timeout_s bounds a test that goes wrong; the scenarios end in well under a second
        base = dict(
            namespace="team-a", image="i:1", poll_s=0.01, stream_logs=False, cleanup="never", timeout_s=30
        )
        self.settings = base | kw

    def launcher(self, api: str | None = None, **kw) -> TrainJobLauncher:
        return TrainJobLauncher(
            ClusterSettings(**(self.settings | kw)),
            custom_api=client.CustomObjectsApi(self.api_client),
            core_api=client.CoreV1Api(self.api_client),
            api=api,
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


def _later(seconds: float, fn, *args) -> threading.Timer:
    timer = threading.Timer(seconds, fn, args)
    timer.start()
    return timer


def _polls(cluster: FakeTrainerCluster, *actions) -> None:
    """What happens on the cluster before each of the launcher's next TrainJob reads (None: nothing)."""
    cluster.script = list(actions)


@pytest.mark.parametrize("version", trainer_crds.VERSIONS)
def test_a_trainjob_is_created_watched_and_cleaned_up(version, caplog):
    """Serving only TrainJobs: the step's launcher finds the form this Trainer takes (a refused guess on
    v2.1.0, no runtime left behind), creates the TrainJob owned by the step's pod, follows its pods to
    Complete and deletes it (cleanup=on-success), the JobSet's pods with it."""
    caplog.set_level(logging.INFO, logger="sam2.launch")
    cluster = FakeTrainerCluster(version)
    cluster.owner_pods = {"uid-a": "step-a"}
    with _Http(cluster, cleanup="on-success", owner_pod=("team-a", "step-a", "uid-a")) as http:
        _polls(cluster, None, None, lambda: cluster.complete(NAME))
        result = http.launcher().launch(_request())
    assert result.details["launcher"] == "trainjob" and result.details["job"] == f"team-a/{NAME}"
    kinds = [(c["kind"], c["metadata"]["name"]) for c in cluster.created]
    # the owner watch needs a token (automountServiceAccountToken) no TrainJob form carries: one runtime
    assert [k for k, _ in kinds] == ["TrainingRuntime", "TrainJob"]
    (trainjob,) = [c for c in cluster.created if c["kind"] == "TrainJob"]
    assert FORM_OF[version] in trainjob["spec"] and trainjob["spec"]["runtimeRef"]["name"] == kinds[0][1]
    assert trainjob["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "step-a", "uid": "uid-a"}
    ]
    for pod_name, template in cluster.pod_specs.items():
        assert restricted_violations(template["spec"]) == [], pod_name
    assert cluster.deleted == [(NAME, "Background")] and cluster.pods == {}
    assert f"pod {NAME}-node-0-1-" in caplog.text and f"TrainJob team-a/{NAME} succeeded" in caplog.text
    assert f"node pod settings through spec.{FORM_OF[version]}" in caplog.text


@pytest.mark.parametrize("version", trainer_crds.VERSIONS)
def test_a_wrong_guess_is_refused_not_dropped(version):
    """Without fieldValidation=Strict the API server drops the other version's field and the pods lose
    their settings (shown here on the fake, as the real server prunes); the launcher always asks for Strict,
    so each created TrainJob is exactly what it rendered, in the form the server has."""
    cluster = FakeTrainerCluster(version)
    other = POD_TEMPLATE_OVERRIDES if FORM_OF[version] == RUNTIME_PATCHES else RUNTIME_PATCHES
    blind = render_trainjob(_spec(name="blind"), other).trainjob
    cluster.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "team-a", "trainjobs", blind)
    assert other not in cluster.trainjobs["blind"]["spec"], "pruned silently"
    with _Http(cluster) as http:
        launcher = http.launcher(api=other)
        with pytest.raises(TrainingFailed, match=f'unknown field "spec.{other}"'):
            launcher.launch(_request())
        _polls(cluster, None, lambda: cluster.complete(NAME))
        auto = http.launcher()
        auto.launch(_request())
    sent = [c for c in cluster.created if c["kind"] == "TrainJob" and c["metadata"]["name"] == NAME]
    assert auto.api == FORM_OF[version] and FORM_OF[version] in sent[0]["spec"]


def test_kueue_creates_it_suspended_with_the_queue_and_it_runs_once_admitted(caplog):
    """Kueue's TrainJob integration (kueue.sigs.k8s.io/docs/tasks/run/trainjobs/): the LocalQueue label
    and spec.suspend true; no pod starts before admission (the step waits, the Trainer reports Suspended).
    Admitted (Kueue sets suspend false), the Trainer reports Resumed and the pods start; a retried step
    adopts the job."""
    caplog.set_level(logging.INFO, logger="sam2.launch")
    cluster = FakeTrainerCluster("2.3.0")
    seen: dict[str, object] = {}

    def before_admission():
        seen["job"] = copy.deepcopy(cluster.trainjobs[NAME])
        seen["pods"] = dict(cluster.pods)

    with _Http(cluster, scheduler="kueue", queue="team-a-gpus") as http:
        _polls(cluster, None, None, before_admission, lambda: cluster.admit(NAME), None, None)
        with pytest.raises(TimeoutError):  # the first attempt's step ran out of time; the job stays
            http.launcher(timeout_s=1.0).launch(_request())
        _polls(cluster, None, lambda: cluster.complete(NAME))
        http.launcher().launch(_request())
    job = seen["job"]
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a-gpus" and job["spec"]["suspend"] is True
    assert seen["pods"] == {}, "no pod before Kueue admits the job"
    assert f"TrainJob team-a/{NAME}: Suspended (Suspended) TrainJob is suspended" in caplog.text
    assert f"pod {NAME}-node-0-1-" in caplog.text, "admitted: the pods started"
    assert "exists already (it has not finished); attaching to it" in caplog.text


def test_volcano_gang_scheduling_goes_through_the_runtime_and_the_queue_annotation():
    """Trainer v2 gangs pods through the runtime's podGroupPolicy.volcano and reads the queue from the
    scheduling.volcano.sh/queue-name annotation (plugins/volcano/volcano.go)."""
    cluster = FakeTrainerCluster("2.1.0")
    with _Http(cluster, scheduler="volcano", queue="gpu-queue", priority_class="training-high") as http:
        _polls(cluster, None, lambda: cluster.complete(NAME))
        http.launcher().launch(_request())
    runtime = next(c for c in cluster.created if c["kind"] == "TrainingRuntime")
    job = next(c for c in cluster.created if c["kind"] == "TrainJob")
    assert runtime["spec"]["podGroupPolicy"] == {"volcano": {}}
    assert job["spec"]["annotations"] == {"scheduling.volcano.sh/queue-name": "gpu-queue"}
    for template in cluster.pod_specs.values():
        assert template["spec"]["schedulerName"] == "volcano"
        assert template["spec"]["priorityClassName"] == "training-high"


def test_pending_pods_show_the_schedulers_events_and_the_timeout_names_the_last():
    cluster = FakeTrainerCluster("2.3.0", pod_phase="Pending")
    original = cluster._new_pod

    def with_event(name, index, job):
        made = original(name, index, job)
        cluster.events.append(event(made, "FailedScheduling", GPU_MESSAGE))
        return made

    cluster._new_pod = with_event
    with (
        _Http(cluster, pending_timeout_s=0.3, cleanup="always") as http,
        pytest.raises(
            PendingTimeout, match=f"last event: {NAME}-node-0-1-[0-9]+: FailedScheduling: {GPU_MESSAGE}"
        ),
    ):
        http.launcher().launch(_request())
    assert cluster.deleted == [(NAME, "Background")], "the step gave up: the job goes"


def test_a_failed_node_fails_the_step_with_its_reason_exit_code_and_last_log_lines():
    """v2.1.0, the launcher's runtime (restartPolicy Never, podFailurePolicy FailJob for exit codes
    1-127): a config error (exit 2) fails the Job, the JobSet, then the TrainJob; the failed pod stays."""
    cluster = FakeTrainerCluster("2.1.0")
    log = "".join(f"line {i}\n" for i in range(100)) + "ValueError: scratch.num_frames must be >= 1\n"
    with _Http(cluster) as http:
        _polls(cluster, None, lambda: cluster.exit_node(NAME, 1, 2, "Error", log))
        with pytest.raises(TrainingFailed) as err:
            http.launcher().launch(_request())
    message = str(err.value)
    assert (
        f"TrainJob team-a/{NAME} failed: FailedJobs: jobset failed due to one or more job failures" in message
    )
    assert f"{NAME}-node-0-1-" in message and ": Error (exit 2)" in message
    assert "ValueError: scratch.num_frames must be >= 1" in message
    assert "line 61\n" in message and "line 60\n" not in message


def test_a_signal_exit_replaces_the_pod_and_training_goes_on(caplog):
    """v2.1.0 runtime: exit 137 (OOM kill) is not in FailJob's exit codes: the Job makes a new pod for that
    index and the TrainJob goes on to Complete; the step logs the replacement."""
    caplog.set_level(logging.INFO, logger="sam2.launch")
    cluster = FakeTrainerCluster("2.1.0")
    with _Http(cluster) as http:
        _polls(
            cluster,
            None,
            lambda: cluster.exit_node(NAME, 0, 137, "OOMKilled"),
            None,
            lambda: cluster.complete(NAME),
        )
        http.launcher().launch(_request())
    assert len([p for p in cluster.pod_specs if p.startswith(f"{NAME}-node-0-0-")]) == 2
    assert "pod " + NAME + "-node-0-0-" in caplog.text and "Running -> Failed" in caplog.text


def test_on_failure_restarts_are_reported_with_their_exit_code(caplog):
    """v2.3.0 with the stock runtime (no owner, so no runtime of the launcher's): JobSet's default
    restartPolicy OnFailure restarts the container in place; past the Job's backoffLimit (6) the Job
    controller deletes the pods and the TrainJob fails. The error still names the exit code and reason
    the watch saw at the restarts."""
    caplog.set_level(logging.INFO, logger="sam2.launch")
    cluster = FakeTrainerCluster("2.3.0")
    with _Http(cluster) as http:
        _polls(
            cluster,
            *[
                a
                for _ in range(7)
                for a in (None, lambda: cluster.exit_node(NAME, 1, 2, "Error", "Traceback: bad config\n"))
            ],
        )
        with pytest.raises(TrainingFailed) as err:
            http.launcher().launch(_request())
    assert [c["kind"] for c in cluster.created] == ["TrainJob"], "no runtime needed under v2.3.0"
    assert "container node restarted" in caplog.text and "Error (exit 2)" in caplog.text
    message = str(err.value)
    assert f"{NAME}-node-0-1-" in message and "restarted 6 time(s), last run Error (exit 2)" in message
    assert "Traceback: bad config" in message, "the log of the run before the restart"


def test_a_retried_step_adopts_a_running_job_and_recreates_a_failed_one(caplog):
    caplog.set_level(logging.INFO, logger="sam2.launch")
    cluster = FakeTrainerCluster("2.3.0")
    cluster.owner_pods = {"uid-a": "step-a", "uid-b": "step-b"}
    with _Http(cluster) as http:
        first = http.launcher(owner_pod=("team-a", "step-a", "uid-a"), timeout_s=0.3)
        with pytest.raises(TimeoutError):
            first.launch(_request())  # cleanup=never: the job stays
        _polls(cluster, None, lambda: cluster.complete(NAME))
        http.launcher(owner_pod=("team-a", "step-b", "uid-b")).launch(_request())
        owners = [o["uid"] for o in cluster.trainjobs[NAME]["metadata"]["ownerReferences"]]
        assert owners == ["uid-a", "uid-b"], "merge-patched: the retry's pod is an owner too"
        cluster.conditions[NAME] = [
            {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "x"}
        ]
        _polls(cluster, None, None, lambda: cluster.complete(NAME))
        http.launcher().launch(_request())
    assert "exists already and it failed (FailedJobs): deleting it and creating it anew" in caplog.text
    assert (NAME, "Foreground") in cluster.deleted


def test_sigterm_deletes_the_trainjob_and_deleting_the_run_collects_it():
    cluster = FakeTrainerCluster("2.3.0")
    cluster.owner_pods = {"uid-a": "step-a"}
    before = signal.getsignal(signal.SIGTERM)
    with _Http(cluster) as http:
        _later(0.3, os.kill, os.getpid(), signal.SIGTERM)
        with pytest.raises(TrainingFailed, match=f"got SIGTERM: deleted TrainJob team-a/{NAME}"):
            http.launcher(owner_pod=("team-a", "step-a", "uid-a")).launch(_request())
        assert cluster.trainjobs == {} and cluster.pods == {}
        assert signal.getsignal(signal.SIGTERM) is before
        # the run deleted while nothing watches: the garbage collector takes the TrainJob and its pods
        first = http.launcher(owner_pod=("team-a", "step-a", "uid-a"), timeout_s=0.2)
        with pytest.raises(TimeoutError):
            first.launch(_request())
    cluster.delete_owner_pod("uid-a")
    assert (
        cluster.trainjobs == {} and cluster.pods == {} and cluster.deleted[-1] == (NAME, "garbage-collector")
    )


def test_job_spec_for_is_the_one_place_settings_become_a_job():
    settings = ClusterSettings(namespace="n", image="i:1", cpu_per_gpu="4", shared_data_pvc="claim")
    spec = job_spec_for(settings, _request(), None)
    assert spec.shared_data_pvc == "claim" and "scratch.num_train_workers=3" in spec.args
    assert node_pod_template(spec)["spec"]["containers"][0]["name"] == "node"
    with pytest.raises(ValueError, match="trainer_runtime_kind must be one of"):
        ClusterSettings(namespace="n", image="i:1", trainer_runtime_kind="Runtime")
    with pytest.raises(ValueError, match="cleanup must be one of"):
        ClusterSettings(namespace="n", image="i:1", cleanup="sometimes")
    assert copy.deepcopy(settings) == settings


# -- k8s/trainjob.yaml ---------------------------------------------------------------------------------------


def test_the_trainjob_manifest_is_valid_for_both_trainer_versions_and_matches_the_pytorchjob_manifest():
    """kubectl apply -f k8s/trainjob.yaml: both objects valid (nothing pruned) against v2.1.0's and v2.3.0's
    CRDs; generated from k8s/pytorchjob.yaml without drift; the node pod the Trainer builds from them is the
    PyTorchJob Master's pod, restricted, with the torch plugin's env."""
    import yaml

    from sam2.launch.trainjob import render_manifest

    path = ROOT / "k8s" / "trainjob.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs == render_manifest(), "k8s/trainjob.yaml drifted from k8s/pytorchjob.yaml: regenerate it"
    runtime, trainjob = docs
    for version in trainer_crds.VERSIONS:
        trainer_crds.validate(runtime, version)
        trainer_crds.validate(trainjob, version)
        built = node_job(trainjob, runtime, version)["template"]
        assert restricted_violations(built["spec"]) == [], version
        master = yaml.safe_load((ROOT / "k8s" / "pytorchjob.yaml").read_text())["spec"][
            "pytorchReplicaSpecs"
        ]["Master"]["template"]
        (node,), (pytorch,) = built["spec"]["containers"], master["spec"]["containers"]
        for key in ("image", "command", "args", "resources", "volumeMounts", "securityContext"):
            assert node[key] == pytorch[key], key
        for key in ("volumes", "securityContext", "terminationGracePeriodSeconds", "serviceAccountName"):
            assert built["spec"][key] == master["spec"][key], key
        assert built["spec"]["automountServiceAccountToken"] is False
        assert {e["name"] for e in node["env"]} >= {
            "PET_NNODES",
            "PET_NODE_RANK",
            "PET_MASTER_ADDR",
            "S3_ENDPOINT_URL",
        }
    assert trainjob["spec"]["trainer"]["numNodes"] == 2


def test_both_kinds_manifests_validate_against_their_crds():
    import yaml
    from pytorchjob_crd import validate_against_crd

    validate_against_crd(yaml.safe_load((ROOT / "k8s" / "pytorchjob.yaml").read_text()))
    for doc in yaml.safe_load_all((ROOT / "k8s" / "trainjob.yaml").read_text()):
        for version in trainer_crds.VERSIONS:
            trainer_crds.validate(doc, version)


def test_an_admins_runtime_is_referenced_and_what_it_must_set_is_named(caplog):
    """trainer_runtime names the admin's own ClusterTrainingRuntime: the launcher references it and creates
    no runtime of its own; the settings the TrainJob's form cannot carry are named in the step's log (never
    dropped in silence), here a priority class under v2.3.0."""
    caplog.set_level(logging.INFO, logger="sam2.launch")
    cluster = FakeTrainerCluster("2.3.0")
    own = copy.deepcopy(trainer_crds.torch_distributed("2.3.0"))
    own["metadata"]["name"] = "team-torch"
    cluster.cluster_runtimes["team-torch"] = own
    with _Http(cluster, trainer_runtime="team-torch", priority_class="training-high") as http:
        _polls(cluster, None, lambda: cluster.complete(NAME))
        http.launcher().launch(_request())
    assert [c["kind"] for c in cluster.created] == ["TrainJob"]
    assert cluster.created[0]["spec"]["runtimeRef"]["name"] == "team-torch"
    assert (
        "spec.runtimePatches of a TrainJob cannot carry priorityClassName: the runtime ClusterTrainingRuntime "
        "team-torch must set them" in caplog.text
    )


def test_a_trainjob_whose_pods_cannot_be_made_says_why_at_the_pending_timeout():
    """The Trainer records a Warning event on the TrainJob when it cannot build its objects (reason
    TrainJobResourcesCreationFailed: pkg/controller/trainjob_controller.go, Reconcile); with no pod to
    watch, the step logs the controller's events and the pending timeout names the last one."""
    from types import SimpleNamespace

    cluster = FakeTrainerCluster("2.3.0")
    message = (
        'TrainJob resources reconciliation failed: jobsets.jobset.x-k8s.io "x" is forbidden: exceeded quota'
    )

    def no_pods(name, index, job):
        if not cluster.events:
            uid = cluster.trainjobs[name]["metadata"]["uid"]
            cluster.events.append(
                SimpleNamespace(
                    metadata=SimpleNamespace(uid="ev-trainjob"),
                    involved_object=SimpleNamespace(kind="TrainJob", name=name, uid=uid),
                    reason="TrainJobResourcesCreationFailed",
                    message=message,
                    type="Warning",
                    count=1,
                )
            )

    cluster._new_pod = no_pods
    with (
        _Http(cluster, pending_timeout_s=0.3) as http,
        pytest.raises(
            PendingTimeout, match=f"last event: {NAME}: TrainJobResourcesCreationFailed: {message}"
        ),
    ):
        http.launcher().launch(_request())
