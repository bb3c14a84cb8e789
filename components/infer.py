"""Pipeline step 5: semi-supervised VOS on the val videos from their first-frame masks -> palette PNGs.

One task scores every model in its list (the new checkpoint, the champion, the baseline) on the same
videos with the same settings, so the data is fetched once per task.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def infer_videos(
    model: Input[Model],
    splits: Input[Dataset],
    references: Input[Dataset],
    predictions: Output[Dataset],
    inference_args: str = "",
    s3_endpoint_url: str = "",
) -> str:
    """Run `python -m sam2.tools.vos_inference` (upstream flags) on the val split for the new model and
    for each reference model (see resolve_reference_models); publish the masks at
    <run>/predictions/<new|champion|baseline>/ and return <run>/predictions. `inference_args`: extra flags
    for the tool, space-separated, the same for every model. A reference model whose inference fails is
    reported as skipped (with the tool's exit status); the new model's failure fails the step."""
    import logging
    import subprocess
    import sys

    from components.runtime import configure, fetch_val_split, work_dir, write_pointer
    from sam2.model_comparison import NEW, ComparedModel
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    log = logging.getLogger("infer_videos")
    store = ObjectStore()
    work = work_dir("infer")
    data, val_list = fetch_val_split(store, splits.metadata, work)
    new = ComparedModel(NEW, model.metadata["uri"], model.metadata["model_config"], "new")
    todo = [new] + [ComparedModel.from_dict(m) for m in references.metadata.get("models", [])]
    skipped = dict(references.metadata.get("skipped", {}))
    out_uri = f"{model.metadata['run_uri']}/predictions"
    scored = []
    for entry in todo:
        checkpoint = work / entry.key / "checkpoint.pt"
        store.download_file(entry.checkpoint_uri, checkpoint)
        out_dir = work / "predictions" / entry.key
        cmd = [
            sys.executable,
            "-m",
            "sam2.tools.vos_inference",
            "--sam2_cfg",
            entry.model_config,
            "--sam2_checkpoint",
            str(checkpoint),
            "--base_video_dir",
            str(data / "JPEGImages"),
            "--input_mask_dir",
            str(data / "Annotations"),
            "--video_list_file",
            str(val_list),
            "--output_mask_dir",
            str(out_dir),
            *inference_args.split(),
        ]
        log.info("inference of the %s model (%s)", entry.label, entry.checkpoint_uri)
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            if entry.key == NEW:
                raise RuntimeError(
                    f"inference of the new model {entry.checkpoint_uri} failed ({proc.returncode})"
                )
            skipped[entry.key] = (
                f"inference of {entry.checkpoint_uri} failed with exit status {proc.returncode}"
            )
            log.error("%s", skipped[entry.key])
            continue
        checkpoint.unlink()
        store.upload_folder(out_dir, f"{out_uri}/{entry.key}")
        scored.append({**entry.to_dict(), "uri": f"{out_uri}/{entry.key}"})
    predictions.metadata.update(
        {"uri": out_uri, "checkpoint": model.metadata["uri"], "models": scored, "skipped": skipped}
    )
    write_pointer(predictions.path, dict(predictions.metadata))
    return out_uri
