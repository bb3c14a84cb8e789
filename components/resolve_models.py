"""Pipeline step: which reference checkpoints infer and evaluate score beside the new one (champion, baseline)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def resolve_reference_models(
    dataset_name: str,
    references: Output[Dataset],
    model_size: str = "t",
    init_checkpoint_uri: str = "",
    mlflow_tracking_uri: str = "",
    s3_endpoint_url: str = "",
) -> str:
    """Look up the champion of `sam2-<dataset_name>` and the initial checkpoint (the zero-shot baseline);
    the `references` artifact lists those that can be scored and says why the others cannot. Runs beside
    training (it needs only the registry), and decides once for every inference shard.

    Args:
        dataset_name: The data set whose registered model's champion is looked up.
        references: The reference models to score and the reasons for the others (ReferenceModels).
        model_size: The new model's size (t, s, b+, l): the baseline's model config.
        init_checkpoint_uri: The checkpoint training starts from, scored as the baseline; empty (random
            weights) has no baseline.
        mlflow_tracking_uri: The MLflow registry; empty for MLFLOW_TRACKING_URI, unset for no champion.
        s3_endpoint_url: The S3 endpoint of object storage; empty for the environment's.

    Returns:
        A one-line summary of which reference models will be scored.
    """
    import os

    from components.runtime import configure, write_pointer
    from sam2.build_sam import model_configs
    from sam2.contracts import ReferenceModels
    from sam2.promotion.references import resolve_references
    from sam2.promotion.registry import MlflowModelRegistry
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url, mlflow_tracking_uri)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    registry = MlflowModelRegistry(uri) if uri else None
    model_config, _ = model_configs(model_size)
    models, skipped = resolve_references(
        registry, ObjectStore(), dataset_name, init_checkpoint_uri, model_config
    )
    references.metadata.update(ReferenceModels(models=models, skipped=skipped).to_metadata())
    write_pointer(references.path, dict(references.metadata))
    scored = ", ".join(m.label for m in models) or "none"
    return f"reference models: {scored}" + "".join(f"; {k} skipped: {why}" for k, why in skipped.items())
