"""Memory attention: conditions the current frame's features on the memory bank (past frames' memories
and object pointers) with self-attention, cross-attention and an MLP per layer (pre-norm)."""

from __future__ import annotations

import torch
import torch.nn as nn

from sam2.modeling.sam.transformer import RoPEAttention
from sam2.modeling.sam2_utils import get_activation_fn, get_clones


class MemoryAttentionLayer(nn.Module):
    """One pre-norm block: self-attention over the frame's tokens, cross-attention to memory, MLP.

    pos_enc_at_attn adds the frame's position encoding to self-attention queries/keys;
    pos_enc_at_cross_attn_queries / pos_enc_at_cross_attn_keys do the same for cross-attention.
    """

    def __init__(
        self,
        activation: str,
        cross_attention: nn.Module,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        pos_enc_at_attn: bool,
        pos_enc_at_cross_attn_keys: bool,
        pos_enc_at_cross_attn_queries: bool,
        self_attention: nn.Module,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.dim_feedforward = dim_feedforward
        self.dropout_value = dropout
        self.self_attn = self_attention
        self.cross_attn_image = cross_attention

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)

        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

        self.activation_str = activation
        self.activation = get_activation_fn(activation)
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys

    def _forward_sa(self, tgt: torch.Tensor, query_pos: torch.Tensor | None) -> torch.Tensor:
        normed = self.norm1(tgt)
        qk = normed + query_pos if self.pos_enc_at_attn else normed
        return tgt + self.dropout1(self.self_attn(qk, qk, v=normed))

    def _forward_ca(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        query_pos: torch.Tensor | None,
        pos: torch.Tensor | None,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        extra = {}
        if num_k_exclude_rope > 0:
            if not isinstance(self.cross_attn_image, RoPEAttention):
                raise TypeError("object-pointer tokens need a RoPEAttention cross-attention to skip RoPE on")
            extra["num_k_exclude_rope"] = num_k_exclude_rope
        normed = self.norm2(tgt)
        attended = self.cross_attn_image(
            q=normed + query_pos if self.pos_enc_at_cross_attn_queries else normed,
            k=memory + pos if self.pos_enc_at_cross_attn_keys else memory,
            v=memory,
            **extra,
        )
        return tgt + self.dropout2(attended)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        """tgt [B, N, C] frame tokens, memory [B, M, mem_dim] (last `num_k_exclude_rope` are pointers)."""
        tgt = self._forward_sa(tgt, query_pos)
        tgt = self._forward_ca(tgt, memory, query_pos, pos, num_k_exclude_rope)
        hidden = self.activation(self.linear1(self.norm3(tgt)))
        return tgt + self.dropout3(self.linear2(self.dropout(hidden)))


class MemoryAttention(nn.Module):
    """A stack of `num_layers` copies of `layer` followed by a LayerNorm.

    Inputs are sequence-first ([N, B, C]) as SAM2Base produces them; with batch_first the layers work on
    [B, N, C].
    """

    def __init__(
        self,
        d_model: int,
        pos_enc_at_input: bool,
        layer: nn.Module,
        num_layers: int,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = get_clones(layer, num_layers)
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input
        self.batch_first = batch_first

    def forward(
        self,
        curr: torch.Tensor | list[torch.Tensor],
        memory: torch.Tensor,
        curr_pos: torch.Tensor | list[torch.Tensor] | None = None,
        memory_pos: torch.Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        """curr [HW, B, C] (or a one-item list), memory [M, B, mem_dim] -> conditioned [HW, B, C].

        The last `num_obj_ptr_tokens` memory tokens are object pointers, which get no rotary encoding.
        """
        if isinstance(curr, list):
            if not isinstance(curr_pos, list) or len(curr) != 1 or len(curr_pos) != 1:
                raise ValueError("memory attention takes exactly one feature level")
            curr, curr_pos = curr[0], curr_pos[0]
        if curr.shape[1] != memory.shape[1]:
            raise ValueError(f"batch sizes differ: frame {curr.shape[1]}, memory {memory.shape[1]}")

        out = curr
        if self.pos_enc_at_input and curr_pos is not None:
            out = out + 0.1 * curr_pos
        if self.batch_first:
            out = out.transpose(0, 1)
            curr_pos = curr_pos.transpose(0, 1) if curr_pos is not None else None
            memory = memory.transpose(0, 1)
            memory_pos = memory_pos.transpose(0, 1) if memory_pos is not None else None

        for layer in self.layers:
            extra = {}
            if isinstance(layer.cross_attn_image, RoPEAttention):
                extra["num_k_exclude_rope"] = num_obj_ptr_tokens
            out = layer(tgt=out, memory=memory, pos=memory_pos, query_pos=curr_pos, **extra)
        out = self.norm(out)
        return out.transpose(0, 1) if self.batch_first else out
