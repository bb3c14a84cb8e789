"""Small building blocks shared by the SAM 2 modules: MLP, LayerNorm2d, DropPath, sine encodings,
conditioning-frame selection and the click / box simulation used in training."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def select_closest_cond_frames(
    frame_idx: int, cond_frame_outputs: dict[int, dict], max_cond_frame_num: int
) -> tuple[dict[int, dict], dict[int, dict]]:
    """Pick at most `max_cond_frame_num` conditioning frames nearest in time to `frame_idx`.

    The nearest one before and the nearest one at-or-after `frame_idx` are always kept (when they exist);
    the remaining slots go to the others by temporal distance. `-1` keeps them all.
    Returns (selected, unselected), both dicts keyed by frame index.
    """
    if max_cond_frame_num == -1 or len(cond_frame_outputs) <= max_cond_frame_num:
        return cond_frame_outputs, {}
    if max_cond_frame_num < 2:
        raise ValueError(f"max_cond_frame_num must be -1 or at least 2, got {max_cond_frame_num}")

    chosen: dict[int, dict] = {}
    earlier = [t for t in cond_frame_outputs if t < frame_idx]
    later = [t for t in cond_frame_outputs if t >= frame_idx]
    if earlier:
        t = max(earlier)
        chosen[t] = cond_frame_outputs[t]
    if later:
        t = min(later)
        chosen[t] = cond_frame_outputs[t]
    free_slots = max_cond_frame_num - len(chosen)
    others = sorted((t for t in cond_frame_outputs if t not in chosen), key=lambda t: abs(t - frame_idx))
    for t in others[:free_slots]:
        chosen[t] = cond_frame_outputs[t]
    rest = {t: out for t, out in cond_frame_outputs.items() if t not in chosen}
    return chosen, rest


def get_1d_sine_pe(pos_inds: torch.Tensor, dim: int, temperature: float = 10000) -> torch.Tensor:
    """Transformer-style sine/cosine encoding of (possibly fractional) positions -> [..., dim]."""
    half = dim // 2
    freq_idx = torch.arange(half, dtype=torch.float32, device=pos_inds.device)
    denom = temperature ** (2 * (freq_idx // 2) / half)
    angles = pos_inds.unsqueeze(-1) / denom
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def get_activation_fn(activation: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map an activation name from a config ("relu", "gelu", "glu") to its function."""
    table = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}
    if activation not in table:
        raise RuntimeError(f"activation must be one of {sorted(table)}, got {activation!r}")
    return table[activation]


def get_clones(module: nn.Module, n: int) -> nn.ModuleList:
    """`n` independent deep copies of `module` (layers of a stack start identical, then train apart)."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


class DropPath(nn.Module):
    """Stochastic depth: during training, zero a whole sample's residual branch with probability p."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep_mask = x.new_empty(mask_shape).bernoulli_(keep)
        if keep > 0.0 and self.scale_by_keep:
            keep_mask.div_(keep)
        return x * keep_mask


class MLP(nn.Module):
    """A stack of `num_layers` linear layers with an activation between them (parameters `layers.i`)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        widths_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        widths_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths_in, widths_out, strict=True))
        self.sigmoid_output = sigmoid_output
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.num_layers - 1
        for depth, layer in enumerate(self.layers):
            x = layer(x)
            if depth < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel axis of an NCHW tensor (as in ConvNeXt)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def _masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] masks -> [B, 1, 4] tight XYXY boxes (zeros for empty masks)."""
    from sam2.utils.misc import mask_to_box

    return mask_to_box(masks)


