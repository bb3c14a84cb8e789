"""SAM2Base: the SAM 2 model (image encoder, prompt encoder and mask decoder, memory attention, memory
encoder, object pointers) and its per-frame tracking step.

The constructor keeps the official argument names and the submodule / parameter names, so official Hydra
configs and overrides work and official `{"model": state_dict}` checkpoints load with `strict=True`.
Inference lives in the predictors (`SAM2ImagePredictor`, `SAM2VideoPredictor`), training in `SAM2Train`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.init import trunc_normal_

from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from sam2.modeling.sam2_utils import MLP, get_1d_sine_pe, select_closest_cond_frames

logger = logging.getLogger(__name__)

# Mask logit written where the object-score head says "no object" (sigmoid of it is exactly 0 in fp32).
NO_OBJ_SCORE = -1024.0

# Logits used when a given mask is taken as the output as-is: sigmoid(-10) ~ 4.5e-5, sigmoid(10) ~ 1.
MASK_AS_OUTPUT_SCALE = 20.0
MASK_AS_OUTPUT_BIAS = -10.0

FrameOutput = dict[str, Any]


_MEMORY_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _parse_memory_dtype(value: str | torch.dtype) -> torch.dtype:
    """`model.memory_dtype` as a torch dtype; raises ValueError naming the setting for anything else."""
    if isinstance(value, torch.dtype) and value in _MEMORY_DTYPES.values():
        return value
    name = str(value).removeprefix("torch.")
    if name not in _MEMORY_DTYPES:
        raise ValueError(f"model.memory_dtype={value!r}: use one of {sorted(_MEMORY_DTYPES)}")
    return _MEMORY_DTYPES[name]


class SAM2Base(nn.Module):
    """SAM 2 model: segment with prompts on one frame, track with a memory of earlier frames.

    Main options (the official names and meanings):
    - num_maskmem: frames in the spatial memory (1 conditioning slot + num_maskmem-1 recent frames).
    - image_size / backbone_stride: input side in pixels and the stride of the lowest-resolution features.
    - sigmoid_scale_for_mem_enc / sigmoid_bias_for_mem_enc: affine map of mask probabilities fed to the
      memory encoder; binarize_mask_from_pts_for_mem_enc thresholds click-made masks there in eval.
    - use_mask_input_as_output_without_sam: a mask prompt becomes the output directly (no decoder pass).
    - max_cond_frames_in_attn: at most this many conditioning frames are attended to (-1: all).
    - directly_add_no_mem_embed: first conditioning frame adds `no_mem_embed` instead of running memory
      attention over a dummy token.
    - use_high_res_features_in_sam: feed stride-4/8 features to the mask decoder.
    - multimask_output_in_sam / multimask_min_pt_num / multimask_max_pt_num / multimask_output_for_tracking:
      when the decoder returns three masks and picks the one with the best predicted IoU.
    - use_obj_ptrs_in_encoder / max_obj_ptrs_in_encoder / add_tpos_enc_to_obj_ptrs /
      proj_tpos_enc_in_obj_ptrs / use_signed_tpos_enc_to_obj_ptrs / only_obj_ptrs_in_the_past_for_eval:
      object pointers (decoder output tokens) of other frames as extra memory tokens, with their temporal
      encodings.
    - pred_obj_scores / pred_obj_scores_mlp / fixed_no_obj_ptr / soft_no_obj_ptr / no_obj_embed_spatial:
      occlusion handling through an object-score head and learned "no object" embeddings.
    - memory_temporal_stride_for_eval: take every r-th past frame into memory in eval.
    - non_overlap_masks_for_mem_enc: keep only the top-scoring object per pixel before memory encoding.
    - compile_image_encoder: `torch.compile` the image encoder's forward.
    - memory_dtype: dtype in which the video predictor stores each frame's memory features ("bfloat16",
      as the official predictor does on every device; "float32" keeps full precision). Memories are cast
      back to the compute dtype where memory attention reads them, so every pass works on the CPU too.
      Training keeps memories in the compute dtype, as the official training code does.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        memory_attention: nn.Module,
        memory_encoder: nn.Module,
        num_maskmem: int = 7,
        image_size: int = 512,
        backbone_stride: int = 16,
        sigmoid_scale_for_mem_enc: float = 1.0,
        sigmoid_bias_for_mem_enc: float = 0.0,
        binarize_mask_from_pts_for_mem_enc: bool = False,
        use_mask_input_as_output_without_sam: bool = False,
        max_cond_frames_in_attn: int = -1,
        directly_add_no_mem_embed: bool = False,
        use_high_res_features_in_sam: bool = False,
        multimask_output_in_sam: bool = False,
        multimask_min_pt_num: int = 1,
        multimask_max_pt_num: int = 1,
        multimask_output_for_tracking: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        memory_temporal_stride_for_eval: int = 1,
        non_overlap_masks_for_mem_enc: bool = False,
        use_obj_ptrs_in_encoder: bool = False,
        max_obj_ptrs_in_encoder: int = 16,
        add_tpos_enc_to_obj_ptrs: bool = True,
        proj_tpos_enc_in_obj_ptrs: bool = False,
        use_signed_tpos_enc_to_obj_ptrs: bool = False,
        only_obj_ptrs_in_the_past_for_eval: bool = False,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        fixed_no_obj_ptr: bool = False,
        soft_no_obj_ptr: bool = False,
        use_mlp_for_obj_ptr_proj: bool = False,
        no_obj_embed_spatial: bool = False,
        sam_mask_decoder_extra_args: dict[str, Any] | None = None,
        compile_image_encoder: bool = False,
        memory_dtype: str | torch.dtype = "bfloat16",
    ) -> None:
        super().__init__()
        self.memory_dtype = _parse_memory_dtype(memory_dtype)
        if proj_tpos_enc_in_obj_ptrs and not add_tpos_enc_to_obj_ptrs:
            raise ValueError("proj_tpos_enc_in_obj_ptrs=True needs add_tpos_enc_to_obj_ptrs=True")
        if fixed_no_obj_ptr and not (pred_obj_scores and use_obj_ptrs_in_encoder):
            raise ValueError(
                "fixed_no_obj_ptr=True needs pred_obj_scores=True and use_obj_ptrs_in_encoder=True"
            )

        # --- image side
        self.image_encoder = image_encoder
        self.image_size = image_size
        self.backbone_stride = backbone_stride
        self.use_high_res_features_in_sam = use_high_res_features_in_sam
        self.num_feature_levels = 3 if use_high_res_features_in_sam else 1
        self.hidden_dim = image_encoder.neck.d_model

        # --- object pointers
        self.use_obj_ptrs_in_encoder = use_obj_ptrs_in_encoder
        self.max_obj_ptrs_in_encoder = max_obj_ptrs_in_encoder
        if use_obj_ptrs_in_encoder:
            # Brings a full-size mask prompt down to the prompt encoder's mask input size (x1/4).
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.add_tpos_enc_to_obj_ptrs = add_tpos_enc_to_obj_ptrs
        self.proj_tpos_enc_in_obj_ptrs = proj_tpos_enc_in_obj_ptrs
        self.use_signed_tpos_enc_to_obj_ptrs = use_signed_tpos_enc_to_obj_ptrs
        self.only_obj_ptrs_in_the_past_for_eval = only_obj_ptrs_in_the_past_for_eval

        # --- memory
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        out_proj = getattr(memory_encoder, "out_proj", None)
        self.mem_dim = out_proj.weight.shape[0] if hasattr(out_proj, "weight") else self.hidden_dim
        self.num_maskmem = num_maskmem
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, self.mem_dim))
        trunc_normal_(self.maskmem_tpos_enc, std=0.02)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        trunc_normal_(self.no_mem_embed, std=0.02)
        trunc_normal_(self.no_mem_pos_enc, std=0.02)
        self.directly_add_no_mem_embed = directly_add_no_mem_embed
        self.sigmoid_scale_for_mem_enc = sigmoid_scale_for_mem_enc
        self.sigmoid_bias_for_mem_enc = sigmoid_bias_for_mem_enc
        self.binarize_mask_from_pts_for_mem_enc = binarize_mask_from_pts_for_mem_enc
        self.non_overlap_masks_for_mem_enc = non_overlap_masks_for_mem_enc
        self.memory_temporal_stride_for_eval = memory_temporal_stride_for_eval
        self.max_cond_frames_in_attn = max_cond_frames_in_attn

        # --- SAM heads
        self.use_mask_input_as_output_without_sam = use_mask_input_as_output_without_sam
        self.multimask_output_in_sam = multimask_output_in_sam
        self.multimask_min_pt_num = multimask_min_pt_num
        self.multimask_max_pt_num = multimask_max_pt_num
        self.multimask_output_for_tracking = multimask_output_for_tracking
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.iou_prediction_use_sigmoid = iou_prediction_use_sigmoid
        self.sam_mask_decoder_extra_args = sam_mask_decoder_extra_args

        # --- occlusion
        self.pred_obj_scores = pred_obj_scores
        self.pred_obj_scores_mlp = pred_obj_scores_mlp
        self.fixed_no_obj_ptr = fixed_no_obj_ptr
        self.soft_no_obj_ptr = soft_no_obj_ptr
        if pred_obj_scores and use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, self.hidden_dim))
            trunc_normal_(self.no_obj_ptr, std=0.02)
        self.use_mlp_for_obj_ptr_proj = use_mlp_for_obj_ptr_proj
        self.no_obj_embed_spatial = None
        if no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, self.mem_dim))
            trunc_normal_(self.no_obj_embed_spatial, std=0.02)

        self._build_sam_heads()

        if compile_image_encoder:
            logger.info("compiling the image encoder; the first forward pass will be slow")
            self.image_encoder.forward = torch.compile(
                self.image_encoder.forward, mode="max-autotune", fullgraph=True, dynamic=False
            )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "SAM2Base has no forward(); use SAM2VideoPredictor / SAM2ImagePredictor for inference "
            "or sam2.training.model.sam2.SAM2Train for training"
        )

    # ------------------------------------------------------------------------------------------------------
    # SAM heads
    # ------------------------------------------------------------------------------------------------------

    def _build_sam_heads(self) -> None:
        """Prompt encoder, mask decoder and the object-pointer projections."""
        self.sam_prompt_embed_dim = self.hidden_dim
        self.sam_image_embedding_size = self.image_size // self.backbone_stride
        grid = self.sam_image_embedding_size
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=self.sam_prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(self.image_size, self.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=self.sam_prompt_embed_dim, mlp_dim=2048, num_heads=8
            ),
            transformer_dim=self.sam_prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=self.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=self.iou_prediction_use_sigmoid,
            pred_obj_scores=self.pred_obj_scores,
            pred_obj_scores_mlp=self.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=self.use_multimask_token_for_obj_ptr,
            **(self.sam_mask_decoder_extra_args or {}),
        )
        if not self.use_obj_ptrs_in_encoder:
            self.obj_ptr_proj = nn.Identity()
        elif self.use_mlp_for_obj_ptr_proj:
            self.obj_ptr_proj = MLP(self.hidden_dim, self.hidden_dim, self.hidden_dim, 3)
        else:
            self.obj_ptr_proj = nn.Linear(self.hidden_dim, self.hidden_dim)
        if self.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Linear(self.hidden_dim, self.mem_dim)
        else:
            self.obj_ptr_tpos_proj = nn.Identity()

    def _forward_sam_heads(
        self,
        backbone_features: torch.Tensor,
        point_inputs: dict[str, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        high_res_features: list[torch.Tensor] | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Run the prompt encoder and mask decoder on (memory-conditioned) image features.

        backbone_features: [B, C, H, W] at stride `backbone_stride`.
        point_inputs: {"point_coords": [B, P, 2] float pixels (x, y) in the model's input frame,
        "point_labels": [B, P] int32: 1 positive, 0 negative, 2/3 box corners, -1 padding}.
        mask_inputs: [B, 1, h, w] mask prompt (resized to the prompt encoder's input if needed).
        high_res_features: None or [stride-4, stride-8] feature maps already projected by the decoder.

        Returns (low_res_multimasks [B, M, 4H, 4W], high_res_multimasks [B, M, image_size, image_size],
        ious [B, M], low_res_masks [B, 1, 4H, 4W], high_res_masks [B, 1, S, S], obj_ptr [B, C],
        object_score_logits [B, 1]) with M = 3 for multimask output, else 1; the single masks are the
        ones with the best predicted IoU.
        """
        batch = backbone_features.size(0)
        device = backbone_features.device
        grid = self.sam_image_embedding_size
        if backbone_features.shape[1:] != (self.sam_prompt_embed_dim, grid, grid):
            raise ValueError(
                f"backbone features must be [B, {self.sam_prompt_embed_dim}, {grid}, {grid}] for "
                f"image_size={self.image_size}, got {tuple(backbone_features.shape)}"
            )

        if point_inputs is None:
            # A single padding point: the decoder then sees no click at all.
            coords = torch.zeros(batch, 1, 2, device=device)
            labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
        else:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
            if coords.size(0) != batch or labels.size(0) != batch:
                raise ValueError(f"point prompts have batch {coords.size(0)}, features have batch {batch}")

        mask_prompt = None
        if mask_inputs is not None:
            if mask_inputs.dim() != 4 or mask_inputs.shape[:2] != (batch, 1):
                raise ValueError(f"mask prompt must be [{batch}, 1, H, W], got {tuple(mask_inputs.shape)}")
            target = self.sam_prompt_encoder.mask_input_size
            if mask_inputs.shape[-2:] != target:
                mask_prompt = F.interpolate(
                    mask_inputs.float(), size=target, mode="bilinear", align_corners=False, antialias=True
                )
            else:
                mask_prompt = mask_inputs

        sparse, dense = self.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
        low_res_multimasks, ious, output_tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res_features,
        )
        if self.pred_obj_scores:
            object_present = object_score_logits > 0
            # Where the object is judged absent every mask logit becomes NO_OBJ_SCORE.
            low_res_multimasks = torch.where(object_present[:, None, None], low_res_multimasks, NO_OBJ_SCORE)

        low_res_multimasks = low_res_multimasks.float()
        high_res_multimasks = F.interpolate(
            low_res_multimasks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )

        token = output_tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(batch, device=device)
            low_res_masks = low_res_multimasks[rows, best].unsqueeze(1)
            high_res_masks = high_res_multimasks[rows, best].unsqueeze(1)
            if output_tokens.size(1) > 1:
                token = output_tokens[rows, best]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks

        obj_ptr = self.obj_ptr_proj(token)
        if self.pred_obj_scores:
            presence = object_score_logits.sigmoid() if self.soft_no_obj_ptr else object_present.float()
            obj_ptr = self._blend_no_obj_ptr(obj_ptr, presence)

        return (
            low_res_multimasks,
            high_res_multimasks,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits,
        )

    def _blend_no_obj_ptr(self, obj_ptr: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """Mix the learned "no object" pointer in where the object is absent (presence [B, 1] in [0, 1])."""
        if self.fixed_no_obj_ptr:
            obj_ptr = presence * obj_ptr
        return obj_ptr + (1 - presence) * self.no_obj_ptr

    def _use_mask_as_output(
        self,
        backbone_features: torch.Tensor,
        high_res_features: list[torch.Tensor] | None,
        mask_inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Take a binary mask prompt [B, 1, S, S] as the output logits directly (same return tuple as
        `_forward_sam_heads`); the decoder still runs on the downsampled mask to give an object pointer."""
        mask = mask_inputs.float()
        high_res_masks = mask * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS
        low_res_masks = F.interpolate(
            high_res_masks,
            size=(high_res_masks.size(-2) // 4, high_res_masks.size(-1) // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        ious = mask_inputs.new_ones(mask_inputs.size(0), 1).float()
        if self.use_obj_ptrs_in_encoder:
            obj_ptr = self._forward_sam_heads(
                backbone_features=backbone_features,
                mask_inputs=self.mask_downsample(mask),
                high_res_features=high_res_features,
            )[5]
        else:
            obj_ptr = torch.zeros(mask_inputs.size(0), self.hidden_dim, device=mask_inputs.device)
        presence = torch.any(mask_inputs.flatten(1).float() > 0.0, dim=1)[..., None].float()
        object_score_logits = MASK_AS_OUTPUT_SCALE * presence + MASK_AS_OUTPUT_BIAS
        if self.pred_obj_scores:
            obj_ptr = self._blend_no_obj_ptr(obj_ptr, presence)
        return (
            low_res_masks,
            high_res_masks,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits,
        )

    # ------------------------------------------------------------------------------------------------------
    # Image features
    # ------------------------------------------------------------------------------------------------------

    def forward_image(self, img_batch: torch.Tensor) -> dict[str, Any]:
        """Image encoder output for a normalised batch [B, 3, S, S]: {"vision_features", "vision_pos_enc",
        "backbone_fpn"}; with high-res features, the two finest FPN levels are already projected by the
        decoder's conv_s0 / conv_s1 so repeated clicks do not redo it."""
        backbone_out = self.image_encoder(img_batch)
        if self.use_high_res_features_in_sam:
            fpn = backbone_out["backbone_fpn"]
            fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return backbone_out

    def _prepare_backbone_features(
        self, backbone_out: dict[str, Any]
    ) -> tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """Keep the feature levels SAM uses and flatten them to sequence-first [H*W, B, C].

        Returns (a shallow copy of backbone_out, vision_feats, vision_pos_embeds, feat_sizes), levels
        ordered from the finest to the coarsest.
        """
        backbone_out = backbone_out.copy()
        fpn, pos = backbone_out["backbone_fpn"], backbone_out["vision_pos_enc"]
        if len(fpn) != len(pos) or len(fpn) < self.num_feature_levels:
            raise ValueError(
                f"image encoder gave {len(fpn)} feature levels and {len(pos)} position encodings; "
                f"need {self.num_feature_levels} of each"
            )
        levels = fpn[-self.num_feature_levels :]
        level_pos = pos[-self.num_feature_levels :]
        feat_sizes = [(p.shape[-2], p.shape[-1]) for p in level_pos]
        vision_feats = [f.flatten(2).permute(2, 0, 1) for f in levels]
        vision_pos_embeds = [p.flatten(2).permute(2, 0, 1) for p in level_pos]
        return backbone_out, vision_feats, vision_pos_embeds, feat_sizes

    # ------------------------------------------------------------------------------------------------------
    # Memory
    # ------------------------------------------------------------------------------------------------------

    def _memory_frame_indices(self, frame_idx: int, track_in_reverse: bool) -> list[tuple[int, int]]:
        """(t_pos, frame index) of the non-conditioning memory slots t_pos = 1 .. num_maskmem-1.

        The most recent slot is always the adjacent frame; older ones step by the eval stride r, aligned to
        multiples of r.
        """
        stride = 1 if self.training else self.memory_temporal_stride_for_eval
        slots = []
        for t_pos in range(1, self.num_maskmem):
            frames_back = self.num_maskmem - t_pos
            if frames_back == 1:
                idx = frame_idx + 1 if track_in_reverse else frame_idx - 1
            elif track_in_reverse:
                nearest = -(-(frame_idx + 2) // stride) * stride  # ceil to a multiple of the stride
                idx = nearest + (frames_back - 2) * stride
            else:
                nearest = ((frame_idx - 2) // stride) * stride
                idx = nearest - (frames_back - 2) * stride
            slots.append((t_pos, idx))
        return slots

    def _prepare_memory_conditioned_features(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        output_dict: dict[str, dict[int, FrameOutput]],
        num_frames: int,
        track_in_reverse: bool = False,
    ) -> torch.Tensor:
        """Condition the current frame's coarsest features on the memory bank -> [B, C, H, W]."""
        batch = current_vision_feats[-1].size(1)
        channels = self.hidden_dim
        height, width = feat_sizes[-1]
        device = current_vision_feats[-1].device

        def to_map(seq: torch.Tensor) -> torch.Tensor:
            return seq.permute(1, 2, 0).view(batch, channels, height, width)

        if self.num_maskmem == 0:  # memory disabled: plain SAM on single images
            return to_map(current_vision_feats[-1])

        if is_init_cond_frame:
            if self.directly_add_no_mem_embed:
                return to_map(current_vision_feats[-1] + self.no_mem_embed)
            # A single dummy token so attention never sees an empty memory.
            memory = self.no_mem_embed.expand(1, batch, self.mem_dim)
            memory_pos = self.no_mem_pos_enc.expand(1, batch, self.mem_dim)
            num_obj_ptr_tokens = 0
        else:
            memory, memory_pos, num_obj_ptr_tokens = self._gather_memory(
                frame_idx, output_dict, num_frames, track_in_reverse, batch, device
            )
            # Stored memories may be bf16 (memory_dtype); attention reads them in the features' dtype
            # (on fp32 this equals the official torch.cat promotion with its fp32 object pointers).
            memory = memory.to(current_vision_feats[-1].dtype)

        fused = self.memory_attention(
            curr=current_vision_feats,
            curr_pos=current_vision_pos_embeds,
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )
        return to_map(fused)

    def _gather_memory(
        self,
        frame_idx: int,
        output_dict: dict[str, dict[int, FrameOutput]],
        num_frames: int,
        track_in_reverse: bool,
        batch: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Memory tokens [N, B, mem_dim], their position encodings, and how many are object pointers.

        Spatial memories come first (conditioning frames with t_pos 0, then recent frames), object pointers
        last (memory attention leaves the latter out of RoPE).
        """
        cond_outputs = output_dict["cond_frame_outputs"]
        if not cond_outputs:
            raise RuntimeError(
                f"frame {frame_idx} is tracked but no conditioning (prompted) frame is in memory; "
                "add a prompt first"
            )
        selected_cond, unselected_cond = select_closest_cond_frames(
            frame_idx, cond_outputs, self.max_cond_frames_in_attn
        )
        spatial: list[tuple[int, FrameOutput | None]] = [(0, out) for out in selected_cond.values()]
        non_cond = output_dict["non_cond_frame_outputs"]
        for t_pos, idx in self._memory_frame_indices(frame_idx, track_in_reverse):
            # A conditioning frame left out by max_cond_frames_in_attn still serves as a recent frame.
            spatial.append((t_pos, non_cond.get(idx, unselected_cond.get(idx))))

        tokens: list[torch.Tensor] = []
        token_pos: list[torch.Tensor] = []
        for t_pos, out in spatial:
            if out is None:
                continue
            # Stored memories may live on the CPU (offload_state_to_cpu); bring them here.
            feats = out["maskmem_features"].to(device, non_blocking=True)
            tokens.append(feats.flatten(2).permute(2, 0, 1))
            pos = out["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
            token_pos.append(pos + self.maskmem_tpos_enc[self.num_maskmem - t_pos - 1])

        num_obj_ptr_tokens = 0
        if self.use_obj_ptrs_in_encoder:
            ptrs, ptr_pos = self._gather_obj_ptrs(
                frame_idx,
                selected_cond,
                unselected_cond,
                non_cond,
                num_frames,
                track_in_reverse,
                batch,
                device,
            )
            if ptrs is not None:
                tokens.append(ptrs)
                token_pos.append(ptr_pos)
                num_obj_ptr_tokens = ptrs.shape[0]
        return torch.cat(tokens, dim=0), torch.cat(token_pos, dim=0), num_obj_ptr_tokens

    def _gather_obj_ptrs(
        self,
        frame_idx: int,
        selected_cond: dict[int, FrameOutput],
        unselected_cond: dict[int, FrameOutput],
        non_cond: dict[int, FrameOutput],
        num_frames: int,
        track_in_reverse: bool,
        batch: int,
        device: torch.device,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Object pointers of conditioning frames and up to max_obj_ptrs_in_encoder-1 recent frames, as
        memory tokens with a temporal sine encoding of their distance to `frame_idx`."""
        channels = self.hidden_dim
        max_ptrs = min(num_frames, self.max_obj_ptrs_in_encoder)
        direction = -1 if track_in_reverse else 1
        cond_for_ptrs = selected_cond
        if not self.training and self.only_obj_ptrs_in_the_past_for_eval:
            cond_for_ptrs = {
                t: out
                for t, out in selected_cond.items()
                if (t >= frame_idx if track_in_reverse else t <= frame_idx)
            }
        distances: list[int] = []
        pointers: list[torch.Tensor] = []
        for t, out in cond_for_ptrs.items():
            gap = (frame_idx - t) * direction if self.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t)
            distances.append(gap)
            pointers.append(out["obj_ptr"])
        for gap in range(1, max_ptrs):
            t = frame_idx - gap * direction
            if t < 0 or (num_frames is not None and t >= num_frames):
                break
            out = non_cond.get(t, unselected_cond.get(t))
            if out is not None:
                distances.append(gap)
                pointers.append(out["obj_ptr"])
        if not pointers:
            return None, None

        ptrs = torch.stack(pointers, dim=0)  # [P, B, C]
        if self.add_tpos_enc_to_obj_ptrs:
            pe_dim = channels if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
            rel = torch.tensor(distances).to(device=device, non_blocking=True)
            pos = get_1d_sine_pe(rel / max(max_ptrs - 1, 1), dim=pe_dim)
            pos = self.obj_ptr_tpos_proj(pos).unsqueeze(1).expand(-1, batch, self.mem_dim)
        else:
            pos = ptrs.new_zeros(len(distances), batch, self.mem_dim)
        if self.mem_dim < channels:
            # A C-wide pointer becomes C/mem_dim tokens of width mem_dim, each with the pointer's encoding.
            split = channels // self.mem_dim
            ptrs = ptrs.reshape(-1, batch, split, self.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
            pos = pos.repeat_interleave(split, dim=0)
        return ptrs, pos

    def _encode_new_memory(
        self,
        current_vision_feats: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        pred_masks_high_res: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Memory of one frame from its coarsest features and predicted mask logits [B, 1, S, S].

        Returns (maskmem_features [B, mem_dim, H, W], maskmem_pos_enc [list of [B, mem_dim, H, W]]).
        """
        batch = current_vision_feats[-1].size(1)
        height, width = feat_sizes[-1]
        pix_feat = current_vision_feats[-1].permute(1, 2, 0).view(batch, self.hidden_dim, height, width)
        masks = pred_masks_high_res
        if self.non_overlap_masks_for_mem_enc and not self.training:
            masks = self._apply_non_overlapping_constraints(masks)
        if self.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts and not self.training:
            mask_for_mem = (masks > 0).float()
        else:
            mask_for_mem = torch.sigmoid(masks)
        if self.sigmoid_scale_for_mem_enc != 1.0:
            mask_for_mem = mask_for_mem * self.sigmoid_scale_for_mem_enc
        if self.sigmoid_bias_for_mem_enc != 0.0:
            mask_for_mem = mask_for_mem + self.sigmoid_bias_for_mem_enc
        encoded = self.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)
        maskmem_features = encoded["vision_features"]
        maskmem_pos_enc = encoded["vision_pos_enc"]
        if self.no_obj_embed_spatial is not None:
            # Mark frames judged occluded with the learned "no object" embedding.
            absent = 1 - (object_score_logits > 0).float()
            maskmem_features = maskmem_features + absent[..., None, None] * self.no_obj_embed_spatial[
                ..., None, None
            ].expand(*maskmem_features.shape)
        return maskmem_features, maskmem_pos_enc

    # ------------------------------------------------------------------------------------------------------
    # Tracking step
    # ------------------------------------------------------------------------------------------------------

    def _track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        output_dict: dict[str, dict[int, FrameOutput]],
        num_frames: int,
        track_in_reverse: bool,
        prev_sam_mask_logits: torch.Tensor | None,
    ) -> tuple[FrameOutput, tuple[torch.Tensor, ...], list[torch.Tensor] | None, torch.Tensor]:
        """Segment one frame: returns (frame output with the prompts, SAM head outputs, high-res features,
        the memory-conditioned features)."""
        current_out: FrameOutput = {"point_inputs": point_inputs, "mask_inputs": mask_inputs}
        high_res_features = None
        if len(current_vision_feats) > 1:
            high_res_features = [
                seq.permute(1, 2, 0).view(seq.size(1), seq.size(2), *size)
                for seq, size in zip(current_vision_feats[:-1], feat_sizes[:-1], strict=True)
            ]
        if mask_inputs is not None and self.use_mask_input_as_output_without_sam:
            pix_feat = current_vision_feats[-1].permute(1, 2, 0).view(-1, self.hidden_dim, *feat_sizes[-1])
            sam_outputs = self._use_mask_as_output(pix_feat, high_res_features, mask_inputs)
        else:
            pix_feat = self._prepare_memory_conditioned_features(
                frame_idx=frame_idx,
                is_init_cond_frame=is_init_cond_frame,
                current_vision_feats=current_vision_feats[-1:],
                current_vision_pos_embeds=current_vision_pos_embeds[-1:],
                feat_sizes=feat_sizes[-1:],
                output_dict=output_dict,
                num_frames=num_frames,
                track_in_reverse=track_in_reverse,
            )
            if prev_sam_mask_logits is not None:
                # Earlier logits of this frame refine the new clicks (interactive correction).
                if point_inputs is None or mask_inputs is not None:
                    raise ValueError("prev_sam_mask_logits goes with point prompts and no mask prompt")
                mask_inputs = prev_sam_mask_logits
            sam_outputs = self._forward_sam_heads(
                backbone_features=pix_feat,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                high_res_features=high_res_features,
                multimask_output=self._use_multimask(is_init_cond_frame, point_inputs),
            )
        return current_out, sam_outputs, high_res_features, pix_feat

    def _encode_memory_in_output(
        self,
        current_vision_feats: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        run_mem_encoder: bool,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        current_out: FrameOutput,
    ) -> None:
        """Add "maskmem_features" / "maskmem_pos_enc" to `current_out` (None when not encoded)."""
        if run_mem_encoder and self.num_maskmem > 0:
            feats, pos = self._encode_new_memory(
                current_vision_feats=current_vision_feats,
                feat_sizes=feat_sizes,
                pred_masks_high_res=high_res_masks,
                object_score_logits=object_score_logits,
                is_mask_from_pts=point_inputs is not None,
            )
            current_out["maskmem_features"] = feats
            current_out["maskmem_pos_enc"] = pos
        else:
            current_out["maskmem_features"] = None
            current_out["maskmem_pos_enc"] = None

    def track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        output_dict: dict[str, dict[int, FrameOutput]],
        num_frames: int,
        track_in_reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_sam_mask_logits: torch.Tensor | None = None,
    ) -> FrameOutput:
        """Segment frame `frame_idx` from its prompts and the memory in `output_dict`, then (with
        `run_mem_encoder`) encode its memory.

        Returns {"point_inputs", "mask_inputs", "pred_masks" [B, 1, S/4, S/4], "pred_masks_high_res"
        [B, 1, S, S], "obj_ptr" [B, C], "object_score_logits" (eval only), "maskmem_features",
        "maskmem_pos_enc"}.
        """
        current_out, sam_outputs, _, _ = self._track_step(
            frame_idx,
            is_init_cond_frame,
            current_vision_feats,
            current_vision_pos_embeds,
            feat_sizes,
            point_inputs,
            mask_inputs,
            output_dict,
            num_frames,
            track_in_reverse,
            prev_sam_mask_logits,
        )
        _, _, _, low_res_masks, high_res_masks, obj_ptr, object_score_logits = sam_outputs
        current_out["pred_masks"] = low_res_masks
        current_out["pred_masks_high_res"] = high_res_masks
        current_out["obj_ptr"] = obj_ptr
        if not self.training:
            # Only at inference: in training an output no loss reads would upset activation checkpointing.
            current_out["object_score_logits"] = object_score_logits
        self._encode_memory_in_output(
            current_vision_feats,
            feat_sizes,
            point_inputs,
            run_mem_encoder,
            high_res_masks,
            object_score_logits,
            current_out,
        )
        return current_out

    def _use_multimask(self, is_init_cond_frame: bool, point_inputs: dict[str, torch.Tensor] | None) -> bool:
        """Three candidate masks are asked for when the prompt is ambiguous (few clicks) on an initial
        conditioning frame, or also while tracking when multimask_output_for_tracking is set."""
        num_pts = 0 if point_inputs is None else point_inputs["point_labels"].size(1)
        return bool(
            self.multimask_output_in_sam
            and (is_init_cond_frame or self.multimask_output_for_tracking)
            and self.multimask_min_pt_num <= num_pts <= self.multimask_max_pt_num
        )

    def _apply_non_overlapping_constraints(self, pred_masks: torch.Tensor) -> torch.Tensor:
        """At each pixel keep only the highest-scoring object of the batch [N, 1, H, W]; the others are
        pushed to at most -10 (sigmoid ~ 4.5e-5)."""
        if pred_masks.size(0) == 1:
            return pred_masks
        winner = torch.argmax(pred_masks, dim=0, keepdim=True)
        own_index = torch.arange(pred_masks.size(0), device=pred_masks.device)[:, None, None, None]
        return torch.where(winner == own_index, pred_masks, torch.clamp(pred_masks, max=-10.0))
