"""Pipeline step 5: semi-supervised VOS on the val videos from their first-frame masks -> palette PNGs."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def infer_videos(
    model: Input[Model],
    splits: Input[Dataset],
    predictions: Output[Dataset],
    inference_args: str = "",
    s3_endpoint_url: str = "",
) -> str:
    """Run `python -m sam2.tools.vos_inference` (upstream flags) on the val split; publish the masks at
    <run>/predictions/ and return that URI. `inference_args`: extra flags for the tool, space-separated."""
    import subprocess
    import sys

    from components.runtime import configure, fetch_val_split, work_dir, write_pointer
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    store = ObjectStore()
    work = work_dir("infer")
    data, val_list = fetch_val_split(store, splits.metadata, work)
    checkpoint = work / "checkpoint.pt"
    store.download_file(model.metadata["uri"], checkpoint)
    cmd = [
        sys.executable,
        "-m",
        "sam2.tools.vos_inference",
        "--sam2_cfg",
        model.metadata["model_config"],
        "--sam2_checkpoint",
        str(checkpoint),
        "--base_video_dir",
        str(data / "JPEGImages"),
        "--input_mask_dir",
        str(data / "Annotations"),
        "--video_list_file",
        str(val_list),
        "--output_mask_dir",
        str(work / "predictions"),
        *inference_args.split(),
    ]
    subprocess.run(cmd, check=True)
    out_uri = f"{model.metadata['run_uri']}/predictions"
    store.upload_folder(work / "predictions", out_uri)
    predictions.metadata.update({"uri": out_uri, "checkpoint": model.metadata["uri"]})
    write_pointer(predictions.path, dict(predictions.metadata))
    return out_uri
