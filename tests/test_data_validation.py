"""Validation names each bad video and why; splitting is deterministic; the demo set is well formed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2.data.demo import generate_demo_dataset
from sam2.data.layout import ANNOTATIONS_DIR, IMAGES_DIR, MANIFEST_NAME
from sam2.data.splitting import split_dataset, split_videos
from sam2.data.validation import DatasetValidationError, validate_dataset, write_report

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "demo")


@pytest.fixture
def demo_copy(demo_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo_root, tmp_path / "demo"))


def test_demo_is_deterministic_and_has_moving_occluding_returning_objects(
    demo_root: Path, tmp_path: Path
) -> None:
    manifest = json.loads((demo_root / MANIFEST_NAME).read_text())
    assert (
        generate_demo_dataset(tmp_path / "again")
        and json.loads((tmp_path / "again" / MANIFEST_NAME).read_text()) == manifest
    )
    assert manifest["num_videos"] == 6 and manifest["num_frames"] == 6 * 14
    counts = {len(r["object_ids"]) for r in manifest["videos"].values()}
    assert counts == {1, 2, 3}
    left_and_returned = occluded = 0
    for video, record in manifest["videos"].items():
        masks = [
            np.asarray(Image.open(p)) for p in sorted((demo_root / ANNOTATIONS_DIR / video).glob("*.png"))
        ]
        assert Image.open(demo_root / ANNOTATIONS_DIR / video / "00000.png").mode == "P"
        assert len(masks) == record["num_frames"] and masks[0].shape == (record["height"], record["width"])
        for obj in record["object_ids"]:
            visible = [bool((m == obj).any()) for m in masks]
            areas = [int((m == obj).sum()) for m in masks]
            assert visible[0], f"{video}: object {obj} must be in the first frame"
            assert len({np.flatnonzero(m == obj).mean() for m in masks if (m == obj).any()}) > 1  # it moves
            gone = [i for i, v in enumerate(visible) if not v]
            if gone and visible[-1]:
                left_and_returned += 1
            if max(areas) > 0 and min(a for a in areas if a) < 0.8 * max(areas):
                occluded += 1
    assert left_and_returned >= 2 and occluded >= 2


def test_demo_validates_clean_and_splits(demo_root: Path, tmp_path: Path) -> None:
    report = validate_dataset(demo_root, num_frames=8)
    assert report.ok and len(report.good) == 6
    valid = write_report(report, tmp_path)
    assert valid.read_text().split() == sorted(report.good)
    assert json.loads((tmp_path / "validation_report.json").read_text())["num_bad"] == 0


def _palette_mask(values: np.ndarray) -> Image.Image:
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0, 0, 0, 200] + [0] * 756)
    return image


def test_bad_videos_are_named_with_reasons(demo_copy: Path, tmp_path: Path) -> None:
    ann = demo_copy / ANNOTATIONS_DIR
    # wrong mask size
    Image.open(ann / "demo_000" / "00003.png").resize((50, 40)).save(ann / "demo_000" / "00003.png")
    # RGB mask
    Image.open(ann / "demo_001" / "00002.png").convert("RGB").save(ann / "demo_001" / "00002.png")
    # missing annotations
    shutil.rmtree(ann / "demo_002")
    # empty first frame
    first = np.asarray(Image.open(ann / "demo_003" / "00000.png"))
    _palette_mask(np.zeros_like(first)).save(ann / "demo_003" / "00000.png")
    # a frame that does not decode
    (demo_copy / IMAGES_DIR / "demo_004" / "00005.jpg").write_bytes(b"\xff\xd8 broken")
    report = validate_dataset(demo_copy, num_frames=8)
    assert report.good == ["demo_005"]
    text = report.summary()
    assert "demo_000: mask 00003.png is 50x40 but the frames are 160x128" in text
    assert "demo_001: mask 00002.png has mode RGB" in text
    assert "demo_002: missing annotations" in text
    assert "demo_003: the first frame's mask (00000.png) holds no object" in text
    assert "demo_004: frame 00005.jpg does not decode" in text
    assert "demo_004: frames differ from manifest.json" in text

    valid = write_report(report, tmp_path, on_bad="exclude")
    assert valid.read_text() == "demo_005\n"
    with pytest.raises(DatasetValidationError, match="demo_002: missing annotations"):
        write_report(report, tmp_path / "strict", on_bad="fail")
    assert not (tmp_path / "strict" / "valid_videos.txt").exists()
    assert json.loads((tmp_path / "strict" / "validation_report.json").read_text())["num_bad"] == 5


def test_short_clips_and_changed_object_ids(demo_copy: Path) -> None:
    report = validate_dataset(demo_copy, num_frames=20)
    assert all("needs num_frames=20" in " ".join(p) for p in report.bad.values()) and len(report.bad) == 6
    ann = demo_copy / ANNOTATIONS_DIR / "demo_000"
    values = np.asarray(Image.open(ann / "00004.png")).copy()
    values[:4, :4] = 7  # an object the manifest does not know
    _palette_mask(values).save(ann / "00004.png")
    report = validate_dataset(demo_copy, num_frames=8)
    assert "object ids [1, 7] in the masks differ from manifest.json's [1]" in " ".join(
        report.bad["demo_000"]
    )
    assert "objects [7] appear only after the first frame" in report.warnings["demo_000"][0]


def test_binary_masks_are_accepted(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / IMAGES_DIR / "v").mkdir(parents=True)
    (root / ANNOTATIONS_DIR / "v").mkdir(parents=True)
    for index in range(3):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / IMAGES_DIR / "v" / f"{index:05d}.jpg")
        mask = np.zeros((20, 30), np.uint8)
        mask[2:8, 2:8] = 255
        Image.fromarray(mask, mode="L").save(root / ANNOTATIONS_DIR / "v" / f"{index:05d}.png")
    assert validate_dataset(root, num_frames=3).ok
    grey = np.full((20, 30), 17, np.uint8)
    Image.fromarray(grey, mode="L").save(root / ANNOTATIONS_DIR / "v" / "00001.png")
    assert "mode L with values other than 0/1/255" in validate_dataset(root, num_frames=3).bad["v"][0]


def test_split_is_deterministic_disjoint_and_stratified() -> None:
    videos = [f"v{i:02d}" for i in range(40)]
    strata = {v: 1 + i % 4 for i, v in enumerate(videos)}
    train, val = split_videos(videos, 0.25, seed=3, strata=strata)
    assert (train, val) == split_videos(list(reversed(videos)), 0.25, seed=3, strata=strata)
    assert not set(train) & set(val) and sorted(train + val) == videos and len(val) == 10
    assert sorted(sum(strata[v] == k for v in val) for k in range(1, 5)) == [2, 2, 3, 3]
    assert split_videos(videos, 0.25, seed=4)[1] != split_videos(videos, 0.25, seed=3)[1]
    assert [len(part) for part in split_videos(["a", "b"], 0.01)] == [1, 1]
    assert split_videos(["a", "b", "c"], 0.0) == (["a", "b", "c"], [])


def test_split_cli_writes_file_lists(demo_root: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "sam2.tools.split_dataset", "--gt_root", str(demo_root / ANNOTATIONS_DIR)]
    cmd += ["--output_dir", str(tmp_path), "--val_fraction", "0.34", "--seed", "1", "--stratify"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "4 train / 2 val videos" in done.stdout
    train = (tmp_path / "train.txt").read_text().split()
    val = (tmp_path / "val.txt").read_text().split()
    assert sorted(train + val) == [f"demo_{i:03d}" for i in range(6)] and not set(train) & set(val)
    again = split_dataset(demo_root / ANNOTATIONS_DIR, tmp_path / "again", 0.34, 1, stratify=True)
    assert again.val == val


def _sav_video(root: Path, video: str, num_frames: int = 4, size=(24, 32), num_objects: int = 2) -> Path:
    """JPEG frames and a `<video>_manual.json` whose masklets are COCO RLEs of `size` (H, W)."""
    from pycocotools import mask as mask_utils

    height, width = size
    (root / IMAGES_DIR / video).mkdir(parents=True)
    (root / ANNOTATIONS_DIR).mkdir(parents=True, exist_ok=True)
    for index in range(num_frames):
        Image.fromarray(np.full((height, width, 3), 40 * index, np.uint8)).save(
            root / IMAGES_DIR / video / f"{index:05d}.jpg"
        )
    masklet = []
    for index in range(num_frames):
        rles = []
        for obj in range(num_objects):
            mask = np.zeros((height, width), np.uint8, order="F")
            mask[2 + obj * 8 : 8 + obj * 8, 3 + index : 9 + index] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rles.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()})
        masklet.append(rles)
    path = root / ANNOTATIONS_DIR / f"{video}_manual.json"
    path.write_text(json.dumps({"masklet": masklet, "masklet_id": list(range(num_objects))}))
    return path


def test_sav_json_annotations_are_checked(tmp_path: Path) -> None:
    root = tmp_path / "sav"
    _sav_video(root, "good")
    unreadable = _sav_video(root, "unreadable")
    unreadable.write_text("{not json")
    wrong_count = _sav_video(root, "wrong_count")
    data = json.loads(wrong_count.read_text())
    data["masklet"][1] = data["masklet"][1][:1]
    wrong_count.write_text(json.dumps(data))
    wrong_size = _sav_video(root, "wrong_size")
    data = json.loads(wrong_size.read_text())
    for rle in data["masklet"][0]:
        rle["size"] = [12, 16]
    wrong_size.write_text(json.dumps(data))
    empty_first = _sav_video(root, "empty_first")
    data = json.loads(empty_first.read_text())
    from pycocotools import mask as mask_utils

    blank = mask_utils.encode(np.zeros((24, 32), np.uint8, order="F"))
    data["masklet"][0] = [{"size": [24, 32], "counts": blank["counts"].decode()}] * 2
    empty_first.write_text(json.dumps(data))
    no_frames = _sav_video(root, "no_masklets")
    no_frames.write_text(json.dumps({"masklet": [], "masklet_id": []}))

    report = validate_dataset(root, num_frames=3)
    assert report.good == ["good"]
    text = report.summary()
    assert "unreadable: unreadable_manual.json is not readable JSON" in text
    assert "wrong_count: wrong_count_manual.json: annotated frame 1 has 1 objects, expected 2" in text
    assert (
        "wrong_size: wrong_size_manual.json: annotated frame 0 has RLE size [12, 16], frames are 32x24"
        in text
    )
    assert "empty_first: empty_first_manual.json: the first annotated frame holds no object" in text
    assert "no_masklets: no_masklets_manual.json has no 'masklet' frames" in text


def test_validate_cli_excludes_or_fails_and_writes_reports(demo_copy: Path, tmp_path: Path) -> None:
    shutil.rmtree(demo_copy / ANNOTATIONS_DIR / "demo_002")
    cmd = [sys.executable, "-m", "sam2.tools.validate_dataset", "--root", str(demo_copy), "--num_frames", "8"]
    excluded = subprocess.run(
        [*cmd, "--report_dir", str(tmp_path / "ex")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert excluded.returncode == 0, excluded.stderr
    assert "demo_002: missing annotations" in excluded.stdout
    assert "5 valid videos listed in" in excluded.stdout
    listed = (tmp_path / "ex" / "valid_videos.txt").read_text().split()
    assert len(listed) == 5 and "demo_002" not in listed
    failed = subprocess.run(
        [*cmd, "--on_bad", "fail", "--report_dir", str(tmp_path / "fail")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr and "demo_002: missing annotations" in failed.stderr
    assert len([line for line in failed.stderr.splitlines() if line.startswith("error: ")]) == 1
    assert json.loads((tmp_path / "fail" / "validation_report.json").read_text())["num_bad"] == 1
    assert not (tmp_path / "fail" / "valid_videos.txt").exists()


def test_a_mask_missing_mid_video_makes_it_bad_as_training_would(demo_copy: Path) -> None:
    """The training data set reads the mask of every frame a clip draws: validation applies the same rule
    (sam2.data.rules), so the video is named here instead of crashing training mid-epoch."""
    from sam2.training.dataset.errors import DatasetError
    from sam2.training.dataset.vos_segment_loader import PalettisedPNGSegmentLoader

    (demo_copy / ANNOTATIONS_DIR / "demo_003" / "00007.png").unlink()
    report = validate_dataset(demo_copy, num_frames=8)
    assert "demo_003" in report.bad and "demo_003" not in report.good
    assert any("1 frame(s) have no mask (00007.png)" in p for p in report.bad["demo_003"]), report.bad
    loader = PalettisedPNGSegmentLoader(str(demo_copy / ANNOTATIONS_DIR / "demo_003"))
    with pytest.raises(DatasetError, match=r"1 frame\(s\) have no mask \(00007\.png\)"):
        loader.load(7)


def _run_tool(module: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_validate_without_report_dir_leaves_the_data_folder_alone_and_split_reads_its_list(
    demo_copy: Path, tmp_path: Path
) -> None:
    shutil.rmtree(demo_copy / ANNOTATIONS_DIR / "demo_002")
    (demo_copy / IMAGES_DIR / "demo_002").rename(demo_copy / IMAGES_DIR / "demo_002_bad")
    before = sorted(str(p.relative_to(demo_copy)) for p in demo_copy.rglob("*"))
    done = _run_tool("sam2.tools.validate_dataset", "--root", str(demo_copy), "--num_frames", "8")
    assert done.returncode == 0, done.stderr
    assert sorted(str(p.relative_to(demo_copy)) for p in demo_copy.rglob("*")) == before
    report_dir = demo_copy.parent / "demo_validation"
    assert "demo_002_bad" not in (report_dir / "valid_videos.txt").read_text().split()
    # The README's split line, without --video_list, splits only the videos validation found good.
    split = _run_tool(
        "sam2.tools.split_dataset",
        "--gt_root",
        str(demo_copy / ANNOTATIONS_DIR),
        "--output_dir",
        str(tmp_path / "s"),
    )
    assert split.returncode == 0, split.stderr
    assert "valid_videos.txt" in split.stderr
    listed = (tmp_path / "s" / "train.txt").read_text().split() + (
        tmp_path / "s" / "val.txt"
    ).read_text().split()
    assert sorted(listed) == sorted((report_dir / "valid_videos.txt").read_text().split())
    assert len(listed) == 5  # demo_002 (in the manifest, its frames gone) and demo_002_bad are out
    assert "demo_002: listed in manifest.json but JPEGImages/demo_002 is missing" in done.stdout


def test_split_with_a_video_list_that_is_no_file_is_one_line(demo_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "valid_videos.txt"
    proc = _run_tool(
        "sam2.tools.split_dataset",
        "--gt_root",
        str(demo_root / ANNOTATIONS_DIR),
        "--output_dir",
        str(tmp_path / "s"),
        "--video_list",
        str(missing),
    )
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "--video_list" in line and str(missing) in line
    assert not (tmp_path / "s").exists()


def test_validate_reads_a_published_s3_data_set_by_its_uri(
    demo_root: Path, tmp_path: Path, s3_store, s3_bucket: str, s3_env
) -> None:
    """`--root s3://bucket/key` is fetched as it is (it was mangled to `s3:/bucket/key` by Path)."""
    import os

    uri = f"s3://{s3_bucket}/datasets/demo/v1"
    s3_store.upload_folder(demo_root, uri)
    env = {**os.environ, **s3_env}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam2.tools.validate_dataset",
            "--root",
            uri,
            "--work_dir",
            str(tmp_path / "w"),
            "--report_dir",
            str(tmp_path / "r"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "6 good, 0 bad" in proc.stdout
    assert len((tmp_path / "r" / "valid_videos.txt").read_text().split()) == 6
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam2.tools.validate_dataset",
            "--root",
            f"s3://{s3_bucket}/datasets/none",
            "--work_dir",
            str(tmp_path / "w2"),
            "--report_dir",
            str(tmp_path / "r2"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert missing.returncode == 2
    assert f"s3://{s3_bucket}/datasets/none" in _one_error_line(missing)
