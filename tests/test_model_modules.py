"""Behaviour of the image-side building blocks that the official-output comparisons do not pin down alone:
dynamic multimask selection, SAM token choice, windowing, RoPE properties and config mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.backbones.utils import window_partition, window_unpartition
from sam2.modeling.position_encoding import PositionEmbeddingSine, apply_rotary_enc, compute_axial_cis
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import RoPEAttention, TwoWayTransformer


def _decoder(**kwargs) -> MaskDecoder:
    torch.manual_seed(0)
    transformer = TwoWayTransformer(depth=2, embedding_dim=32, num_heads=2, mlp_dim=64)
    return MaskDecoder(transformer_dim=32, transformer=transformer, iou_head_hidden_dim=32, **kwargs).eval()


def test_dynamic_multimask_falls_back_only_for_unstable_single_masks() -> None:
    decoder = _decoder(dynamic_multimask_via_stability=True)
    logits = torch.zeros(2, 4, 8, 8)
    logits[0, 0] = 5.0  # stable single mask (far from the threshold everywhere)
    logits[1, 0] = 0.01  # unstable: flips between threshold -0.05 and +0.05
    logits[:, 1:] = torch.arange(1, 4, dtype=torch.float).view(1, 3, 1, 1)
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.3], [0.1, 0.2, 0.8, 0.3]])
    out_logits, out_scores = decoder._dynamic_multimask_via_stability(logits, scores)
    assert torch.equal(out_logits[0, 0], logits[0, 0]) and out_scores[0, 0] == 0.1
    assert torch.equal(out_logits[1, 0], logits[1, 2]) and out_scores[1, 0] == 0.8
    # Empty masks count as stable.
    assert decoder._get_stability_scores(torch.full((1, 1, 4, 4), -9.0)).item() == 1.0


def test_mask_decoder_outputs_and_sam_tokens() -> None:
    decoder = _decoder(pred_obj_scores=True, pred_obj_scores_mlp=True, use_multimask_token_for_obj_ptr=True)
    image = torch.randn(1, 32, 4, 4)
    pe = torch.randn(1, 32, 4, 4)
    sparse = torch.randn(3, 2, 32)
    dense = torch.randn(3, 32, 4, 4)
    with torch.no_grad():
        masks, ious, tokens, obj = decoder(image, pe, sparse, dense, multimask_output=True, repeat_image=True)
        single = decoder(image, pe, sparse, dense, multimask_output=False, repeat_image=True)
    assert masks.shape == (3, 3, 16, 16) and ious.shape == (3, 3) and obj.shape == (3, 1)
    assert tokens.shape == (3, 3, 32), "multimask tokens become the SAM tokens"
    assert single[0].shape == (3, 1, 16, 16) and single[2].shape == (3, 1, 32)
    with torch.no_grad():
        every_mask = decoder.predict_masks(image, pe, sparse, dense, repeat_image=True)[0]
    assert torch.equal(single[0][:, 0], every_mask[:, 0]) and torch.equal(masks, every_mask[:, 1:])
    with pytest.raises(ValueError, match="repeat_image=True"):
        decoder(image, pe, sparse, dense, multimask_output=True, repeat_image=False)


def test_prompt_encoder_pads_clicks_and_rejects_wrong_mask_size() -> None:
    encoder = PromptEncoder(
        embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=8
    )
    points = (torch.tensor([[[10.0, 20.0]]]), torch.tensor([[1]]))
    sparse, dense = encoder(points=points, boxes=None, masks=None)
    assert sparse.shape == (1, 2, 32), "a padding token follows clicks without a box"
    assert torch.equal(sparse[0, 1], encoder.not_a_point_embed.weight[0])
    assert dense.shape == (1, 32, 4, 4)
    sparse, _ = encoder(points=points, boxes=torch.tensor([[0.0, 0.0, 30.0, 30.0]]), masks=None)
    assert sparse.shape == (1, 3, 32), "no padding token with a box"
    with pytest.raises(ValueError, match=r"\[B, 1, 16, 16\]"):
        encoder(points=None, boxes=None, masks=torch.zeros(1, 1, 20, 20))


def test_window_partition_round_trip_with_padding() -> None:
    x = torch.randn(2, 10, 13, 5)
    windows, padded = window_partition(x, 4)
    assert padded == (12, 16) and windows.shape == (2 * 3 * 4, 4, 4, 5)
    assert torch.equal(window_unpartition(windows, 4, padded, (10, 13)), x)


def test_rope_depends_only_on_relative_position() -> None:
    dim = 16
    freqs = compute_axial_cis(dim, end_x=4, end_y=4)
    q = torch.randn(1, 1, 1, dim).expand(1, 1, 16, dim)
    k = torch.randn(1, 1, 1, dim).expand(1, 1, 16, dim)
    rq, rk = apply_rotary_enc(q, k, freqs)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    scores = (rq[0, 0] @ rk[0, 0].T).view(4, 4, 4, 4)  # [yq, xq, yk, xk]
    # Same offset (1 right, 1 down) from different places gives the same score.
    assert torch.allclose(scores[0, 0, 1, 1], scores[2, 1, 3, 2], atol=1e-4)


def test_rope_attention_leaves_excluded_keys_unrotated_and_checks_lengths() -> None:
    torch.manual_seed(0)
    attn = RoPEAttention(32, 1, rope_k_repeat=True, kv_in_dim=8, feat_sizes=(4, 4)).eval()
    q = torch.randn(1, 16, 32)
    memories = torch.randn(1, 32, 8)
    pointers = torch.randn(1, 4, 8)
    with torch.no_grad():
        out = attn(
            q, torch.cat([memories, pointers], 1), torch.cat([memories, pointers], 1), num_k_exclude_rope=4
        )
        # Changing only the pointers' content changes the output (they are attended to, not dropped).
        other = attn(q, torch.cat([memories, -pointers], 1), torch.cat([memories, -pointers], 1), 4)
    assert out.shape == (1, 16, 32) and not torch.allclose(out, other)
    # Reference: rotate queries and the memory keys (two stacked 4x4 grids), not the pointer keys.
    keys = torch.cat([memories, pointers], 1)
    with torch.no_grad():
        qh, kh, vh = (
            attn._split_heads(attn.q_proj(q)),
            attn._split_heads(attn.k_proj(keys)),
            attn._split_heads(attn.v_proj(keys)),
        )
        rq, rk = apply_rotary_enc(qh, kh[:, :, :32], compute_axial_cis(32, 4, 4), repeat_freqs_k=True)
        attended = F.scaled_dot_product_attention(rq, torch.cat([rk, kh[:, :, 32:]], dim=2), vh)
        expected = attn.out_proj(attn._merge_heads(attended))
    assert torch.allclose(out, expected, atol=1e-6)
    self_attn = RoPEAttention(32, 1, feat_sizes=(4, 4))
    with pytest.raises(ValueError, match="rope_k_repeat"):
        self_attn(q, torch.randn(1, 32, 32), torch.randn(1, 32, 32))
    with pytest.raises(ValueError, match="square grid"):
        self_attn(torch.randn(1, 15, 32), torch.randn(1, 15, 32), torch.randn(1, 15, 32))


def test_sine_encoding_is_cached_and_fresh_per_call() -> None:
    pe = PositionEmbeddingSine(16, warmup_cache=False)
    first = pe(torch.zeros(2, 3, 4, 5))
    assert first.shape == (2, 16, 4, 5)
    first.zero_()  # callers may modify their copy
    assert pe(torch.zeros(1, 3, 4, 5)).abs().sum() > 0


def test_config_mistakes_are_named() -> None:
    trunk = Hiera(
        embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(), window_spec=(2, 2, 2, 2)
    )
    assert trunk.channel_list == [64, 32, 16, 8]
    neck = FpnNeck(
        PositionEmbeddingSine(16, warmup_cache=False), d_model=16, backbone_channel_list=[64, 32, 16]
    )
    with pytest.raises(ValueError, match="backbone_channel_list"):
        ImageEncoder(trunk, neck)
    with pytest.raises(ValueError, match="fuse_type"):
        FpnNeck(PositionEmbeddingSine(16), d_model=16, backbone_channel_list=[8], fuse_type="max")
    with pytest.raises(ValueError, match="window_spec"):
        Hiera(stages=(1, 1), window_spec=(8, 4, 14))
    last_only = Hiera(
        embed_dim=8,
        num_heads=1,
        stages=(1, 1, 1, 1),
        global_att_blocks=(),
        window_spec=(2, 2, 2, 2),
        return_interm_layers=False,
    )
    outputs = last_only(torch.randn(1, 3, 64, 64))
    assert len(outputs) == 1 and outputs[0].shape == (1, 64, 2, 2)
