"""Memory encoder: fuses a frame's features with its predicted mask into a compact memory (mem_dim
channels) plus a sine position encoding, for later frames to attend to."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from sam2.modeling.sam2_utils import DropPath, LayerNorm2d, get_clones


class MaskDownSampler(nn.Module):
    """Bring a mask down by `total_stride` in steps of `stride` (conv, LayerNorm2d, activation per step;
    channels grow by stride**2 per step), then project to `embed_dim` channels with a 1x1 conv."""

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 4,
        stride: int = 4,
        padding: int = 0,
        total_stride: int = 16,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        num_steps = int(math.log2(total_stride) // math.log2(stride))
        if stride**num_steps != total_stride:
            raise ValueError(f"total_stride={total_stride} must be a power of stride={stride}")
        self.encoder = nn.Sequential()
        channels = 1
        for _ in range(num_steps):
            wider = channels * stride**2
            self.encoder.append(
                nn.Conv2d(channels, wider, kernel_size=kernel_size, stride=stride, padding=padding)
            )
            self.encoder.append(LayerNorm2d(wider))
            self.encoder.append(activation())
            channels = wider
        self.encoder.append(nn.Conv2d(channels, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depth-wise conv, LayerNorm2d, pointwise MLP (as Linear on channels-last), layer
    scale `gamma`, residual with stochastic depth."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(layer_scale_init_value * torch.ones(dim), requires_grad=True)
            if layer_scale_init_value > 0
            else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # NCHW -> NHWC
        branch = self.pwconv2(self.act(self.pwconv1(branch)))
        if self.gamma is not None:
            branch = self.gamma * branch
        return x + self.drop_path(branch.permute(0, 3, 1, 2))


class Fuser(nn.Module):
    """Optional 1x1 input projection followed by `num_layers` copies of `layer`."""

    def __init__(
        self, layer: nn.Module, num_layers: int, dim: int | None = None, input_projection: bool = False
    ):
        super().__init__()
        self.proj: nn.Module = nn.Identity()
        self.layers = get_clones(layer, num_layers)
        if input_projection:
            if dim is None:
                raise ValueError("Fuser(input_projection=True) needs dim")
            self.proj = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Frame features [B, in_dim, H, W] + mask [B, 1, 16H, 16W] -> {"vision_features" [B, out_dim, H, W],
    "vision_pos_enc" [one [B, out_dim, H, W] tensor]}."""

    def __init__(
        self,
        out_dim: int,
        mask_downsampler: nn.Module,
        fuser: nn.Module,
        position_encoding: nn.Module,
        in_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser
        self.position_encoding = position_encoding
        self.out_proj: nn.Module = nn.Identity()
        if out_dim != in_dim:
            self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> dict[str, Any]:
        """`skip_mask_sigmoid`: `masks` are already probabilities (SAM2Base scales them itself)."""
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        mask_feat = self.mask_downsampler(masks)
        fused = self.pix_feat_proj(pix_feat.to(mask_feat.device)) + mask_feat
        out = self.out_proj(self.fuser(fused))
        pos = self.position_encoding(out).to(out.dtype)
        return {"vision_features": out, "vision_pos_enc": [pos]}
