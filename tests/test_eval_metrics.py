"""J and F per frame: hand-computed cases and a per-pixel reference written from the definitions."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from sam2.eval.masks import MaskDataError, read_mask_png, write_palette_png
from sam2.eval.metrics import boundary_keys, boundary_radius, score_binary, score_frame


def naive_boundary(mask: np.ndarray) -> np.ndarray:
    """seg2bmap by the letter: differs from the right, lower or lower-right neighbour inside the image."""
    height, width = mask.shape
    out = np.zeros_like(mask, dtype=bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        out[: height - dy, : width - dx] |= mask[: height - dy, : width - dx] != mask[dy:, dx:]
    return out


def naive_jf(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    union = np.logical_or(gt, pred).sum()
    j = 1.0 if union == 0 else np.logical_and(gt, pred).sum() / union
    radius = math.ceil(0.008 * math.sqrt(gt.shape[0] ** 2 + gt.shape[1] ** 2))
    gb, pb = naive_boundary(gt), naive_boundary(pred)

    def matched(points: np.ndarray, others: np.ndarray) -> int:
        squared = ((np.argwhere(points)[:, None, :] - np.argwhere(others)[None, :, :]) ** 2).sum(axis=2)
        return int((squared <= radius * radius).any(axis=1).sum())

    n_p, n_g = pb.sum(), gb.sum()
    if n_p == 0 and n_g == 0:
        return j, 1.0
    if n_p == 0 or n_g == 0:
        return j, 0.0
    precision, recall = matched(pb, gb) / n_p, matched(gb, pb) / n_g
    return j, 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def block(shape: tuple[int, int], rows: slice, cols: slice, value: int = 1) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[rows, cols] = value
    return out


def test_radius_is_ceil_of_0008_diagonal() -> None:
    assert boundary_radius(480, 854) == 8  # 0.008 * 979.6 = 7.84
    assert boundary_radius(1080, 1920) == 18  # 17.62
    assert boundary_radius(100, 100) == 2  # 1.13
    assert boundary_radius(12, 12) == 1  # 0.136


def test_boundary_of_a_single_pixel_is_the_2x2_block_towards_the_origin() -> None:
    mask = block((4, 4), slice(1, 2), slice(1, 2), value=7)
    keys = boundary_keys(mask)
    plane = mask.size
    assert set((keys // plane).tolist()) == {7}
    assert sorted(divmod(int(k % plane), 4) for k in keys) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_image_border_is_never_boundary() -> None:
    full = np.ones((5, 6), np.uint8)
    assert boundary_keys(full).size == 0
    # An object in the bottom-right corner: the corner pixel itself is not boundary, its neighbours are.
    corner = block((5, 6), slice(4, 5), slice(5, 6))
    plane = corner.size
    assert sorted(divmod(int(k % plane), 6) for k in boundary_keys(corner)) == [(3, 4), (3, 5), (4, 4)]


def test_shifted_block_hand_computed() -> None:
    # 12x12 frame: radius 1 (a plus-shaped disk). 3x3 blocks; boundaries are 4x4 rings.
    gt = block((12, 12), slice(1, 4), slice(1, 4))
    by_one = block((12, 12), slice(1, 4), slice(2, 5))
    by_two = block((12, 12), slice(1, 4), slice(3, 6))
    assert score_binary(gt, by_one) == pytest.approx((6 / 12, 1.0))
    assert score_binary(gt, by_two) == pytest.approx((3 / 15, 2 / 3))  # 4 of 12 ring pixels 2 px away


def test_empty_boundary_rules() -> None:
    empty = np.zeros((10, 10), np.uint8)
    full = np.ones((10, 10), np.uint8)
    small = block((10, 10), slice(2, 5), slice(2, 5))
    assert score_binary(empty, empty) == (1.0, 1.0)  # both empty: J = F = 1
    assert score_binary(small, empty) == (0.0, 0.0)  # one boundary empty: F = 0
    assert score_binary(empty, small) == (0.0, 0.0)
    # A full-frame mask has no boundary; against an empty one both boundaries are empty, so F = 1.
    assert score_binary(full, empty) == (0.0, 1.0)
    assert score_binary(full, small) == pytest.approx((9 / 100, 0.0))


def test_disk_not_square_tolerance() -> None:
    # 100x100 frame: radius 2. A vertical edge moved 2 columns is inside the tolerance, 3 is not.
    gt = block((100, 100), slice(0, 100), slice(0, 50))
    assert score_binary(gt, block((100, 100), slice(0, 100), slice(0, 52)))[1] == 1.0
    assert score_binary(gt, block((100, 100), slice(0, 100), slice(0, 53)))[1] == 0.0
    # Lone pixels at (10, 10) and (13, 12): their 2x2 boundary blocks are closest at offset (2, 1),
    # inside a 5x5 square but outside the disk (4 + 1 > 4), so nothing matches.
    a = block((100, 100), slice(10, 11), slice(10, 11))
    b = block((100, 100), slice(13, 14), slice(12, 13))
    assert score_binary(a, b) == (0.0, 0.0)
    b_near = block((100, 100), slice(12, 13), slice(12, 13))  # closest offset (1, 1): inside the disk
    assert score_binary(a, b_near)[1] > 0


@pytest.mark.parametrize("seed", range(4))
def test_matches_per_pixel_reference_on_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(8):
        height, width = rng.integers(2, 30, 2) if rng.random() < 0.8 else rng.integers(100, 120, 2)
        ids = [1, 2, 255] if rng.random() < 0.5 else list(range(1, 12))  # > 8 ids takes the histogram path
        gt = np.zeros((height, width), np.uint8)
        for object_id in ids:
            y, x = rng.integers(0, height), rng.integers(0, width)
            gt[y : y + rng.integers(1, height), x : x + rng.integers(1, width)] = object_id
        gt[rng.random((height, width)) < 0.03] = ids[0]
        pred = np.roll(gt, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        pred[rng.random((height, width)) < 0.02] = 0
        scores = score_frame(gt, pred).as_dict()
        present = sorted(set(np.unique(gt)) | set(np.unique(pred)) - {0})
        assert sorted(scores) == [int(i) for i in present if i != 0]
        for object_id, (j, f) in scores.items():
            ref_j, ref_f = naive_jf(gt == object_id, pred == object_id)
            assert j == pytest.approx(ref_j, abs=1e-12)
            assert f == pytest.approx(ref_f, abs=1e-12)


def test_sixteen_bit_ids_are_scored() -> None:
    gt = np.zeros((20, 20), np.uint16)
    gt[2:8, 2:8] = 1000
    pred = gt.copy()
    pred[2:8, 2:5] = 0
    scores = score_frame(gt, pred).as_dict()
    assert list(scores) == [1000]
    assert scores[1000] == pytest.approx(naive_jf(gt == 1000, pred == 1000))


def _png_bytes(image: Image.Image, **options) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format="PNG", **options)
    return stream.getvalue()


@pytest.mark.parametrize(
    ("mode", "options"),
    [("P", {}), ("P", {"bits": 4}), ("L", {}), ("L", {"optimize": True}), ("1", {}), ("I;16", {})],
)
def test_mask_reader_equals_pil(tmp_path, mode: str, options: dict) -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2 if mode == "1" else 12, (33, 47)).astype(
        np.uint16 if mode == "I;16" else np.uint8
    )
    values[:, :10] = np.arange(10)  # gradients make PIL pick row filters for gray images
    image = Image.fromarray(values.astype(bool) if mode == "1" else values, mode=None if mode != "P" else "P")
    if mode == "P":
        image.putpalette(list(range(48)))
    path = tmp_path / "mask.png"
    path.write_bytes(_png_bytes(image, **options))
    with Image.open(path) as reference:
        expected = np.asarray(reference).astype(np.int64)
    np.testing.assert_array_equal(read_mask_png(path).astype(np.int64), expected)


def test_unreadable_and_rgb_masks_are_named(tmp_path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(MaskDataError, match="garbage.png"):
        read_mask_png(garbage)
    truncated = tmp_path / "truncated.png"
    write_palette_png(truncated, block((30, 30), slice(3, 9), slice(3, 9)))
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(MaskDataError, match="truncated.png"):
        read_mask_png(truncated)
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4)).save(rgb)
    with pytest.raises(MaskDataError, match="rgb.png.*palette"):
        read_mask_png(rgb)
    with pytest.raises(MaskDataError, match="missing.png"):
        read_mask_png(tmp_path / "missing.png")
