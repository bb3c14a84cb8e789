"""VOS inference over a small data set with a random-weight tiny model: layouts, palette, sharding, reruns."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
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
    marker_path,
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
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]  # no staging folder left
    # Beside each video only its marker (hidden, so folder listings see the videos alone).
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [
        f".{video}.vos_inference.json" for video in ("alpha", "beta", "gamma")
    ]
    result = evaluate(data / "Annotations", out, num_processes=1, progress=False, skip_first_and_last=False)
    assert set(result.videos) == {"alpha", "beta", "gamma"}
    assert 0.0 <= result.jf <= 1.0

    # A rerun with the same checkpoint, config and flags reuses every finished video.
    again = run(data, checkpoint, out)
    assert again.written == [] and again.skipped == ["alpha", "beta", "gamma"]


def test_rerun_reuses_only_outputs_its_marker_matches(
    data: Path, checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A finished video is reused only when the marker beside it records this checkpoint's hash, config
    and flags; a new checkpoint, other flags, a missing or broken marker: overwritten, and logged."""
    out = tmp_path / "pred"
    run(data, checkpoint, out, videos=["alpha", "beta"])
    marker = marker_path(out, "alpha")
    recorded = json.loads(marker.read_text())
    assert recorded["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert recorded["sam2_cfg"] == CONFIG and recorded["hydra_overrides"] == OVERRIDES
    assert recorded["options"]["per_obj_png_file"] is False
    assert stat.S_IMODE(marker.stat().st_mode) == stat.S_IMODE(os.stat(out / "alpha" / "00000.png").st_mode)
    before = {p.name: p.read_bytes() for p in (out / "alpha").iterdir()}

    # Another checkpoint (one weight changed): both videos are redone with its masks.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    state["sam_mask_decoder.pred_obj_score_head.layers.2.bias"] += 50.0  # "object present" everywhere
    other = tmp_path / "other.pt"
    torch.save({"model": state}, other)
    with caplog.at_level(logging.INFO, logger="sam2.eval.vos_inference"):
        redo = run(data, other, out, videos=["alpha", "beta"])
    assert redo.written == ["alpha", "beta"] and redo.skipped == []
    assert (
        "video alpha: overwriting the existing output" in caplog.text and "checkpoint_sha256" in caplog.text
    )
    assert {p.name: p.read_bytes() for p in (out / "alpha").iterdir()} != before
    assert (
        json.loads(marker.read_text())["checkpoint_sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()
    )
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]  # old and staging folders gone

    # Same checkpoint, other flags: redone; same again: reused, and the log names them.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sam2.eval.vos_inference"):
        flags = run(data, other, out, videos=["alpha"], options=VOSInferenceOptions(score_thresh=0.5))
        same = run(data, other, out, videos=["alpha"], options=VOSInferenceOptions(score_thresh=0.5))
    assert flags.written == ["alpha"] and same.skipped == ["alpha"] and same.written == []
    assert "made with another options" in caplog.text and "reusing 1 video(s)" in caplog.text

    # An output without a marker (an older tool's, or the marker lost) or with a broken one: redone.
    marker.unlink()
    marker_path(out, "beta").write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sam2.eval.vos_inference"):
        redo = run(data, other, out, videos=["alpha", "beta"])
    assert redo.written == ["alpha", "beta"]
    assert "no marker" in caplog.text and "unreadable" in caplog.text


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
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["gamma"]


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
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["alpha", "beta", "gamma"]


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


# --- what the official tool writes ----------------------------------------------------------------------
# The official `tools/vos_inference.py` is not in the sam2==1.1.0 wheel. The oracle script below drives the
# official package's predictor as that script does (github.com/facebookresearch/sam2, tools/vos_inference.py
# at 2b90b9f): the predictor built with `++model.non_overlap_masks` false only for per-object PNGs (lines
# 444-454); joint tracking from the first frame's masks under inference_mode, every object of that frame
# added with add_new_mask, logits > score_thresh per object, palette PNGs with smaller ids on top
# (lines 116-244, 46-54); with track_object_appearing_later_in_video each object tracked alone from its
# first non-empty mask after reset_state, fp32 scores, -1024 where an object was not tracked, overlaps
# resolved by _apply_non_overlapping_constraints unless per-object PNGs (lines 247-364); PNGs saved by PIL
# with the last read input palette, else the DAVIS palette (lines 29-35, 222, 331); per-object files as
# <video>/<id:03d>/<frame>.png (lines 103-113).
_OFFICIAL_TOOL_SCRIPT = r"""
import os
import numpy as np
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor

torch.set_num_threads(1)


def read_png(path):
    image = Image.open(path)
    return np.array(image).astype(np.uint8), image.getpalette()


def read_frame(case, video, frame, allow_missing):
    if not case["per_obj_png_file"]:
        path = os.path.join(case["masks"], video, frame + ".png")
        if allow_missing and not os.path.exists(path):
            return {}, None
        ids, palette = read_png(path)
        return {int(i): ids == i for i in np.unique(ids) if i > 0}, palette
    found, palette = {}, None
    for name in os.listdir(os.path.join(case["masks"], video)):
        path = os.path.join(case["masks"], video, name, frame + ".png")
        if allow_missing and not os.path.exists(path):
            continue
        ids, palette = read_png(path)
        found[int(name)] = ids > 0
    return found, palette


def save(path, ids, palette):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(ids)
    image.putpalette(palette)
    image.save(path)


def write(case, video, frame, masks, h, w, palette):
    if case["per_obj_png_file"]:
        for oid, m in masks.items():
            path = os.path.join(case["out"], video, f"{oid:03d}", frame + ".png")
            save(path, m.reshape(h, w).astype(np.uint8), palette)
    else:
        ids = np.zeros((h, w), np.uint8)
        for oid in sorted(masks)[::-1]:
            ids[masks[oid].reshape(h, w)] = oid
        save(os.path.join(case["out"], video, frame + ".png"), ids, palette)


def joint(case, predictor, state, video, frames):
    first, palette = read_frame(case, video, frames[0], False)
    for oid, m in first.items():
        predictor.add_new_mask(inference_state=state, frame_idx=0, obj_id=oid, mask=m)
    results = {
        f: {oid: (logits[i] > 0.0).cpu().numpy() for i, oid in enumerate(ids)}
        for f, ids, logits in predictor.propagate_in_video(state)
    }
    return results, palette


def separate(case, predictor, state, video, frames):
    prompts, palette = {}, None
    for idx, frame in enumerate(frames):
        if case["per_obj_png_file"] or os.path.exists(os.path.join(case["masks"], video, frame + ".png")):
            found, palette = read_frame(case, video, frame, True)
            for oid, m in found.items():
                if m.any() and oid not in prompts:
                    prompts[oid] = (idx, m)
    object_ids = sorted(prompts)
    scores = {}
    for oid in object_ids:
        predictor.reset_state(state)
        start, m = prompts[oid]
        predictor.add_new_mask(inference_state=state, frame_idx=start, obj_id=oid, mask=m)
        for f, _, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=False):
            scores[(oid, f)] = logits.cpu().numpy()
    h, w = state["video_height"], state["video_width"]
    results = {}
    for f in range(len(frames)):
        frame_scores = torch.full((len(object_ids), 1, h, w), -1024.0, dtype=torch.float32)
        for i, oid in enumerate(object_ids):
            if (oid, f) in scores:
                frame_scores[i] = torch.from_numpy(scores[(oid, f)])
        if not case["per_obj_png_file"]:
            frame_scores = predictor._apply_non_overlapping_constraints(frame_scores)
        results[f] = {oid: (frame_scores[i] > 0.0).cpu().numpy() for i, oid in enumerate(object_ids)}
    return results, palette


for case in inputs["cases"]:
    overlap = "false" if case["per_obj_png_file"] else "true"
    predictor = build_sam2_video_predictor(
        inputs["config"], inputs["ckpt"], device="cpu", apply_postprocessing=False,
        hydra_overrides_extra=inputs["overrides"] + [f"++model.non_overlap_masks={overlap}"],
    )
    with torch.inference_mode():
        for video in inputs["videos"]:
            video_dir = os.path.join(inputs["base"], video)
            frames = sorted((os.path.splitext(p)[0] for p in os.listdir(video_dir)), key=int)
            state = predictor.init_state(video_path=video_dir, async_loading_frames=False)
            track = separate if case["later"] else joint
            results, palette = track(case, predictor, state, video, frames)
            for f, masks in results.items():
                write(case, video, frames[f], masks, state["video_height"], state["video_width"],
                      palette or inputs["davis_palette"])
"""

TOOL_FRAMES, TOOL_H, TOOL_W = 5, 72, 96


def _write_tool_dataset(root: Path) -> None:
    """A video of moving shapes over texture: objects 1 and 2 from frame 0 (2 overlapping 1 where
    they cross), object 3 only from frame 2; annotations as palette PNGs and as per-object folders (with
    and without object 3)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:TOOL_H, 0:TOOL_W]
    for v, video in enumerate(("v0",)):
        for t in range(TOOL_FRAMES):
            disk = (xx - 30 - 5 * t - 3 * v) ** 2 + (yy - 36) ** 2 < 15**2
            square = (abs(xx - 50 + 2 * t) < 11) & (abs(yy - 30 - v) < 11)
            late = (abs(xx - 75) < 8) & (abs(yy - 55) < 6)
            img = 50 + 25 * np.sin(xx / 7.0 + t)[..., None] + rng.normal(0, 5, (TOOL_H, TOOL_W, 3))
            img[disk] = [210, 70, 60]
            img[square] = [40, 170, 230]
            if t >= 2:
                img[late] = [230, 230, 40]
            (root / "JPEGImages" / video).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                root / "JPEGImages" / video / f"{t:05d}.jpg", quality=95
            )
            if t not in (0, 2):
                continue
            ids = np.zeros((TOOL_H, TOOL_W), np.uint8)
            ids[disk] = 1
            ids[square] = 2
            if t == 2:
                ids[late] = 3
            write_palette_png(root / "Annotations" / video / f"{t:05d}.png", ids, PALETTE)
            for object_id in np.unique(ids[ids > 0]):
                # PerObjectFirst lacks object 3, whose missing frame 0 the official joint mode refuses.
                for layout in ("PerObject", "PerObjectFirst") if object_id < 3 else ("PerObject",):
                    write_palette_png(
                        root / layout / video / f"{object_id:03d}" / f"{t:05d}.png",
                        (ids == object_id).astype(np.uint8),
                        PALETTE,
                    )


TOOL_CASES = [(per_obj, later) for later in (False, True) for per_obj in (False, True)]


def _tool_masks(root: Path, per_obj_png_file: bool, later: bool) -> Path:
    return root / ("Annotations" if not per_obj_png_file else "PerObject" if later else "PerObjectFirst")


@pytest.fixture(scope="module")
def tool_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The data set, weights the official package wrote (biased to "object present", so every object is
    tracked with real, mixed masks), and the official tool's PNGs for every flag combination under
    <root>/official/<per_obj>-<later>, written with umask 022 (one oracle process for all four)."""
    from sam2_oracle import oracle_checkpoint, require_oracle, run_oracle

    from sam2.eval.masks import default_palette

    require_oracle()
    root = tmp_path_factory.mktemp("official_tool")
    _write_tool_dataset(root)
    state = torch.load(oracle_checkpoint(CONFIG), map_location="cpu", weights_only=True)["model"]
    state["sam_mask_decoder.pred_obj_score_head.layers.2.bias"] += 5.0
    torch.save({"model": state}, root / "official_present.pt")
    cases = [
        {
            "per_obj_png_file": per_obj,
            "later": later,
            "masks": str(_tool_masks(root, per_obj, later)),
            "out": str(root / "official" / f"{per_obj}-{later}"),
        }
        for per_obj, later in TOOL_CASES
    ]
    previous_umask = os.umask(0o022)
    try:
        run_oracle(
            _OFFICIAL_TOOL_SCRIPT,
            {
                "config": CONFIG,
                "ckpt": str(root / "official_present.pt"),
                "overrides": OVERRIDES,
                "base": str(root / "JPEGImages"),
                "videos": ["v0"],
                "davis_palette": default_palette(),
                "cases": cases,
            },
        )
    finally:
        os.umask(previous_umask)
    return root, root / "official_present.pt"


def _png_files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*.png"))}


@pytest.mark.parametrize(("per_obj_png_file", "later"), TOOL_CASES, ids=lambda flag: str(flag))
def test_writes_what_the_official_tool_writes(
    tool_case, tmp_path: Path, per_obj_png_file: bool, later: bool
) -> None:
    """Every PNG (pixels, palette, file mode) equals what the official tool computes with the same
    package weights and flags, in all four combinations of --per_obj_png_file and
    --track_object_appearing_later_in_video."""
    root, checkpoint = tool_case
    ours = tmp_path / "ours"
    previous_umask = os.umask(0o022)
    try:
        summary = run_vos_inference(
            CONFIG,
            checkpoint,
            root / "JPEGImages",
            _tool_masks(root, per_obj_png_file, later),
            ours,
            options=VOSInferenceOptions(
                per_obj_png_file=per_obj_png_file, track_object_appearing_later_in_video=later
            ),
            device="cpu",
            hydra_overrides_extra=OVERRIDES,
        )
    finally:
        os.umask(previous_umask)
    assert summary.written == ["v0"]
    official_files = _png_files(root / "official" / f"{per_obj_png_file}-{later}")
    our_files = _png_files(ours)
    assert sorted(our_files) == sorted(official_files) and len(official_files) >= TOOL_FRAMES
    if per_obj_png_file:
        objects = {Path(name).parts[1] for name in official_files}
        assert objects == ({"001", "002", "003"} if later else {"001", "002"}), objects
    seen_ids: set[int] = set()
    for name, official in official_files.items():
        mine = our_files[name]
        official_ids, our_ids = read_mask_png(official), read_mask_png(mine)
        assert np.array_equal(our_ids, official_ids), (
            f"{name}: {(our_ids != official_ids).sum()} pixels differ"
        )
        assert read_palette(mine) == read_palette(official), name
        assert stat_mode(mine) == stat_mode(official) == 0o644, name
        seen_ids |= set(np.unique(official_ids).tolist())
    # The comparison covers every object (overlaps resolved on both sides in the palette layout).
    if not per_obj_png_file:
        assert seen_ids == ({0, 1, 2, 3} if later else {0, 1, 2}), seen_ids


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_first_frame_without_a_mask_warns_naming_the_video_and_tracks_from_the_first_mask(
    checkpoint: Path, tmp_path: Path, caplog
) -> None:
    """As SAM 2's propagate_in_video does, tracking starts at the earliest prompted frame; the frames before
    it are written empty, and the log says so naming the video (it was silent)."""
    root = tmp_path / "data"
    write_dataset(root, ["late"])
    first = root / "Annotations" / "late" / "00000.png"
    first.rename(root / "Annotations" / "late" / "00001.png")
    out = tmp_path / "pred"
    with caplog.at_level(logging.WARNING, logger="sam2.eval.vos_inference"):
        summary = run(root, checkpoint, out)
    assert summary.frames == FRAMES
    warning = [r.getMessage() for r in caplog.records if "has no input mask" in r.getMessage()]
    assert warning and "video late: frame 00000 has no input mask" in warning[0]
    assert "tracking starts at frame 00001" in warning[0]
    assert not read_mask_png(out / "late" / "00000.png").any()
    assert read_mask_png(out / "late" / "00001.png").any()


@pytest.mark.parametrize("case", ["empty_folder", "cut_jpeg"])
def test_cli_refuses_a_bad_video_folder_in_one_line(case: str, checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_dataset(root, ["good", "bad"])
    frames = root / "JPEGImages" / "bad"
    if case == "empty_folder":
        for path in frames.iterdir():
            path.unlink()
        expected = str(frames)
    else:
        cut = frames / "00002.jpg"
        cut.write_bytes(cut.read_bytes()[:200])
        expected = f"video bad: frame {cut} cannot be decoded"
    out = tmp_path / "pred"
    done = run_cli(root, checkpoint, out)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], done.stderr[-3000:]
    assert not (out / "bad").exists()
