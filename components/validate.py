"""Pipeline step 2: check every video; bad ones are reported by name and excluded (or the step fails)."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def validate_dataset(
    dataset_name: str,
    data_bucket: str,
    dataset_version: str,
    validated: Output[Dataset],
    report: Output[Markdown],
    num_frames: int = 8,
    on_bad: str = "exclude",
    s3_endpoint_url: str = "",
) -> int:
    """Validate the published data set; publish validation_report.json and valid_videos.txt next to it.

    The data set is named by strings (where extract_frames publishes version `dataset_version`), not by
    extract's output artifact: KFP's cache key holds an input artifact's id, new every run, but a
    parameter's value, so keyed on the content-hashed version a rerun on the same data is a cache hit.

    Args:
        dataset_name: The data set's name, as extract_frames published it.
        data_bucket: The S3 bucket the data set is published in.
        dataset_version: The version extract_frames returned.
        validated: The data set with its validation report and list of good videos (ValidatedDataset).
        report: A Markdown summary of the bad videos and why.
        num_frames: The training sampler's clip length, which every video must reach.
        on_bad: What a bad video does: "exclude" it (reported by name) or "fail" the step.
        s3_endpoint_url: The S3 endpoint of object storage; empty for the environment's.

    Returns:
        The number of good videos. Fails with the per-video summary when `on_bad` is "fail" and a video is
        bad, or when no good video is left.
    """
    from components.runtime import configure, log_transfers, work_dir, write_pointer
    from sam2.contracts import ValidatedDataset
    from sam2.data import validation
    from sam2.data.staging import dataset_dir
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    store = ObjectStore()
    data_uri = f"s3://{data_bucket}/datasets/{dataset_name}/{dataset_version}"  # as extract_frames publishes
    work = work_dir("validate")
    # Every frame is read (decoded) once, so the whole set is fetched once; on a shared volume the copy
    # there is checked and completed instead.
    data = dataset_dir(data_uri, work)
    store.sync_to_local(data_uri, data)
    result = validation.validate_dataset(data, num_frames=num_frames)
    out_dir = work / "validation"
    valid_list = validation.write_report(result, out_dir, on_bad=on_bad)
    out_uri = f"{data_uri}/validation/frames{num_frames}-{on_bad}"
    store.upload_folder(out_dir, out_uri)

    checked = ValidatedDataset(
        uri=data_uri,
        dataset_name=dataset_name,
        version=dataset_version,
        num_videos=len(result.good) + len(result.bad),
        validation_uri=out_uri,
        valid_list_uri=f"{out_uri}/{valid_list.name}",
        num_good=len(result.good),
        num_bad=len(result.bad),
    )
    validated.metadata.update(checked.to_metadata())
    write_pointer(validated.path, dict(validated.metadata))
    lines = [
        f"# Validation of `{data_uri}`",
        "",
        f"{len(result.good)} good, {len(result.bad)} bad videos",
        "",
    ]
    lines += [f"- **{video}**: {'; '.join(problems)}" for video, problems in sorted(result.bad.items())]
    with open(report.path, "w") as handle:
        handle.write("\n".join(lines) + "\n\n```\n" + result.summary() + "\n```\n")
    log_transfers(store, "validate")
    return len(result.good)
