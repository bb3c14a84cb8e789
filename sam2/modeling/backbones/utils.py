"""Windowing helpers and the patch embedding shared by the Hiera trunk."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut [B, H, W, C] into non-overlapping square windows, zero-padding H and W up to multiples of
    `window_size`. Returns ([B * num_windows, window_size, window_size, C], (padded_h, padded_w))."""
    batch, height, width, channels = x.shape
    pad_h = -height % window_size
    pad_w = -width % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    rows, cols = padded_h // window_size, padded_w // window_size
    x = x.view(batch, rows, window_size, cols, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: reassemble [B * num_windows, ws, ws, C] into [B, H, W, C] and drop
    the padding."""
    padded_h, padded_w = pad_hw
    height, width = hw
    rows, cols = padded_h // window_size, padded_w // window_size
    batch = windows.shape[0] // (rows * cols)
    x = windows.reshape(batch, rows, cols, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :]
    return x


class PatchEmbed(nn.Module):
    """Strided convolution from pixels to patch tokens, returned channels-last [B, H', W', C]."""

    def __init__(
        self,
        kernel_size: tuple[int, ...] = (7, 7),
        stride: tuple[int, ...] = (4, 4),
        padding: tuple[int, ...] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)
