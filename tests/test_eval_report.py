"""The Markdown report: table, bar chart, overlays of the worst frames, embeddable images."""

from __future__ import annotations

import base64
import io
import re
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2.eval.evaluator import evaluate
from sam2.eval.masks import write_palette_png
from sam2.eval.report import worst_frames, write_report


def make_data(root: Path) -> None:
    """Three videos of 5 frames (24x32): 'good' is perfect, 'bad' misses its object from frame 2."""
    for name, miss_from in (("good", 99), ("bad", 2), ("half", 3)):
        for t in range(5):
            gt = np.zeros((24, 32), np.uint8)
            gt[4:12, 4 + t : 14 + t] = 1
            gt[14:20, 20:28] = 2
            pred = gt.copy()
            if t >= miss_from:
                pred[pred == 1] = 0
            write_palette_png(root / "gt" / name / f"{t:05d}.png", gt)
            write_palette_png(root / "pred" / name / f"{t:05d}.png", pred)
            (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((24, 32, 3), 40 * t, np.uint8)).save(
                root / "JPEGImages" / name / f"{t:05d}.jpg"
            )


def test_report_files_table_and_worst_frames(tmp_path: Path) -> None:
    make_data(tmp_path)
    result = evaluate(tmp_path / "gt", tmp_path / "pred", num_processes=1, progress=False)
    bad = result.videos["bad"]
    worst = worst_frames(bad, 2)
    assert [w.frame for w in worst] == ["00002.png", "00003.png"]
    assert worst[0].per_object_j == {1: 0.0, 2: 1.0}

    out = tmp_path / "report"
    markdown = write_report(
        result,
        out,
        tmp_path / "gt",
        tmp_path / "pred",
        tmp_path / "JPEGImages",
        worst_videos=2,
        frames_per_video=2,
    )
    assert (out / "report.md").read_text() == markdown
    rows = [
        line for line in markdown.splitlines() if line.startswith("| ") and line[2:5] not in ("vid", "---")
    ]
    assert [row.split("|")[1].strip() for row in rows] == ["bad", "half", "good"]  # worst first
    assert "| bad | 2 | 3 | 66.7 | 66.7 | 66.7 |" in markdown
    with Image.open(out / "jf_per_video.png") as chart:
        assert chart.size[0] > 300
    overlays = sorted(p.name for p in out.glob("overlay_*.png"))
    assert overlays == [
        "overlay_bad_00002.png",
        "overlay_bad_00003.png",
        "overlay_half_00001.png",
        "overlay_half_00003.png",
    ]
    with Image.open(out / "overlay_bad_00002.png") as overlay:
        panel = np.asarray(overlay.convert("RGB"))
    assert panel.shape == (24, 2 * 32 + 8, 3)
    # The video frame shows through the background; object 1 is painted on the left (GT) only.
    assert tuple(panel[0, 0]) == (80, 80, 80)
    assert (panel[6, 8] != panel[6, 8 + 40]).any()
    for name in ["jf_per_video.png", *overlays]:
        assert f"]({name})" in markdown


