"""VOS inference over a small data set with a random-weight tiny model: layouts, palette, sharding, reruns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2.build_sam import build_sam2
from sam2.eval.evaluator import evaluate
from sam2.eval.masks import MaskDataError, VideoMasks, read_mask_png, read_palette, write_palette_png
from sam2.eval.vos_inference import (
    VOSInferenceOptions,
    build_vos_predictor,
    infer_video,
    run_vos_inference,
    stale_staging_dirs,
)

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=128"]
FRAMES, HEIGHT, WIDTH = 4, 48, 64
PALETTE = [value for i in range(256) for value in (i, 255 - i, (7 * i) % 256)]


def write_dataset(root: Path, videos: list[str], late_object: bool = False) -> None:
    rng = np.random.default_rng(0)
    for v, name in enumerate(videos):
        for t in range(FRAMES):
            image = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "JPEGImages" / name / f"{t:05d}.jpg")
        first = np.zeros((HEIGHT, WIDTH), np.uint8)
        first[5:20, 5 + v : 25 + v] = 1
        first[25:40, 30:50] = 255 if v == 0 else 3
        write_palette_png(root / "Annotations" / name / "00000.png", first, PALETTE)
        if late_object:
            later = first.copy()
            later[2:10, 40:60] = 7  # appears only in frame 2's annotation
            write_palette_png(root / "Annotations" / name / "00002.png", later, PALETTE)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model is fastest single-threaded, and far faster than two threads on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_sam2(CONFIG, None, device="cpu", hydra_overrides_extra=OVERRIDES)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_random.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vos")
    write_dataset(root, ["alpha", "beta", "gamma"])
    return root


def run(data: Path, checkpoint: Path, out: Path, **kwargs) -> object:
    options = kwargs.pop("options", VOSInferenceOptions())
    return run_vos_inference(
        CONFIG,
        checkpoint,
        data / "JPEGImages",
        data / "Annotations",
        out,
        options=options,
        device="cpu",
        hydra_overrides_extra=OVERRIDES,
        **kwargs,
    )


def test_palette_outputs_are_accepted_by_the_evaluator(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    summary = run(data, checkpoint, out)
    assert summary.written == ["alpha", "beta", "gamma"] and summary.frames == 3 * FRAMES
    for video in ("alpha", "beta", "gamma"):
        names = sorted(p.name for p in (out / video).iterdir())
        assert names == [f"{t:05d}.png" for t in range(FRAMES)]
        for name in names:
            ids = read_mask_png(out / video / name)
            assert ids.shape == (HEIGHT, WIDTH)
            assert set(np.unique(ids)) <= {0, 1, 255 if video == "alpha" else 3}
        assert read_palette(out / video / names[0])[: 3 * 4] == PALETTE[: 3 * 4]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left
    result = evaluate(data / "Annotations", out, num_processes=1, progress=False, skip_first_and_last=False)
    assert set(result.videos) == {"alpha", "beta", "gamma"}
    assert 0.0 <= result.jf <= 1.0

    # A rerun skips every finished video without building a model.
    again = run(data, checkpoint, out)
    assert again.written == [] and again.skipped == ["alpha", "beta", "gamma"]


def test_two_workers_write_the_same_files_as_one(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    run(data, checkpoint, one, num_workers=1)
    summary = run(data, checkpoint, two, num_workers=2)
    assert sorted(summary.written) == ["alpha", "beta", "gamma"]
    files = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert files == sorted(p.relative_to(two) for p in two.rglob("*.png"))
    for relative in files:
        assert (one / relative).read_bytes() == (two / relative).read_bytes(), relative


def test_per_object_layout_and_torchrun_shards(
    data: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "per_obj"
    # Rank 1 of 2 takes every second video of the sorted list.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    summary = run(
        data, checkpoint, out, options=VOSInferenceOptions(per_obj_png_file=False), videos=["alpha"]
    )
    assert summary.written == [] and summary.skipped == []
    summary = run(data, checkpoint, out, options=VOSInferenceOptions())
    assert summary.written == ["beta"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    per_obj = tmp_path / "objects"
    summary = run(data, checkpoint, per_obj, options=VOSInferenceOptions(per_obj_png_file=True))
    assert summary.written == ["alpha", "gamma"]
    masks = VideoMasks.open(per_obj / "alpha")
    assert masks.layout == "per_object" and sorted(masks.object_dirs) == [1, 255]
    for object_dir in ("001", "255"):
        assert sorted(p.name for p in (per_obj / "alpha" / object_dir).iterdir()) == [
            f"{t:05d}.png" for t in range(FRAMES)
        ]
    assert set(np.unique(read_mask_png(per_obj / "alpha" / "001" / "00002.png"))) <= {0, 1}
    result = evaluate(
        data / "Annotations",
        per_obj,
        videos=["alpha", "gamma"],
        num_processes=1,
        progress=False,
        skip_first_and_last=False,
    )
    assert sorted(result.videos["alpha"].objects) == [1, 255]


def test_objects_appearing_later(checkpoint: Path, tmp_path: Path) -> None:
    write_dataset(tmp_path, ["late"], late_object=True)
    predictor = build_vos_predictor(CONFIG, checkpoint, device="cpu", hydra_overrides_extra=OVERRIDES)
    with pytest.raises(MaskDataError, match=r"00002.*\[7\].*track_object_appearing_later_in_video"):
        infer_video(
            predictor,
            tmp_path / "JPEGImages",
            tmp_path / "Annotations",
            tmp_path / "p",
            "late",
            VOSInferenceOptions(use_all_masks=True),
        )
    assert not (tmp_path / "p" / "late").exists()
    options = VOSInferenceOptions(track_object_appearing_later_in_video=True)
    assert (
        infer_video(
            predictor, tmp_path / "JPEGImages", tmp_path / "Annotations", tmp_path / "p", "late", options
        )
        == FRAMES
    )
    for t in (0, 1):  # object 7 is not tracked before its first mask
        assert 7 not in np.unique(read_mask_png(tmp_path / "p" / "late" / f"{t:05d}.png"))
    with pytest.raises(MaskDataError, match="ghost"):
        (tmp_path / "JPEGImages" / "ghost").mkdir()
        Image.new("RGB", (WIDTH, HEIGHT)).save(tmp_path / "JPEGImages" / "ghost" / "00000.jpg")
        infer_video(predictor, tmp_path / "JPEGImages", tmp_path / "Annotations", tmp_path / "p", "ghost")


def run_cli(data: Path, checkpoint: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """`python -m sam2.tools.vos_inference` on `data` with the official flags plus `flags`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sam2.tools.vos_inference",
            "--sam2_cfg",
            CONFIG,
            "--sam2_checkpoint",
            str(checkpoint),
            "--base_video_dir",
            str(data / "JPEGImages"),
            "--input_mask_dir",
            str(data / "Annotations"),
            "--output_mask_dir",
            str(out),
            *flags,
            "--device",
            "cpu",
            "--hydra_overrides",
            *OVERRIDES,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_cli_writes_masks(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    video_list = tmp_path / "list.txt"
    video_list.write_text("gamma\n")
    out = tmp_path / "cli"
    done = run_cli(data, checkpoint, out, "--video_list_file", str(video_list))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote 1 video(s), 4 frames" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["gamma"]


@pytest.mark.slow
def test_torchrun_ranks_split_the_videos(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "torchrun"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29531",
            "-m",
            "sam2.tools.vos_inference",
            "--sam2_cfg",
            CONFIG,
            "--sam2_checkpoint",
            str(checkpoint),
            "--base_video_dir",
            str(data / "JPEGImages"),
            "--input_mask_dir",
            str(data / "Annotations"),
            "--output_mask_dir",
            str(out),
            "--device",
            "cpu",
            "--hydra_overrides",
            *OVERRIDES,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote 2 video(s)" in done.stdout and "wrote 1 video(s)" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["alpha", "beta", "gamma"]


def test_stale_staging_cleanup_takes_only_this_videos_folders(tmp_path: Path) -> None:
    # `dog` must not remove the staging folder of `dog-agility`, which another worker may be writing.
    for name in (".tmp-dog-12", ".tmp-dog-agility-12", ".tmp-dog-agility-34", ".tmp-dog[1]-5", "dog"):
        (tmp_path / name).mkdir()
    assert [p.name for p in stale_staging_dirs(tmp_path, "dog")] == [".tmp-dog-12"]
    assert sorted(p.name for p in stale_staging_dirs(tmp_path, "dog-agility")) == [
        ".tmp-dog-agility-12",
        ".tmp-dog-agility-34",
    ]
    assert [p.name for p in stale_staging_dirs(tmp_path, "dog[1]")] == [".tmp-dog[1]-5"]


def test_score_threshold_decides_which_logits_become_mask(
    data: Path, checkpoint: Path, tmp_path: Path
) -> None:
    # Far below every logit: every pixel belongs to some object; far above: none does, not even on the
    # prompted frame. With the threshold ignored both would look like the default run.
    low = tmp_path / "low"
    run(data, checkpoint, low, options=VOSInferenceOptions(score_thresh=-1e6))
    for png in (low / "alpha").iterdir():
        assert (read_mask_png(png) != 0).all(), png
    high = tmp_path / "high"
    done = run_cli(data, checkpoint, high, "--score_thresh", "1e6")
    assert done.returncode == 0, done.stderr[-3000:]
    for png in (high / "beta").iterdir():
        assert not read_mask_png(png).any(), png
