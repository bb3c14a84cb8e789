"""A local MOSE_ROOT reaches a cluster run through the data bucket: uploaded once per content, resumable."""

import io
import tarfile
from pathlib import Path

import pytest
from kfp_api_server import KfpApiServer
from pipelines_cli import run_pipelines_cli

from pipelines.cluster_inputs import is_local_source, source_digest, stage_source


def _mose_like(root: Path, videos: int = 3) -> Path:
    for v in range(videos):
        for kind, suffix in (("JPEGImages", "jpg"), ("Annotations", "png")):
            folder = root / kind / f"video{v}"
            folder.mkdir(parents=True, exist_ok=True)
            for f in range(2):
                (folder / f"{f:05d}.{suffix}").write_bytes(f"{kind}-{v}-{f}".encode() * 100)
    return root


def test_only_local_paths_are_staged():
    assert is_local_source("/data/mose/train") and is_local_source("train.tar.gz")
    assert not is_local_source("s3://data/mose.tar") and not is_local_source("demo:")


def test_a_folder_is_uploaded_once_per_content(tmp_path, s3_store, s3_bucket):
    source = _mose_like(tmp_path / "train")
    first = stage_source(source, s3_bucket, "mose", store=s3_store)
    digest = source_digest(source)[0]
    assert first.uri == f"s3://{s3_bucket}/sources/mose/{digest[:16]}" and first.uploaded
    assert (first.num_files, first.files_sent, first.files_already_there) == (12, 12, 0)
    assert s3_store.is_published(first.uri)
    assert "JPEGImages/video0/00000.jpg" in s3_store.list_objects(first.uri)
    again = stage_source(source, s3_bucket, "mose", store=s3_store)
    assert again.uri == first.uri and not again.uploaded and again.files_sent == 0
    # new content goes to a new prefix; the old upload is left as it was
    (source / "Annotations" / "video0" / "00000.png").write_bytes(b"changed")
    changed = stage_source(source, s3_bucket, "mose", store=s3_store)
    assert changed.uri != first.uri and changed.uploaded
    assert s3_store.read_bytes(f"{first.uri}/Annotations/video0/00000.png") != b"changed"


def test_an_interrupted_upload_resumes(tmp_path, s3_store, s3_bucket):
    source = _mose_like(tmp_path / "train")
    base = f"s3://{s3_bucket}/sources/mose/{source_digest(source)[0][:16]}"
    # what an interrupted run left: some files stored (with their checksums), no completion marker
    done = sorted((source / "JPEGImages").rglob("*.jpg"))
    for path in done:
        s3_store.upload_file(path, f"{base}/{path.relative_to(source).as_posix()}")
    assert not s3_store.is_published(base)
    staged = stage_source(source, s3_bucket, "mose", store=s3_store)
    assert staged.uploaded and (staged.files_already_there, staged.files_sent) == (len(done), 12 - len(done))
    assert s3_store.is_published(base)