def test_embedded_images_are_data_uris(tmp_path: Path) -> None:
    make_data(tmp_path)
    result = evaluate(tmp_path / "gt", tmp_path / "pred", num_processes=1, progress=False)
    markdown = write_report(result, tmp_path / "r", tmp_path / "gt", tmp_path / "pred", embed_images=True)
    uris = re.findall(r"\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert len(uris) == 1 + 3 * 2
    Image.open(io.BytesIO(base64.b64decode(uris[0]))).verify()
    assert "](jf_per_video.png)" in (tmp_path / "r" / "report.md").read_text()


def make_three_models(root: Path) -> None:
    """GT for videos a, b, c (5 frames 24x32, one object) and masks of three models: the champion is
    perfect on a, the new model loses object 1 on a from frame 1 and gains on c; the baseline predicts
    nothing after the first frame."""
    for name in ("a", "b", "c"):
        for t in range(5):
            gt = np.zeros((24, 32), np.uint8)
            gt[4:14, 4 + t : 16 + t] = 1
            write_palette_png(root / "gt" / name / f"{t:05d}.png", gt)
            empty = gt if t == 0 else np.zeros_like(gt)
            champion = gt if name != "c" or t < 2 else empty
            new = gt if name != "a" or t < 1 else empty
            for model, mask in (("baseline", empty), ("champion", champion), ("new", new)):
                write_palette_png(root / model / name / f"{t:05d}.png", mask)


def test_comparison_report_shows_all_three_models_the_change_and_the_curves(tmp_path: Path) -> None:
    from sam2.eval.report import write_comparison_report

    make_three_models(tmp_path)
    keys = ("baseline", "champion", "new")
    results = {k: evaluate(tmp_path / "gt", tmp_path / k, num_processes=1, progress=False) for k in keys}
    curves = {"train_loss": [(0, 1.0), (1, 0.6)], "val_J&F": [(0, 5.0), (1, 9.5)]}
    curves["train_loss_per_step"] = [(step, 1.0 / (step + 1)) for step in range(40)]
    out = tmp_path / "report"
    markdown = write_comparison_report(
        results,
        out,
        tmp_path / "gt",
        {k: tmp_path / k for k in keys},
        labels={"baseline": "baseline (zero-shot)", "champion": "champion sam2-demo v3", "new": "new"},
        curves=curves,
        worst_videos=1,
        frames_per_video=1,
    )
    assert (out / "report.md").read_text() == markdown
    summary = [
        line for line in markdown.splitlines() if line.startswith(("| baseline", "| champion", "| new"))
    ]
    assert [row.split(":")[0] for row in summary] == ["| baseline", "| champion", "| new"]
    new_jf, champion_jf = 100 * results["new"].jf, 100 * results["champion"].jf
    assert f"| {100 * results['new'].jf:.1f} |" in summary[2]
    assert f"{new_jf - champion_jf:+.1f}" in summary[1]
    # Per-video rows sorted by the change against the champion, most lost first: a (lost), b (0), c (won).
    rows = [line for line in markdown.splitlines() if line.startswith(("| a |", "| b |", "| c |"))]
    assert [row.split("|")[1].strip() for row in rows] == ["a", "b", "c"]
    assert (
        rows[0]
        .rstrip(" |")
        .endswith(f"{100 * (results['new'].videos['a'].jf - results['champion'].videos['a'].jf):+.1f}")
    )
    for image in ("jf_change_per_video.png", "curves.png"):
        with Image.open(out / image) as png:
            assert png.size[0] > 300
        assert f"]({image})" in markdown
    # The video the new model lost most on, with GT, the new and the champion's masks side by side.
    overlays = sorted(p.name for p in out.glob("compare_*.png"))
    assert len(overlays) == 1 and overlays[0].startswith("compare_a_")
    with Image.open(out / overlays[0]) as panel:
        assert panel.size == (3 * 32 + 2 * 8, 24)
    assert "Videos where the new model lost most against the champion" in markdown


def test_comparison_report_says_which_models_were_not_scored(tmp_path: Path) -> None:
    from sam2.eval.report import write_comparison_report

    make_three_models(tmp_path)
    results = {"new": evaluate(tmp_path / "gt", tmp_path / "new", num_processes=1, progress=False)}
    skipped = {"baseline": "training started from random weights", "champion": "no champion registered yet"}
    markdown = write_comparison_report(
        results, tmp_path / "r", tmp_path / "gt", {"new": tmp_path / "new"}, skipped=skipped
    )
    assert "- baseline not scored: training started from random weights" in markdown
    assert "- champion not scored: no champion registered yet" in markdown
    assert "| champion | not scored |" in markdown and "no per-video change" in markdown
    assert "curves.png" not in markdown  # no curves given, none drawn


def test_training_curves_come_from_the_runs_tensorboard_logs(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from sam2.eval.training_curves import read_training_curves

    writer = SummaryWriter(str(tmp_path / "tb"))
    for epoch in range(3):
        writer.add_scalar("train_epoch/core_loss", 1.0 / (epoch + 1), epoch)
        writer.add_scalar("train/core_loss", 9.0, epoch)  # per step: its own curve
        writer.add_scalar("val/J&F", 10.0 * epoch, epoch)
    writer.close()
    resumed = SummaryWriter(str(tmp_path / "tb" / "resumed"))  # a resumed run logs epoch 2 again
    resumed.add_scalar("val/J&F", 25.0, 2)
    resumed.close()
    curves = read_training_curves(tmp_path / "tb")
    assert curves["train_loss"] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert curves["val_J&F"] == [(0, 0.0), (1, 10.0), (2, 25.0)]
    assert curves["train_loss_per_step"] == [(0, 9.0), (1, 9.0), (2, 9.0)]
    assert read_training_curves(tmp_path / "missing") == {
        "train_loss": [],
        "train_loss_per_step": [],
        "val_J&F": [],
    }


def test_a_video_named_with_a_space_keeps_its_image_links(tmp_path: Path) -> None:
    """`![..](overlay_my clip (2)_00002.png)` ended the link at the space; link targets are percent-encoded."""
    make_data(tmp_path)
    for part in ("gt", "pred", "JPEGImages"):
        (tmp_path / part / "bad").rename(tmp_path / part / "my clip (2)")
    result = evaluate(tmp_path / "gt", tmp_path / "pred", num_processes=1, progress=False)
    out = tmp_path / "report"
    markdown = write_report(
        result,
        out,
        tmp_path / "gt",
        tmp_path / "pred",
        tmp_path / "JPEGImages",
        worst_videos=1,
        frames_per_video=1,
    )
    assert (out / "overlay_my clip (2)_00002.png").is_file()
    assert "](overlay_my%20clip%20%282%29_00002.png)" in markdown
    targets = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown)
    assert targets and all((out / urllib.parse.unquote(t)).is_file() for t in targets)
    embedded = write_report(
        result,
        tmp_path / "embedded",
        tmp_path / "gt",
        tmp_path / "pred",
        tmp_path / "JPEGImages",
        worst_videos=1,
        frames_per_video=1,
        embed_images=True,
    )
    assert not re.findall(r"!\[[^\]]*\]\((?!data:)[^)]*\)", embedded)
