"""The SAM 2 fine-tuning pipeline: extract -> validate -> split -> train -> infer (sharded) -> merge ->
evaluate -> promote.

Every run parameter is documented in the `Args:` of `sam2_finetune` below (the compiled YAML carries each
as the input's description, which the Kubeflow UI shows); defaults are for a cluster, and
`python -m pipelines.run --dataset demo` fills them from a preset.

Compile-time option: with `SAM2_SHARED_DATA_PVC=<claim>` set when compiling (k8s/shared-data-pvc.yaml),
validate, split, infer and evaluate mount that ReadWriteMany claim at /shared-data and keep one copy of
each data set version there (SAM2_SHARED_DATA_DIR) instead of fetching into their scratch disks; the train
step passes the claim to the PyTorchJob, whose Master and Workers mount it the same way.

Compile-time option: with `SAM2_STEP_SCRATCH=<size>` (e.g. 60Gi) set when compiling, every step works in
an emptyDir of that sizeLimit at /scratch (SAM2_SCRATCH and TMPDIR point there) instead of the container's
writable layer: a step that outgrows it is evicted alone, not the node's other pods under disk pressure.
KFP offers no ephemeral-storage request for a step, so this bounds a step's disk rather than reserving it;
docs/cluster-operations.md has each step's measured peak to size it by.

Compile-time option: with `SAM2_KUEUE_QUEUE=<LocalQueue>` set when compiling, `scheduler` defaults to
"kueue" with that queue, and the infer step's GPU pods carry the queue label (kueue.x-k8s.io/queue-name;
Kueue's pod integration then admits them against the queue's quota). A pod label cannot come from a run
parameter, so a run that picks another queue queues its training job there but not its infer pods.
"""

import os
from typing import NamedTuple

from kfp import dsl, kubernetes

from components.deploy import deploy_model
from components.evaluate import evaluate_predictions
from components.extract_frames import extract_frames
from components.infer import infer_videos
from components.merge_predictions import merge_predictions
from components.plan_infer_shards import plan_infer_shards
from components.promote import promote_model
from components.resolve_models import resolve_reference_models
from components.score_regression import score_regression_set
from components.split import split_dataset
from components.train import train_model
from components.validate import validate_dataset
from sam2.data.layout import SHARED_DATA_ENV, SHARED_DATA_MOUNT

PIPELINE_NAME = "sam2-finetune"
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
MLFLOW_SECRET = "sam2-mlflow-credentials"
RUN_AS_UID = 1000  # the image's user (docker/Dockerfile)
POD_FIELDS = {"POD_NAME": "metadata.name", "POD_UID": "metadata.uid", "POD_NAMESPACE": "metadata.namespace"}
# The PyTorchJob runs the image the train step itself runs, fixed when the pipeline is compiled (the
# default, or $SAM2_PIPELINE_IMAGE then): inside the step's pod that variable is not set.
TRAINING_IMAGE = train_model.component_spec.implementation.container.image
# Optional ReadWriteMany claim holding the data sets (k8s/shared-data-pvc.yaml), fixed at compile time.
SHARED_DATA_PVC = os.environ.get("SAM2_SHARED_DATA_PVC", "").strip()
# Optional Kueue LocalQueue, fixed at compile time: the default queue, and the infer pods' label.
KUEUE_QUEUE = os.environ.get("SAM2_KUEUE_QUEUE", "").strip()
# Optional size of each step's scratch emptyDir (e.g. "60Gi"), fixed at compile time; empty: none.
STEP_SCRATCH = os.environ.get("SAM2_STEP_SCRATCH", "").strip()
STEP_SCRATCH_MOUNT = "/scratch"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MLFLOW_SECRET_KEYS = {
    "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
}


class PipelineOutputs(NamedTuple):
    """What a run ends with: champion or challenger, the registered version, its J&F, where things are,
    and the new model's J&F beside the champion's and the baseline's on the same val videos."""

    decision: str
    model_version: str
    jf: float
    run_uri: str
    dataset_uri: str
    comparison: str