def test_an_archive_is_one_object_under_its_content_hash(tmp_path, s3_store, s3_bucket):
    archive = tmp_path / "train.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"frame" * 1000
        info = tarfile.TarInfo("train/JPEGImages/v/00000.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    staged = stage_source(archive, s3_bucket, "mose", store=s3_store)
    assert staged.uri.endswith("/train.tar.gz") and staged.uploaded
    assert s3_store.read_bytes(staged.uri) == archive.read_bytes()
    assert not stage_source(archive, s3_bucket, "mose", store=s3_store).uploaded


def test_cluster_run_with_a_local_mose_root_gets_its_s3_uri(tmp_path, s3_env, s3_bucket):
    source = _mose_like(tmp_path / "MOSE" / "train")
    args = (
        "submit",
        "--dataset",
        "mose",
        "--set",
        f"data_bucket={s3_bucket}",
        "--set",
        "init_checkpoint_uri=s3://m/b.pt",
    )
    with KfpApiServer(multi_user=False) as server:
        first = run_pipelines_cli(tmp_path, *args, KFP_HOST=server.url, MOSE_ROOT=str(tmp_path / "MOSE"))
        second = run_pipelines_cli(tmp_path, *args, KFP_HOST=server.url, MOSE_ROOT=str(tmp_path / "MOSE"))
        assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
        expected = f"s3://{s3_bucket}/sources/mose/{source_digest(tmp_path / 'MOSE')[0][:16]}"
        assert f"uploaded to {expected}" in first.stdout
        assert f"already in the data bucket, same content, at {expected}" in second.stdout
        runs = [
            c.body["runtime_config"]["parameters"]
            for c in server.state.api_calls("POST")
            if c.path.endswith("/runs")
        ]
        assert [r["source_uri"] for r in runs] == [expected, expected]
    assert source.is_dir()


def test_cluster_run_with_a_local_mose_root_and_no_s3_settings_says_what_to_set(tmp_path):
    _mose_like(tmp_path / "train")
    env = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT_URL")}
    with KfpApiServer(multi_user=False) as server:
        proc = run_pipelines_cli(
            tmp_path,
            "submit",
            "--dataset",
            "mose",
            "--set",
            "allow_random_init=true",
            KFP_HOST=server.url,
            MOSE_ROOT=str(tmp_path / "train"),
            **env,
        )
        assert not server.state.api_calls("POST")  # nothing started
    assert proc.returncode == 2, proc.stderr
    assert "S3_ENDPOINT_URL" in proc.stderr and "AWS_ACCESS_KEY_ID" in proc.stderr and "s3://" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_rejected_login_stops_before_the_data_set_is_uploaded(tmp_path, s3_env, s3_store, s3_bucket):
    _mose_like(tmp_path / "train")
    with KfpApiServer(token="right", multi_user=False) as server:
        proc = run_pipelines_cli(
            tmp_path,
            "submit",
            "--dataset",
            "mose",
            "--set",
            "allow_random_init=true",
            "--set",
            f"data_bucket={s3_bucket}",
            KFP_HOST=server.url,
            KFP_TOKEN="wrong",
            MOSE_ROOT=str(tmp_path / "train"),
        )
    assert proc.returncode == 1 and "KFP_TOKEN" in proc.stderr
    assert s3_store.list_objects(f"s3://{s3_bucket}/sources/") == {}


@pytest.mark.parametrize("name", ["train", "train.tar.gz"])
def test_digest_is_the_content_not_the_path(tmp_path, name):
    a, b = tmp_path / "a", tmp_path / "b"
    if name == "train":
        _mose_like(a / name)
        _mose_like(b / name)
    else:
        for root in (a, b):
            root.mkdir()
            (root / name).write_bytes(b"same bytes")
    assert source_digest(a / name) == source_digest(b / name)


def test_a_schedule_with_a_local_mose_root_is_refused_saying_what_to_pass(tmp_path):
    """A local folder would be uploaded once and every scheduled run would retrain on that same data."""
    _mose_like(tmp_path / "train")
    with KfpApiServer(multi_user=False) as server:
        proc = run_pipelines_cli(
            tmp_path,
            "schedule",
            "--dataset",
            "mose",
            "--cron",
            "0 0 3 * * 0",
            "--set",
            "allow_random_init=true",
            KFP_HOST=server.url,
            MOSE_ROOT=str(tmp_path / "train"),
        )
        assert not server.state.api_calls()  # refused before connecting or uploading
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "reads its source at every run" in proc.stderr and str(tmp_path / "train") in proc.stderr
    assert "MOSE_ROOT=s3://<bucket>/<prefix>/" in proc.stderr and "source_uri=s3://" in proc.stderr


def test_a_schedule_keeps_the_s3_prefix_new_data_lands_in(tmp_path):
    with KfpApiServer(multi_user=False) as server:
        proc = run_pipelines_cli(
            tmp_path,
            "schedule",
            "--dataset",
            "mose",
            "--cron",
            "0 0 3 * * 0",
            "--set",
            "allow_random_init=true",
            KFP_HOST=server.url,
            MOSE_ROOT="s3://team-data/mose/train/",
        )
        assert proc.returncode == 0, proc.stderr
        (recurring,) = server.state.recurring_runs.values()
    assert recurring["runtime_config"]["parameters"]["source_uri"] == "s3://team-data/mose/train/"


def test_each_scheduled_run_extracts_what_the_prefix_holds_then(tmp_path, s3_env, s3_store, s3_bucket):
    """What the recurring run's extract step does with that prefix: new videos landing there give a new
    data set version (the manifest hash), so the next scheduled run trains on them."""
    from sam2.data.demo import generate_demo_dataset
    from sam2.data.frame_extraction import extract_dataset

    data = generate_demo_dataset(tmp_path / "data", num_videos=3, num_frames=4)
    prefix = f"s3://{s3_bucket}/mose/train/"
    files = {p.relative_to(data).as_posix(): p for p in data.rglob("*") if p.is_file()}
    files = {rel: p for rel, p in files.items() if rel.startswith(("JPEGImages/", "Annotations/"))}
    for rel in sorted(rel for rel in files if "demo_002" not in rel):
        s3_store.upload_file(files[rel], prefix + rel)
    first = extract_dataset(prefix, tmp_path / "out1", work_dir=tmp_path / "work1")
    for rel in sorted(rel for rel in files if "demo_002" in rel):  # new data lands in the prefix
        s3_store.upload_file(files[rel], prefix + rel)
    later = extract_dataset(prefix, tmp_path / "out2", work_dir=tmp_path / "work2")
    assert (first.num_videos, later.num_videos) == (2, 3) and first.version != later.version
