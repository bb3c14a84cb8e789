"""Pipeline step: point the champion's InferenceService at the version this run promoted (deploy=true)."""

from kfp import dsl

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def deploy_model(
    decision: str,
    model_version: str,
    inferenceservice_name: str = "sam2",
    serving_variant: str = "gpu",
    namespace: str = "",
    image: str = "",
    mlflow_tracking_uri: str = "",
    s3_endpoint_url: str = "",
    s3_secret_name: str = "",
) -> str:
    """Create or update the KServe InferenceService `inferenceservice_name` (k8s/inferenceservice.yaml, or
    inferenceservice-cpu.yaml for `serving_variant` "cpu") to serve `model_version` (`sam2-<data set>/<n>`)
    when `decision` is "champion"; a challenger leaves it untouched. The version is pinned in the pod
    template, so KServe rolls out a new revision and the old one serves until the new one is ready.

    Args:
        decision: the promote step's decision ("champion" or "challenger").
        model_version: the promote step's registered version, `sam2-<data set>/<version>`.
        inferenceservice_name: the InferenceService to create or update.
        serving_variant: "gpu" or "cpu", which manifest of k8s/ to render.
        namespace: where it lives; empty for this step's own namespace.
        image: the serving image; empty keeps the manifest's (the pipeline passes its own image).
        mlflow_tracking_uri: the registry the server loads the version from.
        s3_endpoint_url: the object storage of the model folder and checkpoint.
        s3_secret_name: the Secret with the S3 key pair, as for the other steps.

    Returns: what was done (created, patched, unchanged, skipped) and why.
    """
    from sam2.serving.deployment import (
        ServingTarget,
        deploy_champion,
        kube_api_client,
        namespace_or_current,
    )

    target = ServingTarget(
        name=inferenceservice_name,
        variant=serving_variant,
        image=image,
        mlflow_tracking_uri=mlflow_tracking_uri,
        s3_endpoint_url=s3_endpoint_url,
        s3_secret_name=s3_secret_name,
    )
    # A challenger changes nothing, so only a champion needs the cluster.
    client = kube_api_client() if decision == "champion" else None
    where = namespace_or_current(namespace) if client is not None else namespace
    result = deploy_champion(client, where, decision, model_version, target)
    return f"{result.action}: {result.reason}"
