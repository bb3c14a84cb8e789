"""Extract from an `s3://` archive holds no more on disk than it must: the downloaded archive is gone once it
is unpacked (extraction reads only the unpacked tree), and a rerun in the same work folder after the unpack
does not download it again. Against the SeaweedFS server of tests/s3_server.py."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from test_data_extraction import write_davis_tree

from sam2.data.frame_extraction import extract_dataset


def _upload_archive(tmp_path: Path, s3_store, bucket: str) -> tuple[str, int]:
    tree = tmp_path / "DAVIS"
    write_davis_tree(tree, {"bear": 5, "car": 4})
    archive = tmp_path / "davis.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(tree, arcname="DAVIS")
    uri = f"s3://{bucket}/raw/davis.tar.gz"
    s3_store.upload_file(archive, uri)
    return uri, archive.stat().st_size


def test_the_downloaded_archive_is_freed_once_unpacked_and_not_fetched_again(
    tmp_path, s3_store, s3_bucket, s3_env
):
    uri, _ = _upload_archive(tmp_path, s3_store, s3_bucket)
    work = tmp_path / "work"
    first = extract_dataset(uri, tmp_path / "out", workers=2, work_dir=work)
    assert first.num_videos == 2 and first.num_frames == 9
    assert not (work / "input" / "davis.tar.gz").exists(), "the archive stayed on disk beside its contents"
    assert (work / "unpacked" / "davis").is_dir()

    # A rerun (a retried step on the same volume) unpacks nothing and downloads nothing: the archive is gone
    # from S3 now, so a download would fail.
    assert s3_store.delete_prefix(uri.rsplit("/", 1)[0]) == 1
    again = extract_dataset(uri, tmp_path / "out2", workers=2, work_dir=work)
    assert again.version == first.version


def test_a_local_archive_is_left_where_it_is(tmp_path):
    tree = tmp_path / "DAVIS"
    write_davis_tree(tree, {"bear": 3})
    archive = tmp_path / "davis.tar"
    with tarfile.open(archive, "w") as handle:
        handle.add(tree, arcname="DAVIS")
    extract_dataset(archive, tmp_path / "out", workers=1, work_dir=tmp_path / "work")
    assert archive.is_file(), "the user's own file must not be deleted"


def test_staging_refuses_before_downloading_when_the_disk_lacks_room(
    s3_store, s3_bucket, tmp_path, monkeypatch
):
    """The sizes come from the data set's marker; a step whose scratch cannot hold them fails at once naming
    the settings that give it room, instead of filling the pod's disk until the kubelet evicts it. A full
    file system cannot be made here, so the free space the check reads is the one value set."""
    import shutil
    from collections import namedtuple

    from test_data_movement import TRAIN, publish_dataset

    import sam2.data.staging as staging

    uri = publish_dataset(s3_store, s3_bucket, tmp_path / "src")
    need = sum(
        info["size"]
        for rel, info in s3_store.read_marker(uri)["files"].items()
        if rel.split("/")[0] in ("JPEGImages", "Annotations") and rel.split("/")[1] in TRAIN
    )
    usage = namedtuple("usage", "total used free")
    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(staging.shutil, "disk_usage", lambda path: usage(10**12, 0, need))  # < need + 10%
    dest = tmp_path / "scratch"
    with pytest.raises(
        staging.StagingError, match=r"needs [0-9.]+ [KMG]iB.*SAM2_STEP_SCRATCH.*SAM2_SHARED_DATA_PVC"
    ):
        staging.stage_videos(s3_store, uri, dest, TRAIN)
    assert not (dest / "JPEGImages").exists(), "nothing downloaded"
    monkeypatch.setattr(staging.shutil, "disk_usage", real_disk_usage)
    assert staging.stage_videos(s3_store, uri, dest, TRAIN).fetched == 2 * len(TRAIN)
