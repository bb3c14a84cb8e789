"""Pipeline step 4: fine-tune SAM 2 on the train split, as a PyTorchJob or under local torchrun."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def train_model(
    splits: Input[Dataset],
    dataset_version: str,
    run_id: str,
    runs_bucket: str,
    model: Output[Model],
    model_size: str = "t",
    init_checkpoint_uri: str = "",
    epochs: int = 40,
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    launcher: str = "auto",
    training_overrides: str = "",
    lora_rank: int = 0,
    namespace: str = "",
    image: str = "",
    timeout_hours: float = 72.0,
    cleanup: str = "on-success",
    seed: int = 0,
    s3_endpoint_url: str = "",
    s3_secret_name: str = "sam2-s3-credentials",
    cpu_per_gpu: str = "8",
    memory_per_gpu: str = "64Gi",
    shm_per_gpu: str = "16Gi",
    node_selector: dict = {},  # noqa: B006 - a KFP parameter default, never mutated
    tolerations: list = [],  # noqa: B006 - a KFP parameter default, never mutated
    priority_class: str = "",
    scheduler: str = "none",
    queue: str = "",
    pending_timeout_minutes: float = 30.0,
    shared_data_pvc: str = "",
    trainer_runtime: str = "torch-distributed",
    image_pull_secrets: str = "",
    queue_timeout_minutes: float = 0.0,
) -> str:
    """Train and publish checkpoints at s3://<runs_bucket>/<run_id>/checkpoints/.

    Without `init_checkpoint_uri` the weights start RANDOM (a checkpoint made by build_sam2): fine for a
    smoke run, not for a useful model. The job is owned by this step's pod (POD_NAME/POD_UID from the
    downward API).

    Args:
        splits: split_dataset's output: the data set and its train list.
        dataset_version: The data set version, recorded with the model.
        run_id: The pipeline run's id: the run folder s3://<runs_bucket>/<run_id>/.
        runs_bucket: The S3 bucket of the runs.
        model: The trained checkpoint and what produced it (TrainedModel metadata).
        model_size: SAM 2.1 Hiera size: t, s, b+ or l.
        init_checkpoint_uri: `s3://` URI of an official SAM 2.1 checkpoint to start from; empty: random.
        epochs: Training epochs.
        num_nodes: Training nodes (torchrun nodes locally, Master + Workers on the cluster).
        gpus_per_node: GPUs (training processes) per node; 0 trains on the CPU, one process per node.
        launcher: "auto" (the cluster's job kind: a PyTorchJob where the Training Operator serves it, else a
            Kubeflow Trainer v2 TrainJob), "pytorchjob", "trainjob" or "local" (torchrun on this machine).
        training_overrides: Extra Hydra overrides, space-separated (the data set preset's settings).
        lora_rank: > 0 trains LoRA adapters of that rank on the frozen initial weights (alpha, targets and
            learning rates through `training_overrides`); the model is then the adapters merged into the
            base, checkpoint_merged.pt (checkpoint.pt holds the adapters alone).
        namespace: Where the job runs; empty for this pod's namespace.
        image: The job's image; the pipeline passes the one it was compiled with (empty: the default).
        timeout_hours: Fail when the job has not finished by then.
        cleanup: When to delete the finished job: "on-success", "always" or "never".
        seed: Training seed (also the random initial weights' seed).
        s3_endpoint_url: The S3 endpoint of object storage; empty for the environment's.
        s3_secret_name: The Secret the job's pods read their S3 credentials from.
        cpu_per_gpu: CPUs of each job pod per GPU; DataLoader workers per GPU = CPUs per GPU - 1.
        memory_per_gpu: Memory of each job pod per GPU, /dev/shm included.
        shm_per_gpu: Shared memory (/dev/shm) of each job pod per GPU.
        node_selector: nodeSelector (label -> value) of the job's pods.
        tolerations: Tolerations (core/v1 Toleration objects) of the job's pods.
        priority_class: The job's PriorityClass; empty for none.
        scheduler: "none", "volcano" (gang scheduling through the operator's PodGroup) or "kueue".
        queue: The Volcano queue, or the Kueue LocalQueue (required with "kueue").
        pending_timeout_minutes: Fail when the job's pods have not all started by then, with the
            scheduler's last message; 0 waits.
        shared_data_pvc: A ReadWriteMany claim (k8s/shared-data-pvc.yaml) the job's pods mount at
            /shared-data to stage the train videos once per data set version; empty: none, each node
            downloads into its scratch volume.
        trainer_runtime: The Kubeflow Trainer ClusterTrainingRuntime a TrainJob references (TrainJob only).
        image_pull_secrets: Docker-registry Secrets (comma-separated) the job's pods pull the image with.
        queue_timeout_minutes: Fail when Kueue keeps the job suspended in its queue longer (0: wait);
            that wait does not count against pending_timeout_minutes.

    Returns:
        The checkpoint's URI.
    """
    import logging

    from components.runtime import configure, run_uri, work_dir, write_pointer
    from sam2.build_sam import model_configs
    from sam2.contracts import RANDOM_INIT_NOTE, DataSplits, TrainedModel
    from sam2.launch.launcher import LocalTorchrunLauncher, TrainingRequest
    from sam2.training.random_init import random_init_checkpoint

    configure(s3_endpoint_url)
    log = logging.getLogger("train_model")
    model_cfg, train_cfg = model_configs(model_size)
    out_uri = run_uri(runs_bucket, run_id)
    data = DataSplits.from_metadata(splits.metadata)
    random_init = not init_checkpoint_uri
    if random_init:
        init_checkpoint_uri = random_init_checkpoint(model_cfg, f"{out_uri}/init/random_init.pt", seed)
        log.warning("training starts from %s: %s", init_checkpoint_uri, RANDOM_INIT_NOTE)
    use_gpus = gpus_per_node > 0
    overrides = [f"scratch.num_epochs={epochs}", f"trainer.seed_value={seed}"]
    if not use_gpus:
        overrides.append("trainer.accelerator=cpu")
    if lora_rank > 0:
        overrides.append(f"trainer.lora.rank={lora_rank}")
    overrides += training_overrides.split()
    request = TrainingRequest(
        run_id=run_id,
        config=train_cfg,
        dataset_uri=data.uri,
        run_uri=out_uri,
        train_list=data.train_list_uri,
        num_nodes=num_nodes,
        procs_per_node=max(1, gpus_per_node),
        use_gpus=use_gpus,
        init_checkpoint_uri=init_checkpoint_uri,
        overrides=tuple(overrides),
        scratch_bytes=data.train_bytes,  # the train videos' size, from the split step
    )
    if launcher == "local":
        job_launcher = LocalTorchrunLauncher(work_dir("train"), timeout_s=timeout_hours * 3600)
    elif launcher in ("auto", "pytorchjob", "trainjob"):
        from components.training_setup import cluster_settings
        from sam2.launch.job_kind import cluster_launcher

        settings = cluster_settings(
            namespace,
            image,
            s3_endpoint_url,
            timeout_hours,
            cleanup,
            s3_secret_name,
            cpu_per_gpu=cpu_per_gpu,
            memory_per_gpu=memory_per_gpu,
            shm_per_gpu=shm_per_gpu,
            node_selector=node_selector,
            tolerations=tolerations,
            priority_class=priority_class,
            scheduler=scheduler,
            queue=queue,
            pending_timeout_minutes=pending_timeout_minutes,
            shared_data_pvc=shared_data_pvc,
            trainer_runtime=trainer_runtime,
            image_pull_secrets=image_pull_secrets,
            queue_timeout_minutes=queue_timeout_minutes,
        )
        job_launcher = cluster_launcher(launcher, settings)  # auto: the kind the cluster serves, logged
    else:
        raise ValueError(f"launcher must be one of auto, pytorchjob, trainjob, local, got {launcher!r}")
    result = job_launcher.launch(request)
    checkpoint_uri = (
        f"{result.checkpoints_uri}/{'checkpoint_merged.pt' if lora_rank > 0 else 'checkpoint.pt'}"
    )
    trained = TrainedModel(
        uri=checkpoint_uri,
        run_uri=out_uri,
        tensorboard_uri=result.tensorboard_uri,
        model_config=model_cfg,
        training_config=train_cfg,
        training_overrides=" ".join(overrides),
        init_checkpoint=init_checkpoint_uri,
        random_init=random_init,
        dataset_uri=data.uri,
        dataset_version=dataset_version,
        train_seconds=round(result.seconds, 1),
        launcher=dict(result.details),
    )
    model.metadata.update(trained.to_metadata())
    write_pointer(model.path, dict(model.metadata))
    return checkpoint_uri
