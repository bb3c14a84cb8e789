"""Pipeline step 1: turn the source (archive, folder, videos, `s3://`, or `demo:`) into a versioned data set."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def extract_frames(
    source_uri: str,
    dataset_name: str,
    data_bucket: str,
    frames: Output[Dataset],
    fps: float = 0.0,
    demo_videos: int = 6,
    demo_frames: int = 14,
    s3_endpoint_url: str = "",
) -> str:
    """Extract frames and masks, publish them at s3://<data_bucket>/datasets/<name>/<version>/.

    Args:
        source_uri: The source: an `s3://` archive or folder (DAVIS/MOSE layout, SA-V, plain videos), a
            local path, or "demo:" to generate the embedded demo data set (no download).
        dataset_name: The data set's name, part of its S3 prefix.
        data_bucket: The S3 bucket the data set is published in.
        frames: The published data set (PublishedDataset metadata: uri, version, counts).
        fps: Frame rate to extract videos at; 0 keeps every frame.
        demo_videos: Number of videos of the demo data set ("demo:" only).
        demo_frames: Frames per video of the demo data set ("demo:" only).
        s3_endpoint_url: The S3 endpoint of object storage; empty for the environment's.

    Returns:
        The data set version: a hash of the manifest, so the same input always gives the same version and
        the same S3 prefix, which is what downstream caching keys on.
    """
    import logging

    from components.runtime import configure, log_transfers, work_dir, write_pointer
    from sam2.contracts import PublishedDataset
    from sam2.data.demo import generate_demo_dataset
    from sam2.data.frame_extraction import extract_dataset
    from sam2.data.layout import STATE_DIR
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    work = work_dir("extract")
    source = source_uri
    if source_uri.strip() == "demo:":
        source = str(
            generate_demo_dataset(work / "demo-source", num_videos=demo_videos, num_frames=demo_frames)
        )
    result = extract_dataset(source, work / "dataset", fps=fps or None, work_dir=work / "tmp")
    uri = f"s3://{data_bucket}/datasets/{dataset_name}/{result.version}"
    store = ObjectStore()
    if store.is_published(uri):
        logging.getLogger("extract_frames").info("%s is published already (same version); reusing it", uri)
    else:
        store.upload_folder(work / "dataset", uri, exclude=(STATE_DIR,))  # extraction state stays here
    published = PublishedDataset(
        uri=uri,
        dataset_name=dataset_name,
        version=result.version,
        num_videos=result.num_videos,
        num_frames=result.num_frames,
    )
    frames.metadata.update(published.to_metadata())
    write_pointer(frames.path, dict(frames.metadata))
    log_transfers(store, "extract_frames")
    return result.version
