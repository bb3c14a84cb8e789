"""Video-level rules of the sav and davis2017 protocols, layouts, errors and the evaluate CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sam2.eval.evaluator import evaluate, evaluate_video
from sam2.eval.masks import MaskDataError, write_palette_png

SHAPE = (12, 12)
# Object id -> its 3x3 block; blocks are far apart so each object's score depends on its own masks only.
BLOCKS = {
    1: (slice(0, 3), slice(0, 3)),
    2: (slice(0, 3), slice(8, 11)),
    3: (slice(8, 11), slice(0, 3)),
    4: (slice(4, 7), slice(4, 7)),
    9: (slice(8, 11), slice(8, 11)),
    255: (slice(8, 11), slice(4, 7)),
    5: (slice(4, 7), slice(9, 12)),
}


def frame(ids: list[int], shape: tuple[int, int] = SHAPE) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for object_id in ids:
        out[BLOCKS[object_id]] = object_id
    return out


def write_video(root: Path, name: str, frames: list[np.ndarray]) -> None:
    for index, ids in enumerate(frames):
        write_palette_png(root / name / f"{index:05d}.png", ids)


def write_per_object(root: Path, name: str, frames: list[np.ndarray], object_ids: list[int]) -> None:
    for index, ids in enumerate(frames):
        for object_id in object_ids:
            write_palette_png(
                root / name / f"{object_id:03d}" / f"{index:05d}.png", (ids == object_id).astype(np.uint8)
            )


# Frames 0..5; 0 and 5 are skipped by default.
#  1: tracked perfectly everywhere.                          -> J = F = 1
#  2: in the ground truth from frame 3, predicted from frame 2 -> span 2..4: [0, 1, 1]
#  3: leaves (frame 2, absent in both) and returns; the prediction misses it in frame 4 -> [1, 1, 1, 0]
#  4: only in the first (skipped) ground-truth frame, predicted later -> not reported
#  9: prediction only -> not reported
#  255: an ordinary id; only in frame 1 -> span 1..4 all 1
GT_FRAMES = [
    frame([1, 3, 4]),
    frame([1, 3, 255]),
    frame([1]),
    frame([1, 2, 3]),
    frame([1, 2, 3]),
    frame([1, 2]),
]
PRED_FRAMES = [
    frame([1, 3, 4]),
    frame([1, 3, 255, 4]),
    frame([1, 2, 9]),
    frame([1, 2, 3, 9]),
    frame([1, 2]),
    frame([]),
]


@pytest.fixture
def sav_roots(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_video(gt, "clip", GT_FRAMES)
    write_video(pred, "clip", PRED_FRAMES)
    return gt, pred


def test_sav_protocol_spans_and_reported_objects(sav_roots) -> None:
    gt, pred = sav_roots
    video = evaluate_video(gt / "clip", pred / "clip")
    assert sorted(video.objects) == [1, 2, 3, 255]
    assert video.objects[1].j == 1.0 and video.objects[1].f == 1.0
    assert video.objects[2].frames == ["00002.png", "00003.png", "00004.png"]
    assert video.objects[2].j == pytest.approx(2 / 3) and video.objects[2].f == pytest.approx(2 / 3)
    assert list(video.objects[3].j_per_frame) == [1.0, 1.0, 1.0, 0.0]
    assert video.objects[255].j == 1.0 and len(video.objects[255].frames) == 4
    expected = (1 + 2 / 3 + 0.75 + 1) / 4
    assert video.j == pytest.approx(expected) and video.jf == pytest.approx(expected)


def test_without_skipping_first_and_last(sav_roots) -> None:
    gt, pred = sav_roots
    video = evaluate_video(gt / "clip", pred / "clip", skip_first_and_last=False)
    # Object 4 is now evaluated from frame 0: right in 0 and 1, then predicted but absent.
    assert sorted(video.objects) == [1, 2, 3, 4, 255]
    assert list(video.objects[4].j_per_frame) == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    # Object 2 in the last frame: ground truth present, prediction empty.
    assert video.objects[2].j_per_frame[-1] == 0.0


def test_global_means_are_over_video_object_pairs(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    # Video a: one object, perfect. Video b: three objects, one missed entirely; 20x16 frames.
    write_video(gt, "a", [frame([1])] * 3)
    write_video(pred, "a", [frame([1])] * 3)
    big = (20, 16)
    write_video(gt, "b", [frame([1, 2, 3], big)] * 3)
    write_video(pred, "b", [frame([1, 2], big)] * 3)
    result = evaluate(gt, pred, num_processes=1, progress=False)
    assert result.videos["b"].jf == pytest.approx(2 / 3)
    assert result.j == pytest.approx(3 / 4) and result.f == pytest.approx(3 / 4)  # not (1 + 2/3) / 2
    out = result.to_dict()
    assert out["J&F"] == pytest.approx(75.0)
    assert out["per_video"]["b"]["per_object"]["3"] == {"J": 0.0, "F": 0.0}


def test_two_frame_video_has_no_evaluated_frame_unless_told(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_video(gt, "short", [frame([1]), frame([1])])
    write_video(pred, "short", [frame([1]), frame([])])
    write_video(gt, "long", [frame([1])] * 3)
    write_video(pred, "long", [frame([1])] * 3)
    result = evaluate(gt, pred, num_processes=1, progress=False)
    assert result.videos["short"].num_frames == 0 and result.videos["short"].jf is None
    assert result.to_dict()["per_video"]["short"] == {"J&F": None, "J": None, "F": None, "per_object": {}}
    assert result.jf == 1.0
    scored = evaluate(gt, pred, num_processes=1, progress=False, skip_first_and_last=False)
    assert scored.videos["short"].j == 0.5
    with pytest.raises(MaskDataError, match="do_not_skip_first_and_last_frame"):
        evaluate(gt, pred, videos=["short"], num_processes=1, progress=False)


def test_davis2017_protocol(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    void = frame([3, 255])  # 255 is void in DAVIS: read as background, N = 3
    # Object 2 is never present (scored as 1 on every frame); 5 > N in the ground truth is ignored;
    # object 3 is missed in frames 1 and 2.
    write_video(gt, "d", [void, frame([3, 5]), frame([3]), frame([3]), frame([3]), frame([3])])
    write_video(pred, "d", [void * 0, frame([]), frame([]), frame([3]), frame([3]), frame([1])])
    video = evaluate_video(gt / "d", pred / "d", protocol="davis2017")
    assert sorted(video.objects) == [1, 2, 3]
    assert video.objects[1].j == 1.0 and video.objects[2].j == 1.0
    assert list(video.objects[3].j_per_frame) == [0.0, 0.0, 1.0, 1.0]
    sav = evaluate_video(gt / "d", pred / "d", protocol="sav")
    assert sorted(sav.objects) == [3, 5]  # sav reports what the ground truth holds, 255-free here

    write_palette_png(pred / "d" / "00002.png", frame([3, 9]))
    with pytest.raises(MaskDataError, match=r"00002.png.*\[9\].*3 objects"):
        evaluate_video(gt / "d", pred / "d", protocol="davis2017")


def test_per_object_prediction_layout_scores_like_palette(sav_roots, tmp_path: Path) -> None:
    gt, pred = sav_roots
    per_object = tmp_path / "per_object"
    write_per_object(per_object, "clip", PRED_FRAMES, [1, 2, 3, 4, 9, 255])
    palette = evaluate(gt, pred, num_processes=1, progress=False).to_dict()
    objects = evaluate(gt, per_object, num_processes=1, progress=False).to_dict()
    assert objects == palette
    both = evaluate(per_object, per_object, num_processes=1, progress=False)
    assert both.jf == 1.0


def test_errors_name_the_file_and_propagate_from_workers(sav_roots, tmp_path: Path) -> None:
    gt, pred = sav_roots
    write_video(gt, "other", [frame([1])] * 4)
    write_video(pred, "other", [frame([1])] * 4)
    (pred / "clip" / "00003.png").unlink()
    with pytest.raises(MaskDataError, match=r"clip/00003.png.*missing"):
        evaluate(gt, pred, num_processes=2, progress=False)

    write_palette_png(pred / "clip" / "00003.png", frame([1], (12, 13)))
    with pytest.raises(MaskDataError, match=r"size mismatch.*00003.png.*12x12.*13x12"):
        evaluate(gt, pred, num_processes=1, progress=False)

    (pred / "clip" / "00003.png").write_bytes(b"junk")
    with pytest.raises(MaskDataError, match=r"00003.png.*decode"):
        evaluate(gt, pred, num_processes=2, progress=False)

    with pytest.raises(MaskDataError, match="prediction folders missing.*nowhere"):
        write_video(gt, "nowhere", [frame([1])] * 3)
        evaluate(gt, pred, num_processes=1, progress=False)
    with pytest.raises(MaskDataError, match="not found under the ground-truth root.*ghost"):
        evaluate(gt, pred, videos=["ghost"], num_processes=1, progress=False)


def test_cli_round_trip(sav_roots, tmp_path: Path) -> None:
    gt, pred = sav_roots
    write_video(gt, "extra", [frame([1])] * 3)
    write_video(pred, "extra", [frame([])] * 3)
    video_list = tmp_path / "val.txt"
    video_list.write_text("clip\n\n")
    out = tmp_path / "metrics" / "scores.json"
    command = [sys.executable, "-m", "sam2.tools.evaluate", "--gt_root", str(gt), "--pred_root", str(pred)]
    done = subprocess.run(
        [
            *command,
            "--video_list_file",
            str(video_list),
            "-n",
            "2",
            "--output_json",
            str(out),
            "--report_dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    scores = json.loads(out.read_text())
    expected = 100 * (1 + 2 / 3 + 0.75 + 1) / 4
    assert set(scores) == {"J&F", "J", "F", "per_video"}
    assert list(scores["per_video"]) == ["clip"]
    assert scores["J&F"] == pytest.approx(expected)
    assert set(scores["per_video"]["clip"]["per_object"]) == {"1", "2", "3", "255"}
    assert f"J&F: {expected:.2f}" in done.stdout
    assert "| clip | 4 | 4 |" in (tmp_path / "report" / "report.md").read_text()

    failed = subprocess.run([*command, "--protocol", "davis2017"], capture_output=True, text=True)
    assert failed.returncode == 2
    assert "exceed" in failed.stderr and "Traceback" not in failed.stderr
