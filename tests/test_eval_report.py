"""The Markdown report: table, bar chart, overlays of the worst frames, embeddable images."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
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
