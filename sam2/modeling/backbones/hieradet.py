"""Hiera: the hierarchical vision transformer trunk of SAM 2 (https://arxiv.org/abs/2306.00989).

Four stages of transformer blocks; at each stage change the query tokens are max-pooled 2x2, halving the
resolution and doubling the width. Most blocks attend inside local windows, a few chosen blocks attend
globally. Position comes from a windowed absolute embedding (https://arxiv.org/abs/2311.05613): a
background embedding interpolated to the grid plus a per-window embedding tiled over it.
"""

from __future__ import annotations

import logging
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from sam2.modeling.backbones.utils import PatchEmbed, window_partition, window_unpartition
from sam2.modeling.sam2_utils import MLP, DropPath

logger = logging.getLogger(__name__)


def _pool_channels_last(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Apply a 2-D pooling layer to a channels-last [B, H, W, C] tensor."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Self-attention over [B, H, W, C] tokens whose queries may be pooled (to downsample at a stage change)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # each [B, HW, heads, c]
        if self.q_pool is not None:
            q = _pool_channels_last(q.reshape(batch, height, width, -1), self.q_pool)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block with optional window attention and optional query pooling."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] | str = "LayerNorm",
        q_stride: tuple[int, int] | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(norm_layer, str):
            norm_layer = partial(getattr(nn, norm_layer), eps=1e-6)
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False) if q_stride else None
        self.norm1 = norm_layer(dim)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim_out)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=act_layer)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = _pool_channels_last(self.proj(x), self.pool)

        window = self.window_size
        if window > 0:
            x, padded_hw = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            out_h, out_w = shortcut.shape[1:3]
            if self.q_stride:
                # Query pooling shrank every window; the grid to rebuild is the pooled one.
                window = window // self.q_stride[0]
                padded_hw = (out_h + (-out_h % window), out_w + (-out_w % window))
            x = window_unpartition(x, window, padded_hw, (out_h, out_w))

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Hiera(nn.Module):
    """The Hiera trunk. `forward` returns the feature maps [B, C_i, H_i, W_i] of every stage (highest
    resolution first), or only the last one when `return_interm_layers` is False."""

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        drop_path_rate: float = 0.0,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: tuple[int, ...] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        global_att_blocks: tuple[int, ...] = (12, 16, 20),
        weights_path: str | None = None,
        return_interm_layers: bool = True,
    ) -> None:
        """`q_pool`: how many stage changes pool queries; `window_spec`: window size per stage (a block
        listed in `global_att_blocks` attends globally instead); `weights_path`: optional trunk-only
        state dict to start from (loaded non-strictly, e.g. ImageNet-pretrained Hiera)."""
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"Hiera: stages {stages} and window_spec {window_spec} need the same length")
        self.window_spec = window_spec
        self.q_stride = q_stride
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        if not 0 <= q_pool <= len(stages) - 1:
            raise ValueError(f"Hiera: q_pool={q_pool} must lie in [0, {len(stages) - 1}]")
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.return_interm_layers = return_interm_layers
        self.global_att_blocks = global_att_blocks
        self.window_pos_embed_bkg_spatial_size = window_pos_embed_bkg_spatial_size

        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))

        depth = sum(stages)
        drop_rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList()
        stage = 0
        dim = embed_dim
        for block_idx in range(depth):
            # A stage's first block still uses the previous stage's window (its input resolution); its
            # query pooling produces the new stage's width.
            window_size = window_spec[stage]
            if global_att_blocks is not None and block_idx in global_att_blocks:
                window_size = 0
            dim_out = dim
            if block_idx - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    drop_path=drop_rates[block_idx],
                    q_stride=q_stride if block_idx in self.q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            dim = dim_out

        if return_interm_layers:
            self.channel_list = [self.blocks[end].dim_out for end in reversed(self.stage_ends)]
        else:
            self.channel_list = [self.blocks[-1].dim_out]

        if weights_path is not None:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            result = self.load_state_dict(state, strict=False)
            logger.info("Hiera trunk initialised from %s (%s)", weights_path, result)

    def _get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """Background embedding resized to the token grid plus the tiled window embedding, channels-last."""
        background = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        window = self.pos_embed_window
        reps = [full // part for full, part in zip(background.shape, window.shape, strict=True)]
        return (background + window.tile(reps)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self._get_pos_embed(x.shape[1:3])
        outputs = []
        last = self.stage_ends[-1]
        for block_idx, block in enumerate(self.blocks):
            x = block(x)
            if block_idx == last or (self.return_interm_layers and block_idx in self.stage_ends):
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs

    def get_layer_id(self, layer_name: str) -> int:
        """Depth index of a parameter for layer-wise learning-rate decay: embeddings 0, block i -> i + 1,
        anything else after the last block."""
        num_layers = self.get_num_layers()
        if "rel_pos" in layer_name:
            return num_layers + 1
        if "pos_embed" in layer_name or "patch_embed" in layer_name:
            return 0
        if "blocks" in layer_name:
            return int(layer_name.split("blocks")[1].split(".")[1]) + 1
        return num_layers + 1

    def get_num_layers(self) -> int:
        return len(self.blocks)
