"""Per-frame region similarity J and boundary accuracy F for every object of an id map, vectorised.

Definitions (those of the DAVIS toolkit and of vos-benchmark / SAM 2's SA-V evaluator):
- J = |G ∩ P| / |G ∪ P|, 1 when both are empty.
- Boundaries follow BSDS ``seg2bmap``: a pixel is on the boundary of a binary mask where the mask differs
  from its right, lower or lower-right neighbour inside the image (the border itself is never boundary).
- A boundary pixel is matched when the other mask's boundary has a pixel within a flat disk of radius
  ``ceil(0.008 * sqrt(H^2 + W^2))`` (x^2 + y^2 <= r^2, i.e. dilation by ``skimage.morphology.disk``).
  Precision is over the prediction's boundary, recall over the ground truth's; exactly one empty boundary
  gives F = 0, both empty F = 1; F = 2PR / (P + R), 0 when P + R = 0.

All objects of a frame are handled at once: boundaries are found on the id map itself (a pixel is on the
boundary of object k exactly when it or a compared neighbour has id k and the two ids differ), and
matches are counted with row prefix sums over each object's boundary bounding box, so no per-pixel Python
and no full-frame dilation run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BOUNDARY_FRACTION = 0.008


def boundary_radius(height: int, width: int) -> int:
    """Tolerance radius in pixels for a frame of this size: ceil(0.008 * diagonal)."""
    return int(np.ceil(BOUNDARY_FRACTION * np.linalg.norm((height, width))))


@lru_cache(maxsize=64)
def _disk_rectangles(radius: int) -> tuple[tuple[int, int], ...]:
    """A flat disk of this radius as a union of centred rectangles (half height, half width), largest first.

    Row dy of the disk spans |dx| <= floor(sqrt(r^2 - dy^2)); for every distinct span the rows reaching it
    form one rectangle.
    """
    spans = [math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)]
    rectangles = {(max(dy for dy in range(radius + 1) if spans[dy] >= span), span) for span in set(spans)}
    return tuple(sorted(rectangles, key=lambda hw: -(2 * hw[0] + 1) * (2 * hw[1] + 1)))


def _box_any(
    integral: np.ndarray, rows: np.ndarray, cols: np.ndarray, half_h: int, half_w: int
) -> np.ndarray:
    """Whether the rectangle rows±half_h, cols±half_w holds a target pixel, from an integral image."""
    box_h, box_w = integral.shape[0] - 1, integral.shape[1] - 1
    top = np.minimum(np.maximum(rows - half_h, 0), box_h)
    bottom = np.minimum(np.maximum(rows + half_h + 1, 0), box_h)
    left = np.minimum(np.maximum(cols - half_w, 0), box_w)
    right = np.minimum(np.maximum(cols + half_w + 1, 0), box_w)
    return integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left] > 0


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for 1-D integer arrays, several times faster (numpy 2's unique hashes first)."""
    ordered = np.sort(values)
    if ordered.size < 2:
        return ordered
    keep = np.empty(ordered.size, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def boundary_keys(ids: np.ndarray) -> np.ndarray:
    """Sorted keys ``id * H * W + y * W + x`` of every (boundary pixel, object id != 0) pair.

    Equals running seg2bmap on the binary mask ``ids == k`` for every k at once.
    """
    height, width = ids.shape
    changed = np.zeros((height, width), dtype=bool)
    np.not_equal(ids[:, :-1], ids[:, 1:], out=changed[:, :-1])
    changed[:-1, :] |= ids[:-1, :] != ids[1:, :]
    changed[:-1, :-1] |= ids[:-1, :-1] != ids[1:, 1:]
    flat = np.flatnonzero(changed)
    if flat.size == 0:
        return np.empty(0, dtype=np.int64)
    flat_ids = ids.reshape(-1)
    own = flat_ids[flat].astype(np.int64)
    rows, cols = np.divmod(flat, width)
    has_right = cols < width - 1
    has_below = rows < height - 1
    plane = height * width
    keys = [own * plane + flat]
    # An out-of-image neighbour reads the pixel itself, so it never counts as a change.
    for neighbour_index in (
        np.where(has_right, flat + 1, flat),
        np.where(has_below, flat + width, flat),
        np.where(has_right & has_below, flat + width + 1, flat),
    ):
        neighbour = flat_ids[neighbour_index].astype(np.int64)
        differs = neighbour != own
        keys.append(neighbour[differs] * plane + flat[differs])
    all_keys = np.concatenate(keys)
    return _sorted_unique(all_keys[all_keys >= plane])


def _matched(queries: np.ndarray, targets: np.ndarray, height: int, width: int, radius: int) -> np.ndarray:
    """For each query key, whether the target set holds a pixel of the same object within the disk.

    Per object, an integral image of the target boundary over its bounding box answers "is there a target
    pixel in this rectangle" in four look-ups; the disk is a union of a few rectangles, tried largest
    first on the queries not yet matched, after the enclosing square has ruled out the far ones.
    """
    hit = np.zeros(queries.size, dtype=bool)
    if queries.size == 0 or targets.size == 0:
        return hit
    plane = height * width
    query_objects = queries // plane
    target_objects = targets // plane
    common = set(_sorted_unique(query_objects).tolist()) & set(_sorted_unique(target_objects).tolist())
    for object_id in sorted(common):
        q_lo, q_hi = np.searchsorted(query_objects, [object_id, object_id + 1])
        t_lo, t_hi = np.searchsorted(target_objects, [object_id, object_id + 1])
        t_rows, t_cols = np.divmod(targets[t_lo:t_hi] - object_id * plane, width)
        top, left = int(t_rows[0]), int(t_cols.min())
        box_h, box_w = int(t_rows[-1]) - top + 1, int(t_cols.max()) - left + 1
        integral = np.zeros((box_h + 1, box_w + 1), dtype=np.int32)
        integral[t_rows - top + 1, t_cols - left + 1] = 1
        np.cumsum(integral, axis=0, out=integral)
        np.cumsum(integral, axis=1, out=integral)
        q_rows, q_cols = np.divmod(queries[q_lo:q_hi] - object_id * plane, width)
        q_rows -= top
        q_cols -= left
        pending = np.flatnonzero(_box_any(integral, q_rows, q_cols, radius, radius))
        found = np.zeros(q_hi - q_lo, dtype=bool)
        for half_h, half_w in _disk_rectangles(radius):
            if pending.size == 0:
                break
            inside = _box_any(integral, q_rows[pending], q_cols[pending], half_h, half_w)
            found[pending[inside]] = True
            pending = pending[~inside]
        hit[q_lo:q_hi] = found
    return hit


@dataclass(frozen=True)
class FrameScores:
    """J and F of every object present (ground truth or prediction) in one frame; ids ascending."""

    ids: np.ndarray
    j: np.ndarray
    f: np.ndarray
    in_gt: np.ndarray
    in_pred: np.ndarray

    def as_dict(self) -> dict[int, tuple[float, float]]:
        return {int(i): (float(j), float(f)) for i, j, f in zip(self.ids, self.j, self.f, strict=True)}


def _present_ids(gt: np.ndarray, pred: np.ndarray, gt_keys: np.ndarray, pred_keys: np.ndarray) -> np.ndarray:
    """Non-zero ids of either map, ascending, without a full-frame unique.

    An id that covers part of a frame has a boundary (the right/down pixel grid is connected, so some
    compared pair crosses the object's edge); an id without one covers the whole frame, and then it is
    the id of the top-left pixel.
    """
    plane = gt.size
    candidates = np.concatenate([gt_keys // plane, pred_keys // plane, [int(gt.flat[0]), int(pred.flat[0])]])
    ids = _sorted_unique(candidates.astype(np.int64))
    return ids[ids != 0]


def _areas(gt: np.ndarray, pred: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(|G|, |P|, |G ∩ P|) per id: a few byte compares per id, or one joint histogram for many ids."""
    if ids.size <= 8:
        gt_area, pred_area, inter = (np.zeros(ids.size, dtype=np.int64) for _ in range(3))
        for index, object_id in enumerate(ids.tolist()):
            in_gt, in_pred = gt == object_id, pred == object_id
            gt_area[index] = np.count_nonzero(in_gt)
            pred_area[index] = np.count_nonzero(in_pred)
            inter[index] = np.count_nonzero(np.logical_and(in_gt, in_pred, out=in_gt))
        return gt_area, pred_area, inter
    values = np.concatenate([[0], ids])
    gt_codes = np.searchsorted(values, gt.reshape(-1))
    pred_codes = np.searchsorted(values, pred.reshape(-1))
    gt_area = np.bincount(gt_codes, minlength=values.size)[1:]
    pred_area = np.bincount(pred_codes, minlength=values.size)[1:]
    inter = np.bincount(gt_codes[gt_codes == pred_codes], minlength=values.size)[1:]
    return gt_area, pred_area, inter


def score_frame(gt: np.ndarray, pred: np.ndarray) -> FrameScores:
    """J and F for every non-zero id in either map (same shape, integer ids; 0 is background)."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    height, width = gt.shape
    plane = height * width
    gt_keys, pred_keys = boundary_keys(gt), boundary_keys(pred)
    ids = _present_ids(gt, pred, gt_keys, pred_keys)
    gt_area, pred_area, inter = _areas(gt, pred, ids)
    union = gt_area + pred_area - inter
    j = np.where(union > 0, inter / np.maximum(union, 1), 1.0)

    radius = boundary_radius(height, width)
    pred_hit = _matched(pred_keys, gt_keys, height, width, radius)
    gt_hit = _matched(gt_keys, pred_keys, height, width, radius)
    # Per-id counts: ids are mapped to their position in `ids` (every boundary id is present).
    pred_pos = np.searchsorted(ids, pred_keys // plane)
    gt_pos = np.searchsorted(ids, gt_keys // plane)
    n_pred = np.bincount(pred_pos, minlength=ids.size)
    n_gt = np.bincount(gt_pos, minlength=ids.size)
    precision = np.bincount(pred_pos[pred_hit], minlength=ids.size) / np.maximum(n_pred, 1)
    recall = np.bincount(gt_pos[gt_hit], minlength=ids.size) / np.maximum(n_gt, 1)
    denominator = precision + recall
    f = np.where(denominator > 0, 2 * precision * recall / np.where(denominator > 0, denominator, 1), 0.0)
    f = np.where((n_pred == 0) & (n_gt == 0), 1.0, f)
    f = np.where((n_pred == 0) != (n_gt == 0), 0.0, f)
    return FrameScores(
        ids=ids, j=j.astype(np.float64), f=f.astype(np.float64), in_gt=gt_area > 0, in_pred=pred_area > 0
    )


def score_binary(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(J, F) of one object given as two binary masks of the same shape."""
    scores = score_frame((gt != 0).view(np.uint8), (pred != 0).view(np.uint8))
    return (float(scores.j[0]), float(scores.f[0])) if scores.ids.size else (1.0, 1.0)