def _restricted(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Run as the image's unprivileged user, labelled as this project's; the KFP backend adds the rest of
    the restricted profile (allowPrivilegeEscalation false, drop ALL, seccomp RuntimeDefault: kfp-kubernetes
    set_security_context)."""
    # k8s/networkpolicy.yaml admits pods with this label to MinIO and MLflow.
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "sam2-kubeflow")
    return kubernetes.set_security_context(
        task, run_as_user=RUN_AS_UID, run_as_group=RUN_AS_UID, run_as_non_root=True
    )


def _with_s3(task: dsl.PipelineTask, secret_name) -> dsl.PipelineTask:
    return kubernetes.use_secret_as_env(task, secret_name=secret_name, secret_key_to_env=S3_SECRET_KEYS)


@dsl.pipeline(
    name=PIPELINE_NAME, description="Fine-tune SAM 2 on a VOS data set, evaluate J&F, promote in MLflow"
)
def sam2_finetune(
    dataset_name: str = "demo",
    source_uri: str = "demo:",
    data_bucket: str = "sam2-data",
    runs_bucket: str = "sam2-runs",
    fps: float = 0.0,
    validate_num_frames: int = 8,
    on_bad: str = "exclude",
    val_fraction: float = 0.2,
    split_seed: int = 0,
    model_size: str = "b+",
    init_checkpoint_uri: str = "",
    epochs: int = 40,
    num_nodes: int = 2,
    gpus_per_node: int = 1,
    train_launcher: str = "auto",
    training_overrides: str = "",
    lora_rank: int = 0,
    inference_args: str = "",
    infer_shards: int = 1,
    promotion_margin: float = 1.0,
    allow_random_init: bool = False,
    baseline_margin: float = 0.0,
    regression_dataset_uri: str = "",
    max_regression: float = 0.0,
    deploy: bool = False,
    serving_variant: str = "gpu",
    mlflow_tracking_uri: str = "http://mlflow:5000",
    s3_endpoint_url: str = "http://minio:9000",
    s3_secret_name: str = "sam2-s3-credentials",
    cpu_per_gpu: str = "8",
    memory_per_gpu: str = "64Gi",
    shm_per_gpu: str = "16Gi",
    gpu_node_selector: dict = {},  # noqa: B006 - a KFP parameter default, never mutated
    gpu_tolerations: list = [],  # noqa: B006 - a KFP parameter default, never mutated
    priority_class: str = "",
    scheduler: str = "kueue" if KUEUE_QUEUE else "none",
    scheduler_queue: str = KUEUE_QUEUE,
    pending_timeout_minutes: float = 30.0,
    trainer_runtime: str = "torch-distributed",
    image_pull_secret: str = "",
    queue_timeout_minutes: float = 0.0,
) -> PipelineOutputs:
    """Fine-tune SAM 2 on a VOS data set, score it beside the champion and the zero-shot baseline on the
    same val videos (J&F), and register it in MLflow as champion or challenger.

    Args:
        dataset_name: The data set's name; every fine-tune of it is a version of the registered model
            `sam2-<dataset_name>`.
        source_uri: Where the data comes from: an `s3://` archive or folder (DAVIS/MOSE layout, SA-V, plain
            videos), or "demo:" for the embedded demo data set (no download).
        data_bucket: S3 bucket of the data sets (`datasets/<name>/<version>/`).
        runs_bucket: S3 bucket of the runs (`<run-id>/`: checkpoints, predictions, metrics, report).
        fps: Frame rate to extract videos at; 0 keeps every frame.
        validate_num_frames: The training sampler's clip length, which every video must reach.
        on_bad: What a bad video does: "exclude" it (reported by name) or "fail" the run.
        val_fraction: Share of the valid videos held out for validation (a deterministic split).
        split_seed: Seed of the train/val split.
        model_size: SAM 2.1 Hiera size: t, s, b+ or l.
        init_checkpoint_uri: `s3://` URI of the weights to start from (an official SAM 2.1 checkpoint);
            empty starts from RANDOM weights, a smoke test only.
        epochs: Training epochs.
        num_nodes: Training nodes (PyTorchJob Master + num_nodes - 1 Workers).
        gpus_per_node: GPUs (training processes) per node; 0 trains on the CPU.
        train_launcher: "auto" (the job kind the cluster serves: a PyTorchJob where the Training Operator is
            installed, else a Kubeflow Trainer v2 TrainJob; docs/job-kinds.md), "pytorchjob", "trainjob" or
            "local" (torchrun inside the train step).
        training_overrides: Extra Hydra overrides of the training config, space-separated.
        lora_rank: > 0 fine-tunes LoRA adapters of that rank on the frozen initial weights
            (trainer.lora.rank); the model evaluated and registered is the adapters merged into the base.
        inference_args: Extra flags for `sam2.tools.vos_inference`, space-separated, the same for every
            scored model.
        infer_shards: Inference runs as this many parallel shards (one GPU each, at most one per val
            video); merge-predictions checks every val video was predicted exactly once. 1 runs one task.
        promotion_margin: J&F points a new model must beat the champion by (both scored in this run on the
            same val videos) to take the `champion` alias.
        allow_random_init: Let a model trained from random weights (no init_checkpoint_uri) become
            champion; by default such a version is registered but stays challenger.
        baseline_margin: J&F points a new model must also beat the run's zero-shot baseline (the initial
            checkpoint, scored on the same val videos) by to take `champion`, the first version included.
        regression_dataset_uri: `s3://` folder of a second DAVIS-style set (JPEGImages/, Annotations/), e.g.
            a slice of a public benchmark; the new model and the baseline are scored there too (on CPU) and
            the new one may lose at most `max_regression` J&F against the baseline. Empty: no such check.
        max_regression: J&F points the new model may lose against the baseline on the regression set.
        deploy: When the new version becomes champion, create or update the KServe InferenceService
            `sam2` to serve it (a rolling update; k8s/inferenceservice.yaml, docs/serving.md); a
            challenger leaves it untouched.
        serving_variant: "gpu" or "cpu": which InferenceService manifest `deploy` renders.
        mlflow_tracking_uri: The MLflow server (registry and runs); not secret. Credentials, when it needs
            them, come from the optional Secret `sam2-mlflow-credentials`.
        s3_endpoint_url: The S3 endpoint of object storage (MinIO, SeaweedFS); not secret.
        s3_secret_name: The Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for every step and the
            training job's pods.
        cpu_per_gpu: CPUs of each training pod per GPU; DataLoader workers per GPU = cpu_per_gpu - 1.
        memory_per_gpu: Memory of each training pod per GPU, /dev/shm included.
        shm_per_gpu: Shared memory (/dev/shm) of each training pod per GPU.
        gpu_node_selector: nodeSelector (label -> value) of the GPU pods: the training job's and the
            infer step's.
        gpu_tolerations: Tolerations (core/v1 Toleration objects) of the GPU pods.
        priority_class: The training job's PriorityClass; empty for none.
        scheduler: "none", "volcano" (gang scheduling; the operator runs with
            --gang-scheduler-name=volcano) or "kueue".
        scheduler_queue: The Volcano queue, or the Kueue LocalQueue (required with "kueue").
        pending_timeout_minutes: Fail the train step when the job's pods have not all started by then,
            with the scheduler's last message; 0 waits.
        trainer_runtime: The Kubeflow Trainer ClusterTrainingRuntime a TrainJob references (an admin's
            own runtime works; docs/job-kinds.md).
        image_pull_secret: The docker-registry Secret every step's pod (and the training job's) pulls the
            image with; one name, empty for none (a public image, or service accounts that carry it:
            docs/cluster-operations.md).
        queue_timeout_minutes: Fail the train step when Kueue keeps its job suspended in the queue longer
            than this; 0 (the default) waits as long as the queue does. Queue time is not pending time.

    Returns:
        decision: "champion" or "challenger".
        model_version: The registered version, `sam2-<dataset_name>/<n>`.
        jf: The new model's J&F on the val split, in percent.
        run_uri: The run's folder in the runs bucket.
        dataset_uri: The data set version it was trained on.
        comparison: One line comparing it with the champion and the baseline.
    """
    extract = extract_frames(
        source_uri=source_uri,
        dataset_name=dataset_name,
        data_bucket=data_bucket,
        fps=fps,
        s3_endpoint_url=s3_endpoint_url,
    ).set_display_name("extract frames")
    version = extract.outputs["Output"]

    validate = validate_dataset(
        dataset_name=dataset_name,
        data_bucket=data_bucket,
        dataset_version=version,
        num_frames=validate_num_frames,
        on_bad=on_bad,
        s3_endpoint_url=s3_endpoint_url,
    ).set_display_name("validate")

    split = split_dataset(
        validated=validate.outputs["validated"],
        dataset_version=version,
        val_fraction=val_fraction,
        seed=split_seed,
        s3_endpoint_url=s3_endpoint_url,
    ).set_display_name("split")

    train = train_model(
        splits=split.outputs["splits"],
        dataset_version=version,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        runs_bucket=runs_bucket,
        model_size=model_size,
        init_checkpoint_uri=init_checkpoint_uri,
        epochs=epochs,
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        launcher=train_launcher,
        training_overrides=training_overrides,
        lora_rank=lora_rank,
        image=TRAINING_IMAGE,
        s3_endpoint_url=s3_endpoint_url,
        s3_secret_name=s3_secret_name,
        cpu_per_gpu=cpu_per_gpu,
        memory_per_gpu=memory_per_gpu,
        shm_per_gpu=shm_per_gpu,
        node_selector=gpu_node_selector,
        tolerations=gpu_tolerations,
        priority_class=priority_class,
        scheduler=scheduler,
        queue=scheduler_queue,
        pending_timeout_minutes=pending_timeout_minutes,
        shared_data_pvc=SHARED_DATA_PVC,
        trainer_runtime=trainer_runtime,
        image_pull_secrets=image_pull_secret,
        queue_timeout_minutes=queue_timeout_minutes,
    ).set_display_name("train")

    # The champion and the zero-shot baseline, scored beside the new model on the same videos.
    references = resolve_reference_models(
        dataset_name=dataset_name,
        model_size=model_size,
        init_checkpoint_uri=init_checkpoint_uri,
        mlflow_tracking_uri=mlflow_tracking_uri,
        s3_endpoint_url=s3_endpoint_url,
    ).set_display_name("resolve reference models")

    shards = plan_infer_shards(splits=split.outputs["splits"], infer_shards=infer_shards).set_display_name(
        "plan inference shards"
    )
    with dsl.ParallelFor(shards.output) as shard_index:
        infer = infer_videos(
            model=train.outputs["model"],
            splits=split.outputs["splits"],
            references=references.outputs["references"],
            inference_args=inference_args,
            shard_index=shard_index,
            num_shards=infer_shards,
            s3_endpoint_url=s3_endpoint_url,
        ).set_display_name("infer shard")

    merge = merge_predictions(
        shards=dsl.Collected(infer.outputs["predictions"]),
        splits=split.outputs["splits"],
        s3_endpoint_url=s3_endpoint_url,
    ).set_display_name("merge predictions")

    evaluate = evaluate_predictions(
        predictions=merge.outputs["predictions"],
        splits=split.outputs["splits"],
        model=train.outputs["model"],
        s3_endpoint_url=s3_endpoint_url,
    ).set_display_name("evaluate")

    # The gate's regression set (a no-op without regression_dataset_uri).
    regression = score_regression_set(
        model=train.outputs["model"],
        references=references.outputs["references"],
        regression_dataset_uri=regression_dataset_uri,
        inference_args=inference_args,
        s3_endpoint_url=s3_endpoint_url,
    ).set_display_name("score regression set")

    promote = promote_model(
        model=train.outputs["model"],
        comparison=evaluate.outputs["comparison"],
        regression=regression.outputs["regression"],
        baseline_margin=baseline_margin,
        regression_dataset_uri=regression_dataset_uri,
        max_regression=max_regression,
        dataset_name=dataset_name,
        pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        promotion_margin=promotion_margin,
        allow_random_init=allow_random_init,
        inference_args=inference_args,
        image=TRAINING_IMAGE,
        mlflow_tracking_uri=mlflow_tracking_uri,
        s3_endpoint_url=s3_endpoint_url,
    ).set_display_name("promote")

    # The champion as an endpoint: the step itself leaves a challenger's InferenceService untouched.
    with dsl.If(deploy == True):  # noqa: E712 - a KFP condition on a pipeline parameter
        deployed = deploy_model(
            decision=promote.outputs["decision"],
            model_version=promote.outputs["model_version"],
            serving_variant=serving_variant,
            image=TRAINING_IMAGE,
            mlflow_tracking_uri=mlflow_tracking_uri,
            s3_endpoint_url=s3_endpoint_url,
            s3_secret_name=s3_secret_name,
        ).set_display_name("deploy")

    # Extract always runs: its inputs name a source (an s3:// URI, a folder), not its content, so new data
    # at the same URI would hit the cache. It returns the version hashed from the content, and the other
    # data steps are cached on that: the same data reuses them, new data reruns them.
    extract.set_caching_options(False)
    for task in (validate, split):
        task.set_caching_options(True)
    for task in (extract, validate, split):
        task.set_cpu_request("2").set_memory_request("4Gi").set_memory_limit("16Gi")
    # Every run trains, evaluates and registers anew (the run id is an input of train anyway); the
    # champion is looked up anew each run.
    for task in (references, train, shards, infer, merge, evaluate, regression, promote, deployed):
        task.set_caching_options(False)
    # The train step only creates and watches the PyTorchJob; the GPUs are the job's.
    train.set_cpu_request("1").set_memory_request("2Gi").set_memory_limit("8Gi")
    infer.set_cpu_request("4").set_memory_request("16Gi").set_memory_limit("32Gi")
    infer.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    # The limit is the cgroup quota evaluate sizes its worker pool from (sam2.utils.cpu_threads).
    evaluate.set_cpu_request("4").set_cpu_limit("4").set_memory_request("4Gi").set_memory_limit("16Gi")
    shards.set_cpu_request("100m").set_memory_request("256Mi").set_memory_limit("1Gi")
    merge.set_cpu_request("500m").set_memory_request("1Gi").set_memory_limit("4Gi")
    promote.set_cpu_request("500m").set_memory_request("1Gi").set_memory_limit("4Gi")
    references.set_cpu_request("250m").set_memory_request("512Mi").set_memory_limit("2Gi")
    regression.set_cpu_request("1").set_memory_request("2Gi").set_memory_limit("16Gi")
    deployed.set_cpu_request("100m").set_memory_request("256Mi").set_memory_limit("1Gi")
    _restricted(deployed)
    kubernetes.set_image_pull_secrets(deployed, [image_pull_secret])
    for task in (
        extract,
        validate,
        split,
        references,
        train,
        shards,
        infer,
        merge,
        evaluate,
        regression,
        promote,
    ):
        _with_s3(task, s3_secret_name)
        _restricted(task)
        # An empty name (the default) is ignored by the kubelet (pkg/kubelet/kubelet_pods.go,
        # getPullSecretsForPod: "API validation permitted entries with empty names").
        kubernetes.set_image_pull_secrets(task, [image_pull_secret])
        if STEP_SCRATCH:  # components.runtime.work_dir and tempfile write here, bounded by the sizeLimit
            kubernetes.empty_dir_mount(task, "scratch", STEP_SCRATCH_MOUNT, size_limit=STEP_SCRATCH)
            task.set_env_variable("SAM2_SCRATCH", STEP_SCRATCH_MOUNT)
            task.set_env_variable("TMPDIR", STEP_SCRATCH_MOUNT)
    if SHARED_DATA_PVC:
        for task in (validate, split, infer, evaluate):
            kubernetes.mount_pvc(task, pvc_name=SHARED_DATA_PVC, mount_path=SHARED_DATA_MOUNT)
            task.set_env_variable(SHARED_DATA_ENV, SHARED_DATA_MOUNT)
    # The PyTorchJob is owned by the train step's pod (deleting the run deletes it): its name and uid.
    for env_name, field_path in POD_FIELDS.items():
        kubernetes.use_field_path_as_env(train, env_name, field_path)
    kubernetes.add_node_selector_json(infer, gpu_node_selector)
    if KUEUE_QUEUE:  # Kueue admits the infer step's GPU pods through the same queue as the training job
        kubernetes.add_pod_label(infer, KUEUE_QUEUE_LABEL, KUEUE_QUEUE)
    kubernetes.add_toleration_json(infer, gpu_tolerations)
    for task in (references, promote):
        kubernetes.use_secret_as_env(
            task, secret_name=MLFLOW_SECRET, secret_key_to_env=MLFLOW_SECRET_KEYS, optional=True
        )
    return PipelineOutputs(
        decision=promote.outputs["decision"],
        model_version=promote.outputs["model_version"],
        jf=promote.outputs["jf"],
        run_uri=promote.outputs["run_uri"],
        dataset_uri=promote.outputs["dataset_uri"],
        comparison=promote.outputs["comparison"],
    )