def sample_box_points(
    masks: torch.Tensor,
    noise: float = 0.1,
    noise_bound: int = 20,
    top_left_label: int = 2,
    bottom_right_label: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate a user's box prompt from ground-truth masks, as two labelled corner points.

    masks: [B, 1, H, W]. Each corner is jittered by up to `noise` times the box side (at most
    `noise_bound` pixels) and clamped to the image. Returns coords [B, 2, 2] (x, y) float and
    labels [B, 2] int32 (`top_left_label`, `bottom_right_label`).
    """
    device = masks.device
    boxes = _masks_to_boxes(masks).float()
    batch, _, height, width = masks.shape
    labels = torch.tensor([top_left_label, bottom_right_label], dtype=torch.int, device=device).repeat(batch)
    if noise > 0.0:
        bound = torch.as_tensor(noise_bound, device=device)
        box_w = boxes[..., 2] - boxes[..., 0]
        box_h = boxes[..., 3] - boxes[..., 1]
        max_dx = torch.minimum(box_w * noise, bound)
        max_dy = torch.minimum(box_h * noise, bound)
        jitter = 2 * torch.rand(batch, 1, 4, device=device) - 1
        boxes = boxes + jitter * torch.stack((max_dx, max_dy, max_dx, max_dy), dim=-1)
        upper = torch.tensor([width, height, width, height], device=device) - 1
        boxes = torch.maximum(torch.minimum(boxes, upper), torch.zeros_like(upper))
    return boxes.reshape(-1, 2, 2), labels.reshape(-1, 2)


def _check_click_masks(gt_masks: torch.Tensor, pred_masks: torch.Tensor | None) -> torch.Tensor:
    if gt_masks.dtype != torch.bool or gt_masks.dim() != 4 or gt_masks.size(1) != 1:
        raise ValueError(
            f"gt_masks must be a bool tensor [B, 1, H, W], got {gt_masks.dtype} {tuple(gt_masks.shape)}"
        )
    if pred_masks is None:
        return torch.zeros_like(gt_masks)
    if pred_masks.dtype != torch.bool or pred_masks.shape != gt_masks.shape:
        raise ValueError(
            f"pred_masks must be a bool tensor shaped like gt_masks {tuple(gt_masks.shape)}, "
            f"got {pred_masks.dtype} {tuple(pred_masks.shape)}"
        )
    return pred_masks


def sample_random_points_from_errors(
    gt_masks: torch.Tensor, pred_masks: torch.Tensor | None, num_pt: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate corrective clicks uniformly over the error regions of a prediction.

    A click in a false-negative pixel is positive (label 1), in a false-positive pixel negative (0); when the
    prediction is already perfect, a negative click lands on the background. Returns points [B, num_pt, 2]
    (x, y) float and labels [B, num_pt] int32.
    """
    pred_masks = _check_click_masks(gt_masks, pred_masks)
    if num_pt < 0:
        raise ValueError(f"num_pt must be >= 0, got {num_pt}")
    batch, _, height, width = gt_masks.shape
    false_pos = ~gt_masks & pred_masks
    false_neg = gt_masks & ~pred_masks
    perfect = torch.all((gt_masks == pred_masks).flatten(2), dim=2)[..., None, None]
    # One random score per (pixel, label); scores outside the allowed region are zeroed, the best wins.
    scores = torch.rand(batch, num_pt, height, width, 2, device=gt_masks.device)
    scores[..., 0] *= false_pos | (perfect & ~gt_masks)
    scores[..., 1] *= false_neg
    flat_idx = scores.flatten(2).argmax(dim=2)
    labels = (flat_idx % 2).to(torch.int32)
    pixel = flat_idx // 2
    points = torch.stack([pixel % width, pixel // width], dim=2).to(torch.float)
    return points, labels


def _distance_to_background(region: np.ndarray, border_is_background: bool = True) -> np.ndarray:
    """Exact Euclidean distance of each True pixel to the nearest False pixel (and, when
    `border_is_background`, to the outside of the image).

    Two separable passes (rows by a forward/backward scan, then columns by a lower envelope computed as a
    min over squared offsets), so no compiled extension is needed.
    """
    height, width = region.shape
    big = float(height + width + 2) ** 2
    padded = np.pad(region, 1, constant_values=not border_is_background)
    # Pass 1: along each row, distance to the nearest background pixel.
    row_dist = np.where(padded, np.inf, 0.0)
    for x in range(1, padded.shape[1]):
        row_dist[:, x] = np.minimum(row_dist[:, x], row_dist[:, x - 1] + 1)
    for x in range(padded.shape[1] - 2, -1, -1):
        row_dist[:, x] = np.minimum(row_dist[:, x], row_dist[:, x + 1] + 1)
    sq = torch.from_numpy(np.minimum(row_dist**2, big))
    # Pass 2: along each column, min over source rows of (row distance^2 + vertical offset^2).
    rows = torch.arange(sq.shape[0], dtype=sq.dtype)
    out = torch.empty_like(sq)
    for start in range(0, sq.shape[0], 64):
        target = rows[start : start + 64]
        offsets = (target[:, None] - rows[None, :]) ** 2  # [t, src]
        out[start : start + 64] = (sq[None, :, :] + offsets[:, :, None]).amin(dim=1)
    return out.sqrt().numpy()[1:-1, 1:-1]


def sample_one_point_from_error_center(
    gt_masks: torch.Tensor, pred_masks: torch.Tensor | None, padding: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate one corrective click at the centre of the largest error (the pixel farthest from its edge).

    `padding=True` treats the image border as the error region's edge. Returns points [B, 1, 2] (x, y)
    float and labels [B, 1] int32 (1 when the error there is a false negative).
    """
    pred_masks = _check_click_masks(gt_masks, pred_masks)
    batch, _, height, width = gt_masks.shape
    false_pos = (~gt_masks & pred_masks).cpu().numpy()
    false_neg = (gt_masks & ~pred_masks).cpu().numpy()
    points = torch.zeros(batch, 1, 2, dtype=torch.float)
    labels = torch.ones(batch, 1, dtype=torch.int32)
    for b in range(batch):
        fn_dist = _distance_to_background(false_neg[b, 0], border_is_background=padding)
        fp_dist = _distance_to_background(false_pos[b, 0], border_is_background=padding)
        fn_best = int(np.argmax(fn_dist))
        fp_best = int(np.argmax(fp_dist))
        positive = fn_dist.flat[fn_best] > fp_dist.flat[fp_best]
        best = fn_best if positive else fp_best
        points[b, 0, 0] = best % width
        points[b, 0, 1] = best // width
        labels[b, 0] = int(positive)
    return points.to(gt_masks.device), labels.to(gt_masks.device)


def get_next_point(
    gt_masks: torch.Tensor, pred_masks: torch.Tensor | None, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate the next corrective click with `method` "uniform" or "center"."""
    if method == "uniform":
        return sample_random_points_from_errors(gt_masks, pred_masks)
    if method == "center":
        return sample_one_point_from_error_center(gt_masks, pred_masks)
    raise ValueError(f"unknown click sampling method {method!r}; use 'uniform' or 'center'")
