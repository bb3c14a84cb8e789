"""Pipeline step 2: check every video; bad ones are reported by name and excluded (or the step fails)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def validate_dataset(
    frames: Input[Dataset],
    dataset_version: str,
    validated: Output[Dataset],
    report: Output[Markdown],
    num_frames: int = 8,
    on_bad: str = "exclude",
    s3_endpoint_url: str = "",
) -> int:
    """Validate the published data set; publish validation_report.json and valid_videos.txt next to it.

    Returns the number of good videos. Fails with the per-video summary when `on_bad` is "fail" and a
    video is bad, or when no good video is left.
    """
    from components.runtime import configure, work_dir, write_pointer
    from sam2.data import validation
    from sam2.storage import ObjectStore

    configure(s3_endpoint_url)
    store = ObjectStore()
    data_uri = frames.metadata["uri"]
    work = work_dir("validate")
    store.sync_to_local(data_uri, work / "data")
    result = validation.validate_dataset(work / "data", num_frames=num_frames)
    out_dir = work / "validation"
    valid_list = validation.write_report(result, out_dir, on_bad=on_bad)
    out_uri = f"{data_uri}/validation/frames{num_frames}-{on_bad}"
    store.upload_folder(out_dir, out_uri)

    validated.metadata.update(
        dict(frames.metadata)
        | {
            "validation_uri": out_uri,
            "valid_list_uri": f"{out_uri}/{valid_list.name}",
            "num_good": len(result.good),
            "num_bad": len(result.bad),
            "dataset_version": dataset_version,
        }
    )
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
    return len(result.good)
