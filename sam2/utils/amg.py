"""Building blocks of automatic mask generation: point grids, crop boxes, run-length encodings, boxes
around masks, stability scores and a small column store for per-mask results (`MaskData`).

Same names, arguments and results as the official `sam2.utils.amg`, so code written against it runs
unchanged. Connected components come from `sam2.utils.misc.get_connected_components` (pure torch), so
small-region removal needs no OpenCV.
"""

from __future__ import annotations

import math
from collections.abc import ItemsView, Iterator, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import torch

from sam2.utils.misc import get_connected_components

_COLUMN_TYPES = (list, np.ndarray, torch.Tensor)


def _check_column(key: str, value: Any) -> None:
    if not isinstance(value, _COLUMN_TYPES):
        raise TypeError(
            f"MaskData column {key!r} must be a list, numpy array or torch tensor, got {type(value).__name__}"
        )


class MaskData:
    """Per-mask results as named columns of equal length (lists, numpy arrays or tensors), filtered and
    concatenated together so every column stays aligned with the others."""

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            _check_column(key, value)
        self._stats: dict[str, Any] = dict(kwargs)

    def __setitem__(self, key: str, item: Any) -> None:
        _check_column(key, item)
        self._stats[key] = item

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str) -> Any:
        return self._stats[key]

    def items(self) -> ItemsView[str, Any]:
        return self._stats.items()

    def filter(self, keep: torch.Tensor) -> None:
        """Keep the rows selected by `keep`: a bool mask over the rows or a tensor of row indices."""
        keep_t = torch.as_tensor(keep)
        is_mask = keep_t.dtype == torch.bool
        rows = torch.nonzero(keep_t).flatten() if is_mask else keep_t.flatten()
        row_list = rows.tolist()
        for key, value in self._stats.items():
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                self._stats[key] = value[keep_t.to(value.device)]
            elif isinstance(value, np.ndarray):
                self._stats[key] = value[keep_t.cpu().numpy()]
            elif isinstance(value, list):
                self._stats[key] = [value[i] for i in row_list]
            else:  # pragma: no cover - __setitem__ refuses other types
                raise TypeError(f"MaskData column {key!r} has an unsupported type {type(value).__name__}")

    def cat(self, new_stats: MaskData) -> None:
        """Append the rows of `new_stats` (columns missing here are copied over)."""
        for key, value in new_stats.items():
            current = self._stats.get(key)
            if current is None:
                self._stats[key] = deepcopy(value)
            elif isinstance(value, torch.Tensor):
                self._stats[key] = torch.cat([current, value], dim=0)
            elif isinstance(value, np.ndarray):
                self._stats[key] = np.concatenate([current, value], axis=0)
            elif isinstance(value, list):
                self._stats[key] = current + deepcopy(value)
            else:
                raise TypeError(f"MaskData column {key!r} has an unsupported type {type(value).__name__}")

    def to_numpy(self) -> None:
        """Turn every tensor column into a float32 numpy array on the CPU."""
        for key, value in self._stats.items():
            if isinstance(value, torch.Tensor):
                self._stats[key] = value.detach().float().cpu().numpy()


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """[N] bool: whether each crop-frame XYXY box lies within `atol` pixels of an edge of `crop_box` that
    is not also an edge of the whole image `orig_box` (such masks are likely cut off by the crop)."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)[None]
    image = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)[None]
    in_image = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = (in_image - crop).abs() <= atol
    near_image = (in_image - image).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


def box_xyxy_to_xywh(box_xyxy: torch.Tensor) -> torch.Tensor:
    """One XYXY box -> XYWH (a copy; numpy arrays and tensors alike)."""
    box = deepcopy(box_xyxy)
    box[2] = box[2] - box[0]
    box[3] = box[3] - box[1]
    return box


def batch_iterator(batch_size: int, *args: Sequence[Any]) -> Iterator[list[Any]]:
    """Slices of `batch_size` rows taken in step from each of `args` (all of the same length)."""
    if not args or any(len(arg) != len(args[0]) for arg in args):
        raise ValueError("batch_iterator needs at least one sequence, all of the same length")
    total = len(args[0])
    for start in range(0, total, batch_size):
        yield [arg[start : start + batch_size] for arg in args]


def mask_to_rle_pytorch(tensor: torch.Tensor) -> list[dict[str, Any]]:
    """Bool masks [B, H, W] -> uncompressed RLEs in pycocotools' layout: column-major run lengths that
    start with a background run (0 when the first pixel is foreground), {"size": [H, W], "counts": [...]}."""
    batch, height, width = tensor.shape
    columns_first = tensor.permute(0, 2, 1).flatten(1)
    n_pix = height * width
    # Positions where a new run starts (a pixel differing from the previous one), per mask.
    mask_idx, change_at = torch.nonzero(columns_first[:, 1:] != columns_first[:, :-1], as_tuple=True)
    change_at = (change_at + 1).cpu()
    per_mask = torch.bincount(mask_idx.cpu(), minlength=batch).tolist()
    first_is_fg = columns_first[:, 0].cpu().tolist() if n_pix else [False] * batch
    rles = []
    offset = 0
    for idx in range(batch):
        starts = change_at[offset : offset + per_mask[idx]]
        offset += per_mask[idx]
        bounds = torch.cat([torch.zeros(1, dtype=starts.dtype), starts, torch.full((1,), n_pix)])
        counts = ([0] if first_is_fg[idx] else []) + torch.diff(bounds).tolist()
        rles.append({"size": [height, width], "counts": counts})
    return rles


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """An uncompressed RLE (see `mask_to_rle_pytorch`) -> bool mask [H, W]."""
    height, width = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T


def area_from_rle(rle: dict[str, Any]) -> int:
    """Foreground pixel count of an uncompressed RLE (the sum of its odd-position runs)."""
    return sum(rle["counts"][1::2])


def calculate_stability_score(
    masks: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """IoU of each logit mask [..., H, W] binarised at threshold + offset and at threshold - offset: close
    to 1 when the mask barely moves as the cutoff shifts. The stricter mask lies inside the looser one, so
    the IoU is a ratio of pixel counts."""
    inner = (masks > mask_threshold + threshold_offset).flatten(-2).sum(-1, dtype=torch.int32)
    outer = (masks > mask_threshold - threshold_offset).flatten(-2).sum(-1, dtype=torch.int32)
    return inner / outer


def build_point_grid(n_per_side: int) -> np.ndarray:
    """[n*n, 2] (x, y) points at the centres of an n x n grid of cells over [0, 1]^2, x varying fastest."""
    half_cell = 1 / (2 * n_per_side)
    ticks = np.linspace(half_cell, 1 - half_cell, n_per_side)
    grid_y, grid_x = np.meshgrid(ticks, ticks, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=-1)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One point grid per crop layer (layer 0 is the whole image): layer i has
    int(n_per_side / scale_per_layer**i) points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**layer))) for layer in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, ...], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY) and their layer indices: the whole image (layer 0), then for layer i >= 1 a
    2**i x 2**i set of overlapping crops (overlap `overlap_ratio` of the short side, scaled by 2 / 2**i),
    ordered column by column."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers = [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + im_w) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + im_h) / per_side))
        for col in range(per_side):
            x0 = int((crop_w - overlap) * col)
            for row in range(per_side):
                y0 = int((crop_h - overlap) * row)
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(layer)
    return boxes, layers


def _crop_offset(crop_box: list[int], like: torch.Tensor, coords: int) -> torch.Tensor:
    x0, y0 = crop_box[0], crop_box[1]
    offset = torch.tensor([x0, y0] * (coords // 2), device=like.device)
    # Broadcast over a leading batch and an optional channel dimension.
    return offset.reshape((1,) * (like.dim() - 1) + (coords,))


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """XYXY boxes [N, 4] or [N, C, 4] in a crop's frame -> the whole image's frame."""
    return boxes + _crop_offset(crop_box, boxes, 4)


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """(x, y) points [N, 2] or [N, C, 2] in a crop's frame -> the whole image's frame."""
    return points + _crop_offset(crop_box, points, 2)


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """Masks [..., h, w] of a crop -> [..., orig_h, orig_w], zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    left, top = x0, y0
    right = orig_w - (x1 - x0) - x0
    bottom = orig_h - (y1 - y0) - y0
    return torch.nn.functional.pad(masks, (left, right, top, bottom), value=0)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill background holes (`mode="holes"`) or drop foreground islands (`mode="islands"`) of fewer than
    `area_thresh` pixels (8-connected) in a bool mask [H, W]. When every island is small the largest one
    stays. Returns (mask, whether anything changed); raises ValueError for another `mode`."""
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    region = torch.from_numpy(np.ascontiguousarray(mask.astype(bool) != fill_holes))
    labels, areas = get_connected_components(region[None, None])
    labels, areas = labels[0, 0], areas[0, 0]
    small = (labels > 0) & (areas < area_thresh)
    if not bool(small.any()):
        return mask, False
    if fill_holes:
        return (~region | small).numpy(), True
    kept = (labels > 0) & ~small
    if not bool(kept.any()):
        # Every island is small: keep the largest (the first in raster order among equals).
        largest = int(areas.flatten().argmax())
        kept = labels == labels.flatten()[largest]
    return kept.numpy(), True


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """An uncompressed RLE -> pycocotools' compressed RLE with `counts` as a str (JSON-serialisable)."""
    from pycocotools import mask as mask_utils

    height, width = uncompressed_rle["size"]
    rle = mask_utils.frPyObjects(uncompressed_rle, height, width)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (inclusive pixel indices, int64) around bool masks [..., H, W] -> [..., 4];
    [0, 0, 0, 0] for an empty mask."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    height, width = masks.shape[-2:]
    rows = masks.any(dim=-1)
    cols = masks.any(dim=-2)
    row_idx = torch.arange(height, device=masks.device)
    col_idx = torch.arange(width, device=masks.device)
    top = torch.where(rows, row_idx, height).amin(dim=-1)
    bottom = torch.where(rows, row_idx, -1).amax(dim=-1)
    left = torch.where(cols, col_idx, width).amin(dim=-1)
    right = torch.where(cols, col_idx, -1).amax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = ~rows.any(dim=-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)
