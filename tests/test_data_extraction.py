"""Frame extraction on real encoded videos, DAVIS-style folders, archives and SA-V input."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from sam2.data.frame_extraction import extract_dataset
from sam2.data.layout import ANNOTATIONS_DIR, IMAGES_DIR, MANIFEST_NAME, STATE_DIR, DataPrepError
from sam2.data.manifest import manifest_from_disk

REPO = Path(__file__).resolve().parents[1]


def encode_video(
    path: Path,
    images: list[np.ndarray],
    codec: str = "libx264",
    rate: int = 10,
    pix_fmt: str = "yuv420p",
    colorspace: int | None = None,
    **options,
) -> Path:
    """Encode RGB ``images`` with PyAV in ``pix_fmt``, with an optional colour-space tag; returns ``path``."""
    height, width = images[0].shape[:2]
    container = av.open(str(path), "w", options=options)
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    if colorspace is not None:
        stream.codec_context.colorspace = colorspace
    for image in images:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def make_video(
    path: Path, num_frames: int, codec: str = "libx264", size=(96, 64), rate: int = 10, **options
) -> Path:
    """Encode a moving-gradient video with PyAV; returns its path."""
    width, height = size
    xx = np.arange(width)[None, :, None]
    images = [
        np.broadcast_to((xx + index * 7) % 255, (height, width, 3)).astype(np.uint8)
        for index in range(num_frames)
    ]
    return encode_video(path, images, codec, rate, **options)


def first_frame_rgb(video: Path) -> np.ndarray:
    """FFmpeg's own RGB decode of ``video``'s first frame, as int16 for differences."""
    with av.open(str(video)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.int16)


def jpeg_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def decoded_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def frame_files(root: Path, video: str) -> list[str]:
    return sorted(p.name for p in (root / IMAGES_DIR / video).iterdir())


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    make_video(folder / "clip_mp4.mp4", 17)
    make_video(folder / "clip_mov.mov", 9, codec="mpeg4")
    make_video(folder / "clip_mkv.mkv", 12, codec="mpeg4")
    make_video(folder / "clip_webm.webm", 8, codec="libvpx-vp9")
    (folder / "nested").mkdir()
    make_video(folder / "nested" / "clip_avi.avi", 6, codec="mpeg4")
    (folder / "notes.txt").write_text("not a video")
    return folder


def test_every_video_container_extracts_all_decoded_frames(video_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = extract_dataset(video_folder, out, workers=2)
    videos = sorted(
        p.stem for p in video_folder.rglob("*") if p.suffix in (".mp4", ".mov", ".mkv", ".webm", ".avi")
    )
    assert sorted(result.extracted) == videos and result.skipped == []
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["version"] == result.version and len(result.version) == 16
    # the frame digests taken while encoding are those of the files on disk
    rescanned = manifest_from_disk(out, manifest["settings"])
    assert rescanned["videos"] == manifest["videos"] and rescanned["version"] == result.version
    for source in video_folder.rglob("clip_*"):
        expected = decoded_count(source)
        names = frame_files(out, source.stem)
        assert names == [f"{i:05d}.jpg" for i in range(expected)]
        assert manifest["videos"][source.stem]["num_frames"] == expected
        assert manifest["videos"][source.stem]["width"] == 96
        with Image.open(out / IMAGES_DIR / source.stem / "00000.jpg") as image:
            assert image.format == "JPEG" and image.size == (96, 64)
    assert not (out / STATE_DIR / "partial").exists()


def test_second_run_does_no_work_and_version_is_stable(video_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = extract_dataset(video_folder, out, workers=2)
    stamps = {p: p.stat().st_mtime_ns for p in (out / IMAGES_DIR).rglob("*.jpg")}
    second = extract_dataset(video_folder, out, workers=2)
    assert second.extracted == [] and sorted(second.skipped) == sorted(first.extracted)
    assert {p: p.stat().st_mtime_ns for p in (out / IMAGES_DIR).rglob("*.jpg")} == stamps
    assert second.version == first.version
    # same input elsewhere -> same version; other settings -> another version
    assert extract_dataset(video_folder, tmp_path / "again", workers=1).version == first.version
    assert (
        extract_dataset(video_folder / "clip_mp4.mp4", tmp_path / "q", jpeg_quality=60).version
        != first.version
    )


def test_fps_resamples_by_timestamps(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", 30, rate=30)
    result = extract_dataset(video, tmp_path / "out", fps=10)
    assert result.num_frames == 10
    assert frame_files(tmp_path / "out", "v") == [f"{i:05d}.jpg" for i in range(10)]


def test_killed_run_restarts_and_ends_complete(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for index in range(10):
        make_video(source / f"v{index}.mp4", 40, size=(320, 240))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "sam2.tools.extract_frames",
        "--input",
        str(source),
        "--output",
        str(out),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any((out / IMAGES_DIR).glob("v*")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = list((out / IMAGES_DIR).glob("v*"))
    assert 1 <= len(finished_before) < 10, "the run should have been killed midway"
    assert not (out / MANIFEST_NAME).exists()
    for video_dir in finished_before:  # only complete videos are visible
        assert len(list(video_dir.iterdir())) == 40

    restarted = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    skipped = int(re.search(r"(\d+) already done", restarted.stdout).group(1))
    assert skipped >= len(finished_before), restarted.stdout  # finished videos are not extracted again
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["num_videos"] == 10 and manifest["num_frames"] == 400
    clean = extract_dataset(source, tmp_path / "clean", workers=2)
    assert manifest["version"] == clean.version
    assert not (out / STATE_DIR / "partial").exists()


def test_bad_videos_are_named_and_never_visible(video_folder: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(video_folder / "clip_mp4.mp4", source / "good.mp4")
    whole = make_video(tmp_path / "fs.mp4", 30, movflags="faststart").read_bytes()
    (source / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (source / "text.mp4").write_text("this is not a video")
    (source / "empty.mkv").write_bytes(b"")
    container = av.open(str(source / "no_frames.mp4"), "w")  # a header, no frame
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
    container.start_encoding()
    container.close()
    # an unknown codec id: FFmpeg finds no decodable video stream in it
    mkv = make_video(tmp_path / "codec.mkv", 5, codec="mpeg4").read_bytes()
    assert mkv.count(b"V_MPEG4/ISO/ASP") == 1
    (source / "unknown_codec.mkv").write_bytes(mkv.replace(b"V_MPEG4/ISO/ASP", b"V_XYZW/ABC/QQQ"))
    out = tmp_path / "out"
    with pytest.raises(DataPrepError) as info:
        extract_dataset(source, out, workers=2)
    message = str(info.value)
    assert "5 of 6 videos could not be extracted" in message
    lines = {line.strip().split(": ")[0].rsplit("/", 1)[-1]: line for line in message.splitlines()[1:]}
    assert "the file is truncated" in lines["truncated.mp4"]
    assert "text.mp4: cannot open as a video" in message
    assert "empty.mkv: cannot open as a video" in message
    assert "no_frames.mp4: no video stream" in message
    assert "unknown_codec.mkv: no video stream" in message and "unsupported" in message
    assert sorted(p.name for p in (out / IMAGES_DIR).iterdir()) == ["good"]
    assert not (out / MANIFEST_NAME).exists()


def test_unsupported_input_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "clip.flv"
    path.write_bytes(b"x")
    with pytest.raises(DataPrepError, match=r"clip\.flv: unsupported input"):
        extract_dataset(path, tmp_path / "out")
    with pytest.raises(DataPrepError, match="does not exist"):
        extract_dataset(tmp_path / "missing", tmp_path / "out")


def write_davis_tree(root: Path, videos: dict[str, int], resolution: str | None = "480p") -> None:
    """A DAVIS-like tree: JPEGImages/480p/<video>/*.jpg and Annotations/480p/<video>/*.png (palette)."""
    for name, count in videos.items():
        frames = root / IMAGES_DIR / (resolution or "") / name
        masks = root / ANNOTATIONS_DIR / (resolution or "") / name
        frames.mkdir(parents=True)
        masks.mkdir(parents=True)
        for index in range(count):
            Image.fromarray(np.full((40, 48, 3), index * 9, np.uint8)).save(frames / f"{index:05d}.jpg")
            mask = np.zeros((40, 48), np.uint8)
            mask[5:15, 5:15] = 1
            mask[20:30, 20:30] = 2
            image = Image.fromarray(mask, mode="P")
            image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
            image.save(masks / f"{index:05d}.png")


@pytest.mark.parametrize("kind", ["folder", "tar.gz", "tar", "zip"])
def test_davis_folder_and_archives_are_normalised(tmp_path: Path, kind: str) -> None:
    tree = tmp_path / "DAVIS"
    write_davis_tree(tree, {"bear": 5, "car": 4})
    if kind == "folder":
        source = tree
    elif kind == "zip":
        source = tmp_path / "davis.zip"
        with zipfile.ZipFile(source, "w") as handle:
            for path in sorted(tree.rglob("*")):
                handle.write(path, path.relative_to(tmp_path).as_posix())
    else:
        source = tmp_path / f"davis.{kind}"
        with tarfile.open(source, "w:gz" if kind == "tar.gz" else "w") as handle:
            handle.add(tree, arcname="DAVIS")
    out = tmp_path / "out"
    result = extract_dataset(source, out, workers=2, work_dir=tmp_path / "work")
    assert result.num_videos == 2 and result.num_frames == 9
    assert frame_files(out, "bear") == [f"{i:05d}.jpg" for i in range(5)]
    assert sorted(p.name for p in (out / ANNOTATIONS_DIR / "car").iterdir()) == [
        f"{i:05d}.png" for i in range(4)
    ]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["videos"]["bear"]["object_ids"] == [1, 2]
    assert manifest["videos"]["bear"]["annotation_format"] == "png"
    # JPEG frames are copied byte for byte, not re-encoded
    assert (out / IMAGES_DIR / "bear" / "00003.jpg").read_bytes() == (
        tree / IMAGES_DIR / "480p" / "bear" / "00003.jpg"
    ).read_bytes()


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as handle:
        for info, data in members:
            handle.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file_info(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_archive_members_that_escape_or_link_are_rejected(tmp_path: Path) -> None:
    ok = _file_info("ds/JPEGImages/v/00000.jpg", b"jpeg")
    climbing = _tar_with(tmp_path / "climb.tar.gz", [ok, _file_info("ds/../../evil.txt", b"x")])
    absolute = _tar_with(tmp_path / "abs.tar.gz", [ok, _file_info("/tmp/evil.txt", b"x")])
    link = tarfile.TarInfo("ds/JPEGImages/v/00001.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    symlinked = _tar_with(tmp_path / "link.tar.gz", [ok, (link, None)])
    hard = tarfile.TarInfo("ds/JPEGImages/v/00002.jpg")
    hard.type, hard.linkname = tarfile.LNKTYPE, "ds/JPEGImages/v/00000.jpg"
    hardlinked = _tar_with(tmp_path / "hard.tar.gz", [ok, (hard, None)])
    zipped = tmp_path / "link.zip"
    with zipfile.ZipFile(zipped, "w") as handle:
        handle.writestr("ds/JPEGImages/v/00000.jpg", b"jpeg")
        info = zipfile.ZipInfo("ds/JPEGImages/v/00001.jpg")
        info.external_attr = 0o120777 << 16
        handle.writestr(info, "/etc/passwd")
    zip_climb = tmp_path / "climb.zip"
    with zipfile.ZipFile(zip_climb, "w") as handle:
        handle.writestr("../evil.txt", b"x")

    cases = {
        climbing: r"'ds/\.\./\.\./evil\.txt' climbs out",
        absolute: r"'/tmp/evil\.txt' has an absolute path",
        symlinked: r"'ds/JPEGImages/v/00001\.jpg' is a link",
        hardlinked: r"'ds/JPEGImages/v/00002\.jpg' is a link",
        zipped: r"'ds/JPEGImages/v/00001\.jpg' is a symbolic link",
        zip_climb: r"'\.\./evil\.txt' climbs out",
    }
    for archive, pattern in cases.items():
        work = tmp_path / f"work-{archive.name}"
        with pytest.raises(DataPrepError, match=pattern) as info:
            extract_dataset(archive, tmp_path / f"out-{archive.name}", work_dir=work)
        assert archive.name in str(info.value)
        assert not any(p.is_file() for p in work.rglob("*")), f"{archive.name}: files were unpacked"
    assert not (tmp_path / "evil.txt").exists()


def sav_annotation(num_objects: int, height: int, width: int, num_annotated: int) -> dict:
    from pycocotools import mask as mask_utils

    frames = []
    for t in range(num_annotated):
        rles = []
        for obj in range(num_objects):
            mask = np.zeros((height, width), np.uint8, order="F")
            mask[4 + t : 20 + t, 4 + 10 * obj : 14 + 10 * obj] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rles.append({"size": rle["size"], "counts": rle["counts"].decode()})
        frames.append(rles)
    return {
        "video_id": "sav_000001",
        "video_height": height,
        "video_width": width,
        "masklet": frames,
        "masklet_id": list(range(num_objects)),
        "masklet_num": num_objects,
    }


def test_sav_videos_keep_their_manual_json(tmp_path: Path) -> None:
    source = tmp_path / "sav_000"
    source.mkdir()
    make_video(source / "sav_000001.mp4", 16, rate=24)
    (source / "sav_000001_manual.json").write_text(json.dumps(sav_annotation(2, 64, 96, 4)))
    make_video(source / "sav_000002.mp4", 8, rate=24)  # no annotation: frames only
    out = tmp_path / "out"
    result = extract_dataset(source, out, workers=2)
    assert result.num_videos == 2
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    record = manifest["videos"]["sav_000001"]
    assert record["annotation_format"] == "sav_json" and record["object_ids"] == [0, 1]
    assert record["num_annotated_frames"] == 4 and record["num_frames"] == decoded_count(
        source / "sav_000001.mp4"
    )
    assert (out / ANNOTATIONS_DIR / "sav_000001_manual.json").read_bytes() == (
        source / "sav_000001_manual.json"
    ).read_bytes()
    assert manifest["videos"]["sav_000002"]["annotation_format"] == "none"


def test_s3_input_and_output(video_folder: Path, tmp_path: Path, s3_store, s3_bucket: str, s3_env) -> None:
    s3_store.upload_file(video_folder / "clip_mp4.mp4", f"s3://{s3_bucket}/raw/clip_mp4.mp4")
    s3_store.upload_file(video_folder / "clip_mkv.mkv", f"s3://{s3_bucket}/raw/clip_mkv.mkv")
    target = f"s3://{s3_bucket}/datasets/mine/v1"
    result = extract_dataset(f"s3://{s3_bucket}/raw", target, workers=2, work_dir=tmp_path / "work")
    assert result.num_videos == 2 and result.output == target
    marker = s3_store.read_marker(target)
    assert f"{IMAGES_DIR}/clip_mp4/00000.jpg" in marker["files"] and MANIFEST_NAME in marker["files"]
    assert not [key for key in s3_store.list_objects(target) if key.startswith(STATE_DIR)]
    local = tmp_path / "synced"
    s3_store.sync_to_local(target, local)
    assert json.loads((local / MANIFEST_NAME).read_text())["version"] == result.version
    assert len(os.listdir(local / IMAGES_DIR / "clip_mp4")) == decoded_count(video_folder / "clip_mp4.mp4")


@pytest.mark.parametrize("bad", ["corrupt_mask", "rgb_mask", "corrupt_png_frame"])
def test_unreadable_frames_and_masks_are_handed_to_validation(tmp_path: Path, bad: str) -> None:
    """Extraction keeps a video with a bad mask or frame; validation names the file and excludes the video
    (on_bad=exclude) or stops (fail), so one bad file never refuses the whole data set."""
    from sam2.data.validation import DatasetValidationError, validate_dataset, write_report

    tree = tmp_path / "DAVIS"
    write_davis_tree(tree, {"bear": 3, "car": 3}, resolution=None)
    if bad == "corrupt_mask":
        culprit = tree / ANNOTATIONS_DIR / "car" / "00001.png"
        culprit.write_bytes(culprit.read_bytes()[:20])
        expected = "mask 00001.png does not decode"
    elif bad == "rgb_mask":
        culprit = tree / ANNOTATIONS_DIR / "car" / "00001.png"
        Image.new("RGB", (48, 40)).save(culprit)
        expected = "mask 00001.png has mode RGB"
    else:
        (tree / IMAGES_DIR / "car" / "00001.jpg").unlink()
        culprit = tree / IMAGES_DIR / "car" / "00001.png"
        culprit.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        expected = "frame 00001.jpg does not decode"
    out = tmp_path / "out"
    result = extract_dataset(tree, out, workers=2)
    assert result.num_videos == 2 and (out / MANIFEST_NAME).is_file()
    report = validate_dataset(out, num_frames=3)
    assert report.good == ["bear"] and list(report.bad) == ["car"]
    assert any(expected in problem for problem in report.bad["car"]), report.bad
    valid = write_report(report, tmp_path / "exclude", on_bad="exclude")
    assert valid.read_text().split() == ["bear"]
    with pytest.raises(DatasetValidationError, match=rf"car: .*{re.escape(expected)}"):
        write_report(report, tmp_path / "fail", on_bad="fail")
    assert not (tmp_path / "fail" / "valid_videos.txt").exists()


def test_cli_refuses_bad_input_in_one_line_with_exit_2(tmp_path: Path) -> None:
    """A source that cannot be extracted: exit 2, one line naming it, no traceback, no manifest."""
    whole = make_video(tmp_path / "fs.mp4", 30, movflags="faststart").read_bytes()
    source = tmp_path / "src"
    source.mkdir()
    (source / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam2.tools.extract_frames",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cut.mp4" in errors[0] and "truncated" in errors[0]
    assert not (tmp_path / "o" / MANIFEST_NAME).exists()
    debug = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam2.tools.extract_frames",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "o"),
            "--debug",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_mkv_cut_in_half_is_refused_like_a_cut_mp4(tmp_path: Path) -> None:
    """Matroska states no frame count, only a duration: a file cut in half decodes its first half without
    an error; the frames ending well before the declared duration refuse it."""
    whole = make_video(tmp_path / "whole.mkv", 60, codec="mpeg4")
    assert decoded_count(whole) == 60
    source = tmp_path / "src"
    source.mkdir()
    data = whole.read_bytes()
    (source / "cut.mkv").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DataPrepError, match=r"cut\.mkv: frames end at 2\.\d+ s but the container declares 6\.00 s"
    ):
        extract_dataset(source, tmp_path / "out", workers=1)
    assert not (tmp_path / "out" / IMAGES_DIR / "cut").exists()
    assert extract_dataset(whole, tmp_path / "ok", workers=1).num_frames == 60  # a whole one passes


def test_empty_video_folder_is_reported_as_dropped(tmp_path: Path, capsys) -> None:
    from sam2.tools.extract_frames import main as extract_main

    tree = tmp_path / "DAVIS"
    write_davis_tree(tree, {"bear": 3}, resolution=None)
    (tree / IMAGES_DIR / "empty_video").mkdir()
    result = extract_dataset(tree, tmp_path / "out", workers=1)
    assert result.num_videos == 1
    assert "holds no frame" in result.dropped["empty_video"]
    assert extract_main(["--input", str(tree), "--output", str(tmp_path / "out2")]) == 0
    assert "dropped empty_video:" in capsys.readouterr().out


def make_colour_video(
    path: Path, pix_fmt: str, colorspace: int | None = None, size=(96, 64), codec: str = "libx264"
) -> Path:
    """Three frames of saturated colour patches over a ramp, in ``pix_fmt`` with optional colour tags."""
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]  # red ramp, full range
    image[: height // 2, : width // 2] = (230, 40, 30)
    image[: height // 2, width // 2 :] = (20, 190, 240)
    image[height // 2 :, : width // 3] = (250, 250, 250)
    image[height // 2 :, width // 3 : width // 2] = (5, 5, 5)
    return encode_video(path, [image] * 3, codec, pix_fmt=pix_fmt, colorspace=colorspace)


@pytest.mark.parametrize(
    ("pix_fmt", "colorspace", "size", "codec", "direct"),
    [
        ("yuv420p", None, (96, 64), "libx264", True),  # untagged limited range: expanded planes
        ("yuv420p", 6, (96, 64), "libx264", True),  # tagged SMPTE 170M (BT.601)
        ("yuvj420p", None, (96, 64), "libx264", True),  # full range: planes as they are
        ("yuv420p", None, (95, 63), "ffv1", True),  # odd size: chroma planes rounded up
        ("yuv420p", 1, (96, 64), "libx264", False),  # BT.709 tag: JPEG cannot say so, goes through RGB
        ("yuv444p", None, (96, 64), "libx264", False),  # 4:4:4: through RGB
    ],
)
def test_extracted_colours_are_the_ones_ffmpeg_decodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pix_fmt, colorspace, size, codec, direct
) -> None:
    """Frames encoded straight from the YUV planes must look like FFmpeg's own RGB decode, in range and
    matrix; a missing range expansion or a BT.709 frame stored as BT.601 is off by 10-20 levels."""
    import simplejpeg

    video = make_colour_video(tmp_path / "c.mkv", pix_fmt, colorspace, size, codec)
    calls = {"planes": 0, "rgb": 0}
    for name, key in (("encode_jpeg_yuv_planes", "planes"), ("encode_jpeg", "rgb")):
        original = getattr(simplejpeg, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(simplejpeg, name, counted)
    extract_dataset(video, tmp_path / "out", workers=1)
    assert calls == ({"planes": 3, "rgb": 0} if direct else {"planes": 0, "rgb": 3})

    reference = first_frame_rgb(video)
    ours = jpeg_rgb(tmp_path / "out" / IMAGES_DIR / "c" / "00000.jpg")
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).mean() < 3.0  # JPEG noise at quality 90, sharp colour edges included
    height, width = reference.shape[:2]
    patches = {  # interiors of the flat patches, 3 pixels from their edges
        "red": (slice(3, height // 2 - 3), slice(3, width // 2 - 3)),
        "cyan": (slice(3, height // 2 - 3), slice(width // 2 + 3, width - 3)),
        "white": (slice(height // 2 + 3, height - 3), slice(3, width // 3 - 3)),
        "black": (slice(height // 2 + 3, height - 3), slice(width // 3 + 3, width // 2 - 3)),
    }
    for name, (rows, cols) in patches.items():
        shift = ours[rows, cols].mean(axis=(0, 1)) - reference[rows, cols].mean(axis=(0, 1))
        # a wrong range or matrix moves some of these by 14-20 levels; JPEG noise and swscale rounding stay
        # within 2
        assert np.abs(shift).max() < 2.5, (name, shift)


def test_video_levels_expand_to_jpeg_levels_within_one_step() -> None:
    """The fixed-point range expansion of the direct-plane path against the exact formulas."""
    from sam2.data.frame_extraction import _to_full_range

    levels = np.arange(256, dtype=np.uint8)
    luma = _to_full_range(levels, 16, 235, 298, 132).astype(int)
    chroma = _to_full_range(levels, 16, 240, 291, 255).astype(int)
    exact_luma = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255)
    exact_chroma = np.clip(np.round((np.arange(256) - 128) * 255 / 224 + 128), 0, 255)
    assert np.abs(luma - exact_luma).max() <= 1 and np.abs(chroma - exact_chroma).max() <= 1
    assert (luma[[0, 16, 235, 255]] == [0, 0, 255, 255]).all()  # black and white stay exact
    assert (chroma[[16, 128, 240]] == [0, 128, 255]).all()  # no colour stays no colour
    assert (np.diff(luma) >= 0).all() and (np.diff(chroma) >= 0).all()


def test_extraction_benchmark_runs_and_prints_its_table() -> None:
    """benchmarks/extract.py at a toy size: every row is printed (its timings are not asserted)."""
    run = subprocess.run(
        [sys.executable, "benchmarks/extract.py", "--videos", "2", "--frames", "4"]
        + ["--width", "64", "--height", "48", "--repeats", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split(" | ")[0].lstrip("| ") for row in rows[1:]]
    assert names == [
        "baseline: 1 thread decode+save",
        "PyAV defaults decode+save",
        "extract_dataset",
        "S3 upload_folder (SeaweedFS, local)",
        "S3 sync_to_local (SeaweedFS, local)",
    ], run.stdout
    assert "| 8 frames |" in rows[3] and "1.00x" in rows[1]


def with_display_matrix(video: Path, a: float, b: float, c: float, d: float) -> Path:
    """``video`` (an MP4) with its track header's display matrix set to [[a, b], [c, d]], as a phone writes
    it for portrait video."""
    data = bytearray(video.read_bytes())
    box = data.find(b"tkhd") - 4
    assert data[box + 8] == 0, "expected a version-0 track header"
    matrix = [round(a * 65536), round(b * 65536), 0, round(c * 65536), round(d * 65536), 0, 0, 0, 1 << 30]
    data[box + 48 : box + 84] = struct.pack(">9i", *matrix)
    video.write_bytes(bytes(data))
    return video


@pytest.mark.parametrize(
    ("matrix", "turns"),
    [
        ((0, 1, -1, 0), -1),  # the usual portrait phone video: shown turned a quarter clockwise
        ((0, -1, 1, 0), 1),
        ((-1, 0, 0, -1), 2),
    ],
)
def test_rotated_phone_video_is_extracted_upright(tmp_path: Path, matrix, turns: int) -> None:
    video = with_display_matrix(make_colour_video(tmp_path / "phone.mp4", "yuv420p"), *matrix)
    result = extract_dataset(video, tmp_path / "out", workers=1)
    upright = np.rot90(first_frame_rgb(video), turns)  # what a player shows
    ours = jpeg_rgb(tmp_path / "out" / IMAGES_DIR / "phone" / "00000.jpg")
    assert ours.shape == upright.shape
    assert np.abs(ours - upright).mean() < 3.0
    record = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["videos"]["phone"]
    assert (record["height"], record["width"]) == upright.shape[:2], record
    assert result.num_frames == 3


@pytest.mark.parametrize(
    ("matrix", "message"),
    [((-1, 0, 0, 1), "mirrors the picture"), ((0.7071, 0.7071, -0.7071, 0.7071), "by -45.0 degrees")],
)
def test_display_matrix_that_cannot_be_applied_is_named(tmp_path: Path, matrix, message: str) -> None:
    video = with_display_matrix(make_colour_video(tmp_path / "odd.mp4", "yuv420p"), *matrix)
    with pytest.raises(DataPrepError, match=re.escape(message)) as err:
        extract_dataset(video, tmp_path / "out", workers=1)
    assert str(video) in str(err.value)
    assert not (tmp_path / "out" / IMAGES_DIR / "odd").exists()
