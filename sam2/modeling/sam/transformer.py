"""Attention layers of SAM 2: the two-way transformer of the mask decoder (prompt tokens <-> image
tokens), its multi-head `Attention`, and `RoPEAttention` used by the memory attention.

All attention goes through `torch.nn.functional.scaled_dot_product_attention`, which picks a fused
kernel (flash / memory-efficient) where the device supports it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam2.modeling.position_encoding import apply_rotary_enc_real, compute_axial_cis
from sam2.modeling.sam2_utils import MLP


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by `downsample_rate` and whose keys and
    values may come from a space of another width (`kv_in_dim`)."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError(
                f"Attention: num_heads={num_heads} must divide embedding_dim / downsample_rate "
                f"= {self.internal_dim}"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def _split_heads(self, x: Tensor) -> Tensor:
        """[B, N, C] -> [B, heads, N, C / heads]"""
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    @staticmethod
    def _merge_heads(x: Tensor) -> Tensor:
        """[B, heads, N, c] -> [B, N, heads * c]"""
        batch, heads, tokens, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)

    def _project(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return (
            self._split_heads(self.q_proj(q)),
            self._split_heads(self.k_proj(k)),
            self._split_heads(self.v_proj(v)),
        )

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        return self.out_proj(self._merge_heads(out))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [B, Nq, embedding_dim], k and v [B, Nk, kv_in_dim] -> [B, Nq, embedding_dim]"""
        return self._attend(*self._project(q, k, v))


class RoPEAttention(Attention):
    """Attention with 2-D axial rotary position encoding of queries and keys.

    Queries are the tokens of one feature map (a square grid, `feat_sizes` at the configured resolution);
    with `rope_k_repeat`, keys hold several such grids (memories of past frames) and each gets the same
    rotations. The last `num_k_exclude_rope` keys (object pointers) are not rotated.
    """

    def __init__(
        self,
        *args,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: tuple[int, int] = (64, 64),
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.head_dim = self.internal_dim // self.num_heads
        # Not buffers: derived from the config, never stored in checkpoints. `freqs_cis` (complex) is kept
        # for code that reads it; the forward pass uses its real cos / sin parts.
        self.freqs_cis = compute_axial_cis(self.head_dim, feat_sizes[0], feat_sizes[1], theta=rope_theta)
        self._rope_cos, self._rope_sin = self.freqs_cis.real.contiguous(), self.freqs_cis.imag.contiguous()

    def _rotations_for(self, num_tokens: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(cos, sin) [num_tokens, head_dim / 2] for a square grid of `num_tokens` query tokens."""
        if self._rope_cos.shape[0] != num_tokens:
            side = math.isqrt(num_tokens)
            if side * side != num_tokens:
                raise ValueError(f"RoPEAttention expects a square grid of query tokens, got {num_tokens}")
            self.freqs_cis = compute_axial_cis(self.head_dim, side, side, theta=self.rope_theta)
            self._rope_cos, self._rope_sin = (
                self.freqs_cis.real.contiguous(),
                self.freqs_cis.imag.contiguous(),
            )
        if self._rope_cos.device != device:
            self._rope_cos, self._rope_sin = self._rope_cos.to(device), self._rope_sin.to(device)
        return self._rope_cos, self._rope_sin

    def forward(self, q: Tensor, k: Tensor, v: Tensor, num_k_exclude_rope: int = 0) -> Tensor:
        q, k, v = self._project(q, k, v)
        if q.shape[-2] != k.shape[-2] and not self.rope_k_repeat:
            raise ValueError(
                f"RoPEAttention got {q.shape[-2]} queries and {k.shape[-2]} keys; set rope_k_repeat=True "
                "for cross-attention to memories"
            )
        cos, sin = self._rotations_for(q.shape[-2], q.device)
        num_k_rope = k.shape[-2] - num_k_exclude_rope
        q, k_rotated = apply_rotary_enc_real(
            q, k[:, :, :num_k_rope], cos, sin, repeat_freqs_k=self.rope_k_repeat
        )
        if num_k_exclude_rope > 0:
            k = torch.cat([k_rotated, k[:, :, num_k_rope:]], dim=2)
        else:
            k = k_rotated
        return self._attend(q, k, v)


class TwoWayAttentionBlock(nn.Module):
    """One decoder layer: token self-attention, tokens -> image cross-attention, token MLP, then
    image -> tokens cross-attention, each followed by a residual add and LayerNorm."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            # The first layer's queries are the prompt embeddings themselves (they already carry position).
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Decoder that lets prompt tokens and image tokens attend to each other for `depth` layers, then
    gives the tokens a last look at the image."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(layer_idx == 0),
            )
            for layer_idx in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """image_embedding and image_pe [B, C, H, W], point_embedding [B, N, C]
        -> (tokens [B, N, C], image tokens [B, H*W, C])."""
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
