"""Pipeline step 3: a deterministic (seeded) train/val split of the valid videos, stored with the data."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def split_dataset(
    validated: Input[Dataset],
    dataset_version: str,
    splits: Output[Dataset],
    val_fraction: float = 0.2,
    seed: int = 0,
    s3_endpoint_url: str = "",
) -> str:
    """Write train.txt / val.txt under <data set>/splits/seed<seed>-val<fraction>/; returns its URI.

    Reads only the annotations and the manifest (no frame). `splits` carries `train_bytes`, what the
    train videos take on disk (from the marker's sizes): the training job sizes its scratch with it.

    Args:
        validated: validate_dataset's output: the data set and its list of good videos.
        dataset_version: The data set version (a parameter, so a rerun on the same data is a cache hit).
        splits: The train/val lists with the data set (DataSplits metadata).
        val_fraction: Share of the good videos held out for validation.
        seed: Seed of the split; the same seed and videos give the same split.
        s3_endpoint_url: The S3 endpoint of object storage; empty for the environment's.

    Returns:
        The URI of the splits folder.
    """
    import json

    from components.runtime import configure, log_transfers, work_dir, write_pointer
    from sam2.contracts import DataSplits, ValidatedDataset
    from sam2.data.splitting import split_dataset as split_videos_on_disk
    from sam2.data.staging import selection_bytes
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    store = ObjectStore()
    checked = ValidatedDataset.from_metadata(validated.metadata)
    data_uri = checked.uri
    work = work_dir("split")
    marker = store.read_marker(data_uri)
    store.sync_to_local(data_uri, work / "data", include=["Annotations", "manifest.json"], marker=marker)
    valid_list = work / "valid_videos.txt"
    store.download_file(checked.valid_list_uri, valid_list)
    result = split_videos_on_disk(
        work / "data" / "Annotations",
        work / "splits",
        val_fraction=val_fraction,
        seed=seed,
        video_list=valid_list,
    )
    out_uri = f"{data_uri}/splits/seed{seed}-val{val_fraction:g}"
    store.upload_folder(work / "splits", out_uri)
    manifest_path = work / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    lists = DataSplits.of(
        checked,
        splits_uri=out_uri,
        train_list_uri=f"{out_uri}/{result.train_file.name}",
        val_list_uri=f"{out_uri}/{result.val_file.name}",
        num_train=len(result.train),
        num_val=len(result.val),
        train_bytes=selection_bytes(marker, manifest, result.train),
    )
    splits.metadata.update(lists.to_metadata())
    write_pointer(splits.path, dict(splits.metadata))
    log_transfers(store, "split")
    return out_uri
