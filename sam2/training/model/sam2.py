"""SAM2Train: SAM 2 with the prompt simulation used to train it on video clips and images.

For each clip the model draws which frames get an initial prompt (a ground-truth mask, a noisy box or a
click), on which frames corrective clicks are added from the error region of its own prediction, then
tracks the clip frame by frame through its memory. Losses are computed on every prediction step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.checkpoint
from torch import nn

from sam2.modeling.sam2_base import SAM2Base
from sam2.modeling.sam2_utils import get_next_point, sample_box_points
from sam2.training.utils.data_utils import BatchedVideoDatapoint
from sam2.utils.misc import concat_points

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSimulation:
    """How prompts are simulated in one mode (train or eval); see SAM2Train for the meaning."""

    prob_to_use_pt_input: float
    prob_to_use_box_input: float
    num_frames_to_correct: int
    rand_frames_to_correct: bool
    num_init_cond_frames: int
    rand_init_cond_frames: bool
    point_sampling: str  # "uniform" (training) or "center"
    prob_to_sample_from_gt: float


@dataclass
class PromptPlan:
    """The prompts drawn for one batch: which frames get which inputs."""

    use_pt_input: bool
    init_cond_frames: list[int]
    frames_not_in_init_cond: list[int]
    frames_to_add_correction_pt: list[int]
    mask_inputs_per_frame: dict[int, torch.Tensor]
    point_inputs_per_frame: dict[int, dict[str, torch.Tensor]]
    gt_masks_per_frame: dict[int, torch.Tensor]


def checkpoint_module_forward(module: nn.Module) -> None:
    """Recompute `module`'s activations in the backward pass instead of storing them.

    Wraps the instance's forward with non-reentrant `torch.utils.checkpoint`, leaving parameters and
    state-dict names unchanged; the RNG state is replayed, so drop-path draws stay identical.
    """
    original = module.forward

    def forward_with_recompute(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return original(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(original, *args, use_reentrant=False, **kwargs)

    module.forward = forward_with_recompute


class SAM2Train(SAM2Base):
    """SAM2Base plus the SAM 2 training-time prompt simulation (official parameter names and defaults).

    - prob_to_use_pt_input_for_train/eval: probability that a batch is prompted with clicks or boxes
      instead of ground-truth masks on its initial conditioning frames.
    - prob_to_use_box_input_for_train/eval: given clicks, probability of a (noisy) box instead.
    - num_frames_to_correct_for_train/eval, rand_frames_to_correct_for_train/eval: frames receiving
      corrective clicks (drawn uniformly between the number of initial conditioning frames and this
      number when rand_*); always including the initial conditioning frames.
    - num_init_cond_frames_for_train/eval, rand_init_cond_frames_for_train/eval: frames prompted at the
      start (the first frame always; up to this many, drawn uniformly from 1 when rand_*).
    - add_all_frames_to_correct_as_cond: a corrected frame becomes a conditioning frame in memory.
    - num_correction_pt_per_frame: corrective clicks added one after another on each such frame.
    - pt_sampling_for_eval: "center" (centre of the largest error) or "uniform" in eval.
    - prob_to_sample_from_gt_for_train: chance that a corrective click is drawn from the ground truth
      alone instead of the error region.
    - use_act_ckpt_iterative_pt_sampling: activation checkpointing of the decoder during corrections.
    - forward_backbone_per_frame_for_eval: in eval, run the image encoder frame by frame (less memory).
    - freeze_image_encoder: no gradients for the image encoder (it also runs in eval mode and without
      autograd), a memory saver for fine-tuning on one GPU.
    - activation_checkpointing: recompute Hiera blocks and memory-attention layers in backward.
    - prompt_seed: seed of the prompt-drawing generator (reseeded by the trainer every epoch).
    - box_absent_objects_as_clicks: a box drawn for a batch where some object is absent on that frame
      becomes clicks (ours); False, as upstream: the box of the empty mask (inverted corners) is given.
    - require_objects_on_first_frame: clicking on the clip's first frame an object that is absent there
      is a ValueError naming it (ours, to find bad annotations); False, as upstream: it gets a negative
      click from the background.
    Image-only batches (one frame) are always prompted with clicks or a box on that frame.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        memory_attention: nn.Module,
        memory_encoder: nn.Module,
        prob_to_use_pt_input_for_train: float = 0.0,
        prob_to_use_pt_input_for_eval: float = 0.0,
        prob_to_use_box_input_for_train: float = 0.0,
        prob_to_use_box_input_for_eval: float = 0.0,
        num_frames_to_correct_for_train: int = 1,
        num_frames_to_correct_for_eval: int = 1,
        rand_frames_to_correct_for_train: bool = False,
        rand_frames_to_correct_for_eval: bool = False,
        num_init_cond_frames_for_train: int = 1,
        num_init_cond_frames_for_eval: int = 1,
        rand_init_cond_frames_for_train: bool = True,
        rand_init_cond_frames_for_eval: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
        num_correction_pt_per_frame: int = 7,
        pt_sampling_for_eval: str = "center",
        prob_to_sample_from_gt_for_train: float = 0.0,
        use_act_ckpt_iterative_pt_sampling: bool = False,
        forward_backbone_per_frame_for_eval: bool = False,
        freeze_image_encoder: bool = False,
        activation_checkpointing: bool = False,
        prompt_seed: int = 42,
        box_absent_objects_as_clicks: bool = False,
        require_objects_on_first_frame: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_encoder, memory_attention, memory_encoder, **kwargs)
        if pt_sampling_for_eval not in ("center", "uniform"):
            raise ValueError(
                f"pt_sampling_for_eval must be 'center' or 'uniform', got {pt_sampling_for_eval!r}"
            )
        for name, value in (
            ("num_init_cond_frames_for_train", num_init_cond_frames_for_train),
            ("num_init_cond_frames_for_eval", num_init_cond_frames_for_eval),
            ("num_frames_to_correct_for_train", num_frames_to_correct_for_train),
            ("num_frames_to_correct_for_eval", num_frames_to_correct_for_eval),
        ):
            if value < 1:
                raise ValueError(f"SAM2Train: {name} must be >= 1, got {value}")
        self.train_prompts = PromptSimulation(
            prob_to_use_pt_input=prob_to_use_pt_input_for_train,
            prob_to_use_box_input=prob_to_use_box_input_for_train,
            num_frames_to_correct=num_frames_to_correct_for_train,
            rand_frames_to_correct=rand_frames_to_correct_for_train,
            num_init_cond_frames=num_init_cond_frames_for_train,
            rand_init_cond_frames=rand_init_cond_frames_for_train,
            point_sampling="uniform",
            prob_to_sample_from_gt=prob_to_sample_from_gt_for_train,
        )
        self.eval_prompts = PromptSimulation(
            prob_to_use_pt_input=prob_to_use_pt_input_for_eval,
            prob_to_use_box_input=prob_to_use_box_input_for_eval,
            num_frames_to_correct=num_frames_to_correct_for_eval,
            rand_frames_to_correct=rand_frames_to_correct_for_eval,
            num_init_cond_frames=num_init_cond_frames_for_eval,
            rand_init_cond_frames=rand_init_cond_frames_for_eval,
            point_sampling=pt_sampling_for_eval,
            prob_to_sample_from_gt=0.0,
        )
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
        self.num_correction_pt_per_frame = num_correction_pt_per_frame
        self.use_act_ckpt_iterative_pt_sampling = use_act_ckpt_iterative_pt_sampling
        self.forward_backbone_per_frame_for_eval = forward_backbone_per_frame_for_eval
        self.freeze_image_encoder = freeze_image_encoder
        self.rng = np.random.default_rng(seed=prompt_seed)
        self._warned_all_frames_prompted = False
        self.box_absent_objects_as_clicks = box_absent_objects_as_clicks
        self.require_objects_on_first_frame = require_objects_on_first_frame

        if freeze_image_encoder:
            for param in self.image_encoder.parameters():
                param.requires_grad_(False)
        if activation_checkpointing:
            self._enable_activation_checkpointing()

    def _enable_activation_checkpointing(self) -> None:
        wrapped = 0
        trunk_blocks = getattr(getattr(self.image_encoder, "trunk", None), "blocks", None)
        if trunk_blocks is not None and not self.freeze_image_encoder:
            for block in trunk_blocks:
                checkpoint_module_forward(block)
                wrapped += 1
        for layer in getattr(self.memory_attention, "layers", []):
            checkpoint_module_forward(layer)
            wrapped += 1
        if wrapped == 0:
            raise ValueError(
                "activation_checkpointing=True but neither image_encoder.trunk.blocks nor "
                "memory_attention.layers exist in this model"
            )
        logger.info("activation checkpointing on %d blocks/layers", wrapped)

    def reseed_prompts(self, seed: int) -> None:
        """Restart the prompt-drawing generator (the trainer does this each epoch so resumes replay)."""
        self.rng = np.random.default_rng(seed=seed)

    def train(self, mode: bool = True) -> SAM2Train:
        super().train(mode)
        if self.freeze_image_encoder:
            self.image_encoder.eval()
        return self

    # ------------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------------

    def forward(self, input: BatchedVideoDatapoint) -> list[dict[str, Any]]:
        """Track every object of the batch through its clip; returns one output dict per frame."""
        if self.training or not self.forward_backbone_per_frame_for_eval:
            backbone_out = self.forward_image(input.flat_img_batch)
        else:
            backbone_out = {"backbone_fpn": None, "vision_pos_enc": None}
        plan = self.prepare_prompt_inputs(input)
        return self.forward_tracking(backbone_out, plan, input)

    def forward_image(self, img_batch: torch.Tensor) -> dict[str, Any]:
        if not self.freeze_image_encoder:
            return super().forward_image(img_batch)
        with torch.no_grad():
            backbone_out = self.image_encoder(img_batch)
        if self.use_high_res_features_in_sam:
            fpn = backbone_out["backbone_fpn"]
            fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return backbone_out

    def _backbone_features_for_images(
        self, img_batch: torch.Tensor, img_ids: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """Encode only the images `img_ids` (each distinct image once), expanded back to one per object."""
        unique_ids, inverse = torch.unique(img_ids, return_inverse=True)
        backbone_out = self.forward_image(img_batch[unique_ids])
        _, feats, pos, sizes = self._prepare_backbone_features(backbone_out)
        return [x[:, inverse] for x in feats], [x[:, inverse] for x in pos], sizes

    # ------------------------------------------------------------------------------------------------------
    # Prompt simulation
    # ------------------------------------------------------------------------------------------------------

    def prepare_prompt_inputs(self, input: BatchedVideoDatapoint, start_frame_idx: int = 0) -> PromptPlan:
        """Draw the prompts of this batch: initial conditioning frames and their inputs, frames to correct.

        Raises ValueError when the clip is too short for the configured conditioning/correction frames,
        or when an object is empty in the ground truth of the first frame it must be clicked/boxed on.
        That error is kept for input that is bad at the source: an object that merely vanished in the
        augmentation (e.g. too small for the resize) is dropped by VOSDataset before it gets here. On
        later initial conditioning frames an absent object gets a click from the background instead (the
        simulated user says "not here"), as upstream does.
        """
        settings = self.train_prompts if self.training else self.eval_prompts
        num_frames = input.num_frames
        gt_masks_per_frame = {t: masks.unsqueeze(1) for t, masks in enumerate(input.masks)}
        prob_pt = settings.prob_to_use_pt_input
        num_init = settings.num_init_cond_frames
        num_correct = settings.num_frames_to_correct
        if num_frames == 1:
            # Images (SA-1B style) are always prompted interactively, on their only frame.
            prob_pt, num_init, num_correct = 1.0, 1, 1
        mode = "train" if self.training else "eval"
        if num_init > num_frames - start_frame_idx or num_correct > num_frames - start_frame_idx:
            raise ValueError(
                f"a clip of {num_frames} frames cannot hold num_init_cond_frames_for_{mode}={num_init} "
                f"and num_frames_to_correct_for_{mode}={num_correct}; sample at least "
                f"{max(num_init, num_correct)} frames per clip (scratch.num_frames) or lower these settings"
            )

        use_pt_input = bool(self.rng.random() < prob_pt)
        if settings.rand_init_cond_frames and num_init > 1:
            num_init = int(self.rng.integers(1, num_init, endpoint=True))
        num_init = self._leave_a_frame_to_track(num_init, num_frames - start_frame_idx, use_pt_input)
        if use_pt_input and settings.rand_frames_to_correct and num_correct > num_init:
            num_correct = int(self.rng.integers(num_init, num_correct, endpoint=True))

        later_frames = list(range(start_frame_idx + 1, num_frames))
        init_cond_frames = [start_frame_idx]
        if num_init > 1:
            init_cond_frames += self.rng.choice(later_frames, num_init - 1, replace=False).tolist()
        frames_not_in_init_cond = [t for t in range(start_frame_idx, num_frames) if t not in init_cond_frames]

        plan = PromptPlan(
            use_pt_input=use_pt_input,
            init_cond_frames=init_cond_frames,
            frames_not_in_init_cond=frames_not_in_init_cond,
            frames_to_add_correction_pt=[],
            mask_inputs_per_frame={},
            point_inputs_per_frame={},
            gt_masks_per_frame=gt_masks_per_frame,
        )
        for t in init_cond_frames:
            gt = gt_masks_per_frame[t]
            if not use_pt_input:
                plan.mask_inputs_per_frame[t] = gt
                continue
            if self.require_objects_on_first_frame:
                self._check_objects_present(input, t, is_first=t == start_frame_idx)
            use_box = self.rng.random() < settings.prob_to_use_box_input
            all_present = bool(gt.flatten(1).any(dim=1).all())
            if use_box and (all_present or not self.box_absent_objects_as_clicks):
                points, labels = sample_box_points(gt)
            else:
                # box_absent_objects_as_clicks: a box around an absent object has no meaning; an (often
                # negative) click stands in.
                points, labels = get_next_point(gt, None, method=settings.point_sampling)
            plan.point_inputs_per_frame[t] = {"point_coords": points, "point_labels": labels}

        if use_pt_input:
            extra = num_correct - len(init_cond_frames)
            plan.frames_to_add_correction_pt = list(init_cond_frames)
            if extra > 0:
                plan.frames_to_add_correction_pt += self.rng.choice(
                    frames_not_in_init_cond, extra, replace=False
                ).tolist()
        return plan

    def _leave_a_frame_to_track(self, num_init: int, clip_frames: int, use_pt_input: bool) -> int:
        """Mask-prompted conditioning frames output their input mask unchanged, so a clip whose every
        frame is one has no prediction to supervise and its loss no gradient (upstream fails there with
        "element 0 of tensors does not require grad"). In training one frame is therefore left unprompted,
        to be tracked from memory and supervised. Click/box prompts go through the decoder: kept as drawn."""
        if not self.training or use_pt_input or clip_frames < 2 or num_init < clip_frames:
            return num_init
        if not self._warned_all_frames_prompted:
            self._warned_all_frames_prompted = True
            logger.warning(
                "a %d-frame clip drew %d mask-prompted conditioning frames (num_init_cond_frames_for_train="
                "%d, rand_init_cond_frames_for_train=%s), which would leave no prediction to learn from; "
                "such clips get %d mask-prompted frame(s) and one tracked frame instead. Sample longer "
                "clips (scratch.num_frames) to keep the setting as it is. (Shown once.)",
                clip_frames,
                num_init,
                self.train_prompts.num_init_cond_frames,
                self.train_prompts.rand_init_cond_frames,
                clip_frames - 1,
            )
        return clip_frames - 1

    @staticmethod
    def _check_objects_present(input: BatchedVideoDatapoint, frame: int, is_first: bool) -> None:
        if not is_first:
            return
        present = input.masks[frame].flatten(1).any(dim=1)
        if bool(present.all()):
            return
        missing = int((~present).nonzero()[0, 0])
        video_id, object_id, frame_id = input.metadata.unique_objects_identifier[frame, missing].tolist()
        raise ValueError(
            f"empty ground-truth mask on a correction frame: video_id {video_id}, object {object_id}, "
            f"frame {frame_id} is the first frame of the clip and must be clicked on, but the object is not "
            "visible there. Training data from VOSDataset never holds such an object (its sampler picks "
            "objects visible in the first frame, and objects the transforms empty there are dropped), so "
            "this batch was built another way: check that frame's annotation (sam2.tools.validate_dataset "
            "reports such videos) and sample only objects visible in the first frame; in evaluation, "
            "prompt with masks (prob_to_use_pt_input_for_eval=0.0) or give the eval data set such objects "
            "only."
        )

    # ------------------------------------------------------------------------------------------------------
    # Tracking
    # ------------------------------------------------------------------------------------------------------

    def forward_tracking(
        self, backbone_out: dict[str, Any], plan: PromptPlan, input: BatchedVideoDatapoint
    ) -> list[dict[str, Any]]:
        """Run `track_step` over the frames, conditioning frames first; outputs in time order."""
        precomputed = backbone_out["backbone_fpn"] is not None
        if precomputed:
            _, vision_feats, vision_pos_embeds, feat_sizes = self._prepare_backbone_features(backbone_out)
        num_frames = input.num_frames
        output_dict: dict[str, dict[int, dict[str, Any]]] = {
            "cond_frame_outputs": {},
            "non_cond_frame_outputs": {},
        }
        for frame_idx in plan.init_cond_frames + plan.frames_not_in_init_cond:
            img_ids = input.flat_obj_to_img_idx[frame_idx]
            if precomputed:
                feats = [x[:, img_ids] for x in vision_feats]
                pos = [x[:, img_ids] for x in vision_pos_embeds]
            else:
                feats, pos, feat_sizes = self._backbone_features_for_images(input.flat_img_batch, img_ids)
            current_out = self.track_step(
                frame_idx=frame_idx,
                is_init_cond_frame=frame_idx in plan.init_cond_frames,
                current_vision_feats=feats,
                current_vision_pos_embeds=pos,
                feat_sizes=feat_sizes,
                point_inputs=plan.point_inputs_per_frame.get(frame_idx),
                mask_inputs=plan.mask_inputs_per_frame.get(frame_idx),
                output_dict=output_dict,
                num_frames=num_frames,
                frames_to_add_correction_pt=plan.frames_to_add_correction_pt,
                gt_masks=plan.gt_masks_per_frame.get(frame_idx),
            )
            is_cond = frame_idx in plan.init_cond_frames or (
                self.add_all_frames_to_correct_as_cond and frame_idx in plan.frames_to_add_correction_pt
            )
            output_dict["cond_frame_outputs" if is_cond else "non_cond_frame_outputs"][frame_idx] = (
                current_out
            )

        merged = {**output_dict["cond_frame_outputs"], **output_dict["non_cond_frame_outputs"]}
        return [{k: v for k, v in merged[t].items() if k != "obj_ptr"} for t in range(num_frames)]

    def track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        output_dict: dict[str, dict[int, dict[str, Any]]],
        num_frames: int,
        track_in_reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_sam_mask_logits: torch.Tensor | None = None,
        frames_to_add_correction_pt: list[int] | None = None,
        gt_masks: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """SAM2Base.track_step, keeping every prediction step ("multistep_*") for the loss and adding
        corrective clicks on `frames_to_add_correction_pt`."""
        current_out, sam_outputs, high_res_features, pix_feat = self._track_step(
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
        low_multi, high_multi, ious, low_res_masks, high_res_masks, obj_ptr, score_logits = sam_outputs
        steps = {
            "multistep_pred_masks": [low_res_masks],
            "multistep_pred_masks_high_res": [high_res_masks],
            "multistep_pred_multimasks": [low_multi],
            "multistep_pred_multimasks_high_res": [high_multi],
            "multistep_pred_ious": [ious],
            "multistep_point_inputs": [point_inputs],
            "multistep_object_score_logits": [score_logits],
        }
        if frame_idx in (frames_to_add_correction_pt or []):
            if gt_masks is None:
                raise ValueError(f"frame {frame_idx} is to be corrected but has no ground-truth masks")
            point_inputs, sam_outputs = self._add_correction_clicks(
                is_init_cond_frame, point_inputs, gt_masks, high_res_features, pix_feat, sam_outputs, steps
            )
            _, _, _, low_res_masks, high_res_masks, obj_ptr, score_logits = sam_outputs

        current_out["multistep_pred_masks"] = torch.cat(steps["multistep_pred_masks"], dim=1)
        current_out["multistep_pred_masks_high_res"] = torch.cat(
            steps["multistep_pred_masks_high_res"], dim=1
        )
        for key in (
            "multistep_pred_multimasks",
            "multistep_pred_multimasks_high_res",
            "multistep_pred_ious",
            "multistep_point_inputs",
            "multistep_object_score_logits",
        ):
            current_out[key] = steps[key]
        current_out["pred_masks"] = low_res_masks
        current_out["pred_masks_high_res"] = high_res_masks
        current_out["obj_ptr"] = obj_ptr
        self._encode_memory_in_output(
            current_vision_feats,
            feat_sizes,
            point_inputs,
            run_mem_encoder,
            high_res_masks,
            score_logits,
            current_out,
        )
        return current_out

    def _add_correction_clicks(
        self,
        is_init_cond_frame: bool,
        point_inputs: dict[str, torch.Tensor] | None,
        gt_masks: torch.Tensor,
        high_res_features: list[torch.Tensor] | None,
        pix_feat: torch.Tensor,
        sam_outputs: tuple[torch.Tensor, ...],
        steps: dict[str, list],
    ) -> tuple[dict[str, torch.Tensor] | None, tuple[torch.Tensor, ...]]:
        """Add `num_correction_pt_per_frame` clicks one at a time, each placed in the error region of the
        latest prediction, feeding the previous mask logits back into the decoder."""
        settings = self.train_prompts if self.training else self.eval_prompts
        gt_bool = gt_masks.bool()
        for _ in range(self.num_correction_pt_per_frame):
            from_gt = (
                settings.prob_to_sample_from_gt > 0 and self.rng.random() < settings.prob_to_sample_from_gt
            )
            high_res_masks = sam_outputs[4]
            prediction = None if from_gt else high_res_masks > 0
            new_points, new_labels = get_next_point(gt_bool, prediction, method=settings.point_sampling)
            point_inputs = concat_points(point_inputs, new_points, new_labels)
            multimask = self._use_multimask(is_init_cond_frame, point_inputs)
            head_kwargs = {
                "backbone_features": pix_feat,
                "point_inputs": point_inputs,
                "mask_inputs": sam_outputs[3],
                "high_res_features": high_res_features,
                "multimask_output": multimask,
            }
            if self.use_act_ckpt_iterative_pt_sampling and not multimask and torch.is_grad_enabled():
                sam_outputs = torch.utils.checkpoint.checkpoint(
                    self._forward_sam_heads, use_reentrant=False, **head_kwargs
                )
            else:
                sam_outputs = self._forward_sam_heads(**head_kwargs)
            low_multi, high_multi, ious, low_res_masks, high_res_masks, _, score_logits = sam_outputs
            steps["multistep_pred_masks"].append(low_res_masks)
            steps["multistep_pred_masks_high_res"].append(high_res_masks)
            steps["multistep_pred_multimasks"].append(low_multi)
            steps["multistep_pred_multimasks_high_res"].append(high_multi)
            steps["multistep_pred_ious"].append(ious)
            steps["multistep_point_inputs"].append(point_inputs)
            steps["multistep_object_score_logits"].append(score_logits)
        return point_inputs, sam_outputs
