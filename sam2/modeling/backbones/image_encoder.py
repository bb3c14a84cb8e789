"""The image encoder: a trunk (Hiera) followed by an FPN-style neck that brings every level to the same
width and adds position encodings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FpnNeck(nn.Module):
    """Feature pyramid neck: 1x1 lateral convolutions to `d_model` channels and a top-down pathway
    (upsampling x2 and adding) on the levels listed in `fpn_top_down_levels` (all when None). Unlike the
    classic FPN there is no output convolution."""

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: list[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: list[int] | None = None,
    ) -> None:
        """`backbone_channel_list` lists the trunk's widths from the lowest resolution to the highest."""
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FpnNeck: fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        self.position_encoding = position_encoding
        self.backbone_channel_list = list(backbone_channel_list)
        self.d_model = d_model
        self.convs = nn.ModuleList()
        for in_channels in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module(
                "conv",
                nn.Conv2d(in_channels, d_model, kernel_size=kernel_size, stride=stride, padding=padding),
            )
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Trunk features (highest resolution first) -> (features, position encodings), same order."""
        if len(xs) != len(self.convs):
            raise ValueError(f"FpnNeck got {len(xs)} feature levels, built for {len(self.convs)}")
        num_levels = len(xs)
        features: list[torch.Tensor] = [None] * num_levels  # type: ignore[list-item]
        encodings: list[torch.Tensor] = [None] * num_levels  # type: ignore[list-item]
        coarser = None
        for level in reversed(range(num_levels)):
            lateral = self.convs[num_levels - 1 - level](xs[level])
            if level in self.fpn_top_down_levels and coarser is not None:
                upsampled = F.interpolate(
                    coarser.to(dtype=torch.float32),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                coarser = lateral + upsampled
                if self.fuse_type == "avg":
                    coarser = coarser / 2
            else:
                coarser = lateral
            features[level] = coarser
            encodings[level] = self.position_encoding(coarser).to(coarser.dtype)
        return features, encodings


class ImageEncoder(nn.Module):
    """Trunk + neck. `scalp` drops that many of the lowest-resolution levels from the output."""

    def __init__(self, trunk: nn.Module, neck: nn.Module, scalp: int = 0) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(
                f"ImageEncoder: trunk widths {list(trunk.channel_list)} do not match the neck's "
                f"backbone_channel_list {list(neck.backbone_channel_list)}; fix the model config"
            )
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, sample: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """[B, 3, H, W] normalised images -> {"vision_features": lowest-resolution kept level,
        "vision_pos_enc": encodings per level, "backbone_fpn": features per level (highest res first)}."""
        features, encodings = self.neck(self.trunk(sample))
        if self.scalp > 0:
            features, encodings = features[: -self.scalp], encodings[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": encodings, "backbone_fpn": features}
