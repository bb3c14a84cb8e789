"""Small helpers behind the memory bank and click simulation: conditioning-frame selection, temporal sine
encodings, simulated corrective clicks and box prompts, and frame ordering."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sam2.modeling.sam2_utils import (
    get_1d_sine_pe,
    sample_box_points,
    sample_one_point_from_error_center,
    sample_random_points_from_errors,
    select_closest_cond_frames,
)
from sam2.utils.misc import list_jpeg_frames, mask_to_box


def test_closest_cond_frames_keep_both_neighbours() -> None:
    outputs = {t: {"t": t} for t in (0, 10, 20, 30, 40)}
    chosen, rest = select_closest_cond_frames(22, outputs, max_cond_frame_num=3)
    assert sorted(chosen) == [10, 20, 30] and sorted(rest) == [0, 40]
    everything, none = select_closest_cond_frames(22, outputs, max_cond_frame_num=-1)
    assert everything is outputs and none == {}
    with pytest.raises(ValueError, match="at least 2"):
        select_closest_cond_frames(22, outputs, max_cond_frame_num=1)


def test_sine_pe_is_sin_then_cos() -> None:
    pe = get_1d_sine_pe(torch.tensor([0.0, 0.5]), dim=8)
    assert pe.shape == (2, 8)
    torch.testing.assert_close(pe[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_corrective_clicks_land_in_the_error() -> None:
    gt = torch.zeros(2, 1, 30, 30, dtype=torch.bool)
    gt[:, :, 5:25, 5:25] = True
    pred = gt.clone()
    pred[0] = False  # object 0 missed entirely: positive click inside it
    pred[1, :, 0:4, 0:30] = True  # object 1 spills over the top rows: negative click there
    points, labels = sample_random_points_from_errors(gt, pred, num_pt=3)
    assert points.shape == (2, 3, 2) and labels.tolist() == [[1, 1, 1], [0, 0, 0]]
    x, y = points[0].long().T
    assert gt[0, 0, y, x].all()
    x, y = points[1].long().T
    assert (y < 4).all()

    center, center_labels = sample_one_point_from_error_center(gt, pred)
    assert center_labels.tolist() == [[1], [0]]
    assert center[0, 0].tolist() in ([14.0, 14.0], [15.0, 15.0], [14.0, 15.0], [15.0, 14.0])


def test_box_prompt_from_mask() -> None:
    masks = torch.zeros(1, 1, 20, 30, dtype=torch.bool)
    masks[0, 0, 4:9, 10:21] = True
    assert mask_to_box(masks).tolist() == [[[10, 4, 20, 8]]]
    coords, labels = sample_box_points(masks, noise=0.0)
    assert coords.tolist() == [[[10.0, 4.0], [20.0, 8.0]]] and labels.tolist() == [[2, 3]]
    noisy, _ = sample_box_points(masks, noise=0.5, noise_bound=3)
    assert (noisy - coords).abs().max() <= 3 and noisy.min() >= 0


def test_frames_sorted_by_integer_name(tmp_path: Path) -> None:
    for name in ("10.jpg", "2.jpg", "1.jpeg", "notes.txt"):
        if name.endswith(("jpg", "jpeg")):
            Image.new("RGB", (4, 4)).save(tmp_path / name)
        else:
            (tmp_path / name).write_text("ignored")
    assert [Path(p).name for p in list_jpeg_frames(tmp_path)] == ["1.jpeg", "2.jpg", "10.jpg"]
    with pytest.raises(NotADirectoryError, match="not a folder"):
        list_jpeg_frames(tmp_path / "2.jpg")
