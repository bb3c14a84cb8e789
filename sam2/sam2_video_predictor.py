"""Interactive video object segmentation: prompt objects with clicks, boxes or masks on any frames, then
propagate them through the video (forward or in reverse) with SAM 2's memory.

The session state is a plain dict with the official keys (`num_frames`, `video_height`, `video_width`,
`obj_ids`, `output_dict_per_obj`, ...), so scripts written for the official predictor run unchanged.
Memory features are stored in `memory_dtype` (bf16 by default, as the official predictor stores them) and
read back in the compute dtype, so a second pass, a reverse pass and corrections also work on the CPU;
`memory_dtype: float32` in the model config keeps them in full precision.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base
from sam2.utils.misc import concat_points, fill_holes_in_mask_scores, load_video_frames

logger = logging.getLogger(__name__)

InferenceState = dict[str, Any]
FrameOutput = dict[str, Any]

COND = "cond_frame_outputs"
NON_COND = "non_cond_frame_outputs"
# Logits of earlier predictions fed back with new clicks are clamped to this range.
PREV_LOGITS_CLAMP = 32.0
BOX_LABELS = (2, 3)
VALID_POINT_LABELS = (-1, 0, 1, 2, 3)


def _empty_output_dict() -> dict[str, dict[int, FrameOutput]]:
    return {COND: {}, NON_COND: {}}


class SAM2VideoPredictor(SAM2Base):
    """SAM 2 with a per-video session API: `init_state`, `add_new_points_or_box`, `add_new_mask`,
    `propagate_in_video`, `clear_all_prompts_in_frame`, `remove_object`, `reset_state`.

    Extra options (official names):
    - fill_hole_area: fill background holes up to this many pixels (low-res mask) in outputs; 0 = off.
    - non_overlap_masks: at each pixel only the highest-scoring object is foreground in returned masks.
    - clear_non_cond_mem_around_input: forget tracked (non-conditioning) memories within
      num_maskmem * stride frames of a newly prompted frame.
    - add_all_frames_to_correct_as_cond: a prompt on an already tracked frame makes it a conditioning frame.
    """

    def __init__(
        self,
        fill_hole_area: int = 0,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        self.clear_non_cond_mem_around_input = clear_non_cond_mem_around_input
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs: Any) -> SAM2VideoPredictor:
        """A video predictor for an official release on the Hugging Face hub (e.g.
        "facebook/sam2.1-hiera-large"); keyword arguments go to `build_sam2_video_predictor` (device,
        vos_optimized, ...). See `sam2.build_sam.build_sam2_video_predictor_hf`."""
        from sam2.build_sam import build_sam2_video_predictor_hf

        return build_sam2_video_predictor_hf(model_id, **kwargs)

    # ------------------------------------------------------------------------------------------------------
    # Session
    # ------------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def init_state(
        self,
        video_path: str | os.PathLike,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
    ) -> InferenceState:
        """Open a video (a folder of `<index>.jpg` frames or a video file) and start an empty session.

        offload_video_to_cpu keeps the frames in host memory; offload_state_to_cpu keeps the per-frame
        outputs (memories, masks) there; async_loading_frames reads frames in a background thread.
        Raises FileNotFoundError / ValueError for a missing folder, an empty one or frames not named by
        integers.
        """
        compute_device = self.device
        images, video_height, video_width = load_video_frames(
            video_path=video_path,
            image_size=self.image_size,
            offload_video_to_cpu=offload_video_to_cpu,
            async_loading_frames=async_loading_frames,
            compute_device=compute_device,
        )
        state: InferenceState = {
            "images": images,
            "num_frames": len(images),
            "offload_video_to_cpu": offload_video_to_cpu,
            "offload_state_to_cpu": offload_state_to_cpu,
            "video_height": video_height,
            "video_width": video_width,
            "video_path": str(video_path),
            "device": compute_device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else compute_device,
            # Per object index: {frame_idx: prompt}.
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            # Backbone features of the most recently used frame only (a whole video would not fit).
            "cached_features": {},
            # Tensors equal for every frame and object (the memory position encoding).
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            # Per object index: committed outputs, and outputs of prompts not yet propagated.
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            # Per object index: {frame_idx: {"reverse": bool}} for frames that have been tracked.
            "frames_tracked_per_obj": {},
        }
        # Features of the first frame now: it is usually where the user clicks first.
        self._get_image_feature(state, frame_idx=0, batch_size=1)
        return state

    @torch.inference_mode()
    def reset_state(self, inference_state: InferenceState) -> None:
        """Forget every object, prompt and result of the session (the frames stay loaded)."""
        self._reset_tracking_results(inference_state)
        for key in (
            "obj_id_to_idx",
            "obj_idx_to_id",
            "point_inputs_per_obj",
            "mask_inputs_per_obj",
            "output_dict_per_obj",
            "temp_output_dict_per_obj",
            "frames_tracked_per_obj",
        ):
            inference_state[key].clear()
        inference_state["obj_ids"].clear()

    def _reset_tracking_results(self, inference_state: InferenceState) -> None:
        for per_obj in ("point_inputs_per_obj", "mask_inputs_per_obj", "frames_tracked_per_obj"):
            for frames in inference_state[per_obj].values():
                frames.clear()
        for per_obj in ("output_dict_per_obj", "temp_output_dict_per_obj"):
            for outputs in inference_state[per_obj].values():
                outputs[COND].clear()
                outputs[NON_COND].clear()

    # ------------------------------------------------------------------------------------------------------
    # Object ids
    # ------------------------------------------------------------------------------------------------------

    def _obj_id_to_idx(self, inference_state: InferenceState, obj_id: Any) -> int:
        """Index of a client object id, registering the id on first use."""
        obj_idx = inference_state["obj_id_to_idx"].get(obj_id)
        if obj_idx is not None:
            return obj_idx
        obj_idx = len(inference_state["obj_id_to_idx"])
        inference_state["obj_id_to_idx"][obj_id] = obj_idx
        inference_state["obj_idx_to_id"][obj_idx] = obj_id
        inference_state["obj_ids"] = list(inference_state["obj_id_to_idx"])
        inference_state["point_inputs_per_obj"][obj_idx] = {}
        inference_state["mask_inputs_per_obj"][obj_idx] = {}
        inference_state["output_dict_per_obj"][obj_idx] = _empty_output_dict()
        inference_state["temp_output_dict_per_obj"][obj_idx] = _empty_output_dict()
        inference_state["frames_tracked_per_obj"][obj_idx] = {}
        return obj_idx

    def _known_obj_idx(self, inference_state: InferenceState, obj_id: Any) -> int:
        """Index of an object id that has been prompted; ValueError naming the known ids otherwise."""
        obj_idx = inference_state["obj_id_to_idx"].get(obj_id)
        if obj_idx is None:
            raise ValueError(
                f"object id {obj_id!r} was never prompted in this session (known ids: "
                f"{inference_state['obj_ids']}); add points, a box or a mask for it first"
            )
        return obj_idx

    def _obj_idx_to_id(self, inference_state: InferenceState, obj_idx: int) -> Any:
        return inference_state["obj_idx_to_id"][obj_idx]

    def _get_obj_num(self, inference_state: InferenceState) -> int:
        return len(inference_state["obj_idx_to_id"])

    # ------------------------------------------------------------------------------------------------------
    # Prompts
    # ------------------------------------------------------------------------------------------------------

    def _check_frame_idx(self, inference_state: InferenceState, frame_idx: int) -> None:
        num_frames = inference_state["num_frames"]
        if not isinstance(frame_idx, (int, np.integer)) or not 0 <= frame_idx < num_frames:
            raise IndexError(
                f"frame_idx {frame_idx!r} is outside the video {inference_state.get('video_path', '')!r} "
                f"of {num_frames} frames (valid: 0..{num_frames - 1})"
            )

    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        obj_id: Any,
        points: torch.Tensor | np.ndarray | Sequence | None = None,
        labels: torch.Tensor | np.ndarray | Sequence | None = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: torch.Tensor | np.ndarray | Sequence | None = None,
    ) -> tuple[int, list[Any], torch.Tensor]:
        """Prompt object `obj_id` on `frame_idx` with clicks (points [N, 2] as (x, y), labels [N]: 1
        positive, 0 negative) and/or a box (x0, y0, x1, y1).

        Coordinates are in video pixels (normalize_coords=True) or already in the model's input frame.
        A box must come with clear_old_points=True (it precedes any click). Returns (frame_idx, obj_ids,
        mask logits of all objects on this frame [num_objs, 1, H, W] at video resolution).
        """
        self._check_frame_idx(inference_state, frame_idx)
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if points is None and box is None:
            raise ValueError("give points (with labels) or a box")
        if box is not None and not clear_old_points:
            raise ValueError(
                "a box must be the first prompt of a frame; call with clear_old_points=True "
                "(then add clicks with clear_old_points=False)"
            )
        points_t, labels_t = self._as_point_tensors(points, labels)
        if box is not None:
            box_t = torch.as_tensor(box, dtype=torch.float32)
            if box_t.numel() != 4:
                raise ValueError(f"box must hold 4 numbers (x0, y0, x1, y1), got shape {tuple(box_t.shape)}")
            corners = box_t.reshape(1, 2, 2)
            corner_labels = torch.tensor([BOX_LABELS], dtype=torch.int32)
            points_t = torch.cat([corners, points_t], dim=1)
            labels_t = torch.cat([corner_labels, labels_t], dim=1)
        if normalize_coords:
            size_wh = torch.tensor([inference_state["video_width"], inference_state["video_height"]])
            points_t = points_t / size_wh
        points_t = (points_t * self.image_size).to(inference_state["device"])
        labels_t = labels_t.to(inference_state["device"])

        obj_idx = self._obj_id_to_idx(inference_state, obj_id)
        clicks_per_frame = inference_state["point_inputs_per_obj"][obj_idx]
        earlier = None if clear_old_points else clicks_per_frame.get(frame_idx)
        point_inputs = concat_points(earlier, points_t, labels_t)
        clicks_per_frame[frame_idx] = point_inputs
        inference_state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)

        return self._infer_prompted_frame(inference_state, obj_idx, frame_idx, point_inputs, None)

    def add_new_points(self, *args: Any, **kwargs: Any) -> tuple[int, list[Any], torch.Tensor]:
        """Older name of `add_new_points_or_box`."""
        return self.add_new_points_or_box(*args, **kwargs)

    @staticmethod
    def _as_point_tensors(points: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Clicks as [1, N, 2] float32 and labels [1, N] int32, with shape checks."""
        if points is None:
            return torch.zeros(1, 0, 2, dtype=torch.float32), torch.zeros(1, 0, dtype=torch.int32)
        points_t = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points)
        labels_t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        points_t = points_t.to(torch.float32)
        labels_t = labels_t.to(torch.int32)
        if points_t.dim() == 2:
            points_t = points_t.unsqueeze(0)
        if labels_t.dim() == 1:
            labels_t = labels_t.unsqueeze(0)
        if points_t.dim() != 3 or points_t.shape[0] != 1 or points_t.shape[-1] != 2:
            raise ValueError(f"points must be [N, 2] (x, y) pairs, got shape {tuple(points_t.shape)}")
        if labels_t.shape != points_t.shape[:2]:
            raise ValueError(
                f"labels must hold one label per point: {points_t.shape[1]} points, "
                f"labels shape {tuple(labels_t.shape)}"
            )
        bad = set(labels_t.unique().tolist()) - set(VALID_POINT_LABELS)
        if bad:
            raise ValueError(f"point labels must be 1 (positive) or 0 (negative); got {sorted(bad)}")
        return points_t, labels_t

    @torch.inference_mode()
    def add_new_mask(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        obj_id: Any,
        mask: torch.Tensor | np.ndarray,
    ) -> tuple[int, list[Any], torch.Tensor]:
        """Prompt object `obj_id` on `frame_idx` with a binary mask [H, W] at video resolution (or at the
        model's input resolution). Returns (frame_idx, obj_ids, mask logits of all objects on this frame
        at video resolution)."""
        self._check_frame_idx(inference_state, frame_idx)
        mask_t = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        if mask_t.dim() != 2:
            raise ValueError(
                f"mask for object {obj_id!r} must be 2-D [H, W], got shape {tuple(mask_t.shape)}"
            )
        video_hw = (inference_state["video_height"], inference_state["video_width"])
        model_hw = (self.image_size, self.image_size)
        if tuple(mask_t.shape) not in (video_hw, model_hw):
            raise ValueError(
                f"mask for object {obj_id!r} on frame {frame_idx} is {tuple(mask_t.shape)} (H, W) but the video "
                f"frames are {video_hw}; give the mask at the video's resolution"
            )
        mask_full = mask_t.bool()[None, None].float().to(inference_state["device"])
        if mask_full.shape[-2:] != model_hw:
            resized = F.interpolate(
                mask_full, size=model_hw, mode="bilinear", align_corners=False, antialias=True
            )
            mask_inputs = (resized >= 0.5).float()
        else:
            mask_inputs = mask_full

        obj_idx = self._obj_id_to_idx(inference_state, obj_id)
        inference_state["mask_inputs_per_obj"][obj_idx][frame_idx] = mask_inputs
        inference_state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        return self._infer_prompted_frame(inference_state, obj_idx, frame_idx, None, mask_inputs)

    def _infer_prompted_frame(
        self,
        inference_state: InferenceState,
        obj_idx: int,
        frame_idx: int,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
    ) -> tuple[int, list[int], torch.Tensor]:
        """Run the frame just prompted (clicks or a mask) for one object, keep its output as a temporary
        result until propagation, and return the masks of every object on that frame."""
        is_init_cond_frame, reverse, is_cond = self._prompt_frame_kind(inference_state, obj_idx, frame_idx)
        prev_logits = None
        if point_inputs is not None:
            # New clicks refine the mask this object already has on the frame, as upstream does.
            prev_logits = self._previous_logits(inference_state, obj_idx, frame_idx, is_cond)
        current_out, _ = self._run_single_frame_inference(
            inference_state=inference_state,
            output_dict=inference_state["output_dict_per_obj"][obj_idx],
            frame_idx=frame_idx,
            batch_size=1,
            is_init_cond_frame=is_init_cond_frame,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            reverse=reverse,
            run_mem_encoder=False,
            prev_sam_mask_logits=prev_logits,
        )
        inference_state["temp_output_dict_per_obj"][obj_idx][COND if is_cond else NON_COND][frame_idx] = (
            current_out
        )
        return (
            frame_idx,
            inference_state["obj_ids"],
            self._frame_masks_at_video_res(inference_state, frame_idx, is_cond),
        )

    def _prompt_frame_kind(
        self, inference_state: InferenceState, obj_idx: int, frame_idx: int
    ) -> tuple[bool, bool, bool]:
        """(is_init_cond_frame, reverse, is_cond) for a prompt on `frame_idx`.

        A frame not yet tracked starts a new conditioning frame; a correction on a tracked frame keeps the
        direction it was tracked in, and becomes conditioning only with add_all_frames_to_correct_as_cond.
        """
        tracked = inference_state["frames_tracked_per_obj"][obj_idx]
        is_init_cond_frame = frame_idx not in tracked
        reverse = False if is_init_cond_frame else tracked[frame_idx]["reverse"]
        is_cond = is_init_cond_frame or self.add_all_frames_to_correct_as_cond
        return is_init_cond_frame, reverse, is_cond

    def _previous_logits(
        self, inference_state: InferenceState, obj_idx: int, frame_idx: int, is_cond: bool
    ) -> torch.Tensor | None:
        """This object's latest low-res logits on the frame (pending first, then committed), clamped."""
        temp = inference_state["temp_output_dict_per_obj"][obj_idx][COND if is_cond else NON_COND]
        committed = inference_state["output_dict_per_obj"][obj_idx]
        prev = temp.get(frame_idx) or committed[COND].get(frame_idx) or committed[NON_COND].get(frame_idx)
        if prev is None or prev["pred_masks"] is None:
            return None
        logits = prev["pred_masks"].to(inference_state["device"], non_blocking=True)
        return torch.clamp(logits, -PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP)

    @torch.inference_mode()
    def clear_all_prompts_in_frame(
        self, inference_state: InferenceState, frame_idx: int, obj_id: Any, need_output: bool = True
    ) -> tuple[int, list[Any], torch.Tensor] | None:
        """Remove the prompts of `obj_id` on `frame_idx`; its output there stays as a tracked frame."""
        self._check_frame_idx(inference_state, frame_idx)
        obj_idx = self._known_obj_idx(inference_state, obj_id)
        inference_state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        inference_state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        temp_per_obj = inference_state["temp_output_dict_per_obj"]
        temp_per_obj[obj_idx][COND].pop(frame_idx, None)
        temp_per_obj[obj_idx][NON_COND].pop(frame_idx, None)
        committed = inference_state["output_dict_per_obj"][obj_idx]
        demoted = committed[COND].pop(frame_idx, None)
        if demoted is not None:
            committed[NON_COND][frame_idx] = demoted
            inference_state["frames_tracked_per_obj"][obj_idx].pop(frame_idx, None)
        if not need_output:
            return None
        is_cond = any(frame_idx in temp[COND] for temp in temp_per_obj.values())
        return (
            frame_idx,
            inference_state["obj_ids"],
            self._frame_masks_at_video_res(inference_state, frame_idx, is_cond),
        )

    @torch.inference_mode()
    def remove_object(
        self, inference_state: InferenceState, obj_id: Any, strict: bool = False, need_output: bool = True
    ) -> tuple[list[Any], list[tuple[int, torch.Tensor]]]:
        """Drop an object and its prompts and results; later objects move down one index.

        With strict, an unknown id raises RuntimeError (the official type). Returns (remaining obj_ids, [(frame_idx, masks of the
        remaining objects at video resolution)] for the frames the removed object had prompts on).
        """
        removed_idx = inference_state["obj_id_to_idx"].get(obj_id)
        if removed_idx is None:
            if strict:
                raise RuntimeError(
                    f"cannot remove object id {obj_id!r}: it does not exist in this session (known ids: "
                    f"{inference_state['obj_ids']})"
                )
            return inference_state["obj_ids"], []
        if len(inference_state["obj_id_to_idx"]) == 1:
            self.reset_state(inference_state)
            return inference_state["obj_ids"], []

        prompted_frames = set(inference_state["point_inputs_per_obj"][removed_idx])
        prompted_frames |= set(inference_state["mask_inputs_per_obj"][removed_idx])
        for frame_idx in prompted_frames:
            self.clear_all_prompts_in_frame(inference_state, frame_idx, obj_id, need_output=False)

        kept_ids = [oid for oid in inference_state["obj_ids"] if oid != obj_id]
        old_to_new = {
            old: new
            for new, old in enumerate(i for i in range(len(inference_state["obj_ids"])) if i != removed_idx)
        }
        inference_state["obj_id_to_idx"] = OrderedDict((oid, i) for i, oid in enumerate(kept_ids))
        inference_state["obj_idx_to_id"] = OrderedDict(enumerate(kept_ids))
        inference_state["obj_ids"] = kept_ids
        for key in (
            "point_inputs_per_obj",
            "mask_inputs_per_obj",
            "output_dict_per_obj",
            "temp_output_dict_per_obj",
            "frames_tracked_per_obj",
        ):
            per_obj = inference_state[key]
            renumbered = {old_to_new[old]: value for old, value in per_obj.items() if old in old_to_new}
            per_obj.clear()
            per_obj.update(renumbered)

        updated: list[tuple[int, torch.Tensor]] = []
        if need_output:
            temp_per_obj = inference_state["temp_output_dict_per_obj"]
            for frame_idx in sorted(prompted_frames):
                is_cond = any(frame_idx in temp[COND] for temp in temp_per_obj.values())
                updated.append(
                    (frame_idx, self._frame_masks_at_video_res(inference_state, frame_idx, is_cond))
                )
        return inference_state["obj_ids"], updated

    # ------------------------------------------------------------------------------------------------------
    # Outputs
    # ------------------------------------------------------------------------------------------------------

    def _frame_masks_at_video_res(
        self, inference_state: InferenceState, frame_idx: int, is_cond: bool
    ) -> torch.Tensor:
        consolidated = self._consolidate_temp_output_across_obj(
            inference_state, frame_idx, is_cond=is_cond, consolidate_at_video_res=True
        )
        _, video_res_masks = self._get_orig_video_res_output(
            inference_state, consolidated["pred_masks_video_res"]
        )
        return video_res_masks

    def _get_orig_video_res_output(
        self, inference_state: InferenceState, any_res_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masks on the compute device, the same resized to the video's resolution [N, 1, H, W])."""
        video_hw = (inference_state["video_height"], inference_state["video_width"])
        any_res_masks = any_res_masks.to(inference_state["device"], non_blocking=True)
        if any_res_masks.shape[-2:] == video_hw:
            video_res_masks = any_res_masks
        else:
            video_res_masks = F.interpolate(
                any_res_masks, size=video_hw, mode="bilinear", align_corners=False
            )
        if self.non_overlap_masks:
            video_res_masks = self._apply_non_overlapping_constraints(video_res_masks)
        return any_res_masks, video_res_masks

    def _consolidate_temp_output_across_obj(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        is_cond: bool,
        consolidate_at_video_res: bool = False,
    ) -> dict[str, torch.Tensor]:
        """All objects' latest mask logits on one frame, stacked [num_objs, 1, h, w]; objects without an
        output there get NO_OBJ_SCORE. At video resolution under "pred_masks_video_res", else at the
        low-res mask size under "pred_masks"."""
        num_objs = self._get_obj_num(inference_state)
        kind = COND if is_cond else NON_COND
        if consolidate_at_video_res:
            size = (inference_state["video_height"], inference_state["video_width"])
            key = "pred_masks_video_res"
        else:
            size = (self.image_size // 4, self.image_size // 4)
            key = "pred_masks"
        stacked = torch.full(
            (num_objs, 1, *size), NO_OBJ_SCORE, dtype=torch.float32, device=inference_state["storage_device"]
        )
        for obj_idx in range(num_objs):
            temp = inference_state["temp_output_dict_per_obj"][obj_idx][kind]
            committed = inference_state["output_dict_per_obj"][obj_idx]
            out = temp.get(frame_idx) or committed[COND].get(frame_idx) or committed[NON_COND].get(frame_idx)
            if out is None:
                continue
            logits = out["pred_masks"]
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            stacked[obj_idx : obj_idx + 1] = logits
        return {key: stacked}

    # ------------------------------------------------------------------------------------------------------
    # Propagation
    # ------------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def propagate_in_video_preflight(self, inference_state: InferenceState) -> None:
        """Commit pending prompt outputs: encode their memories and move them into the output dicts.

        Raises RuntimeError when no object has a prompt, naming any object left without one.
        """
        num_objs = self._get_obj_num(inference_state)
        if num_objs == 0:
            raise RuntimeError(
                "no object has been prompted in this session; call add_new_points_or_box or add_new_mask first"
            )
        for obj_idx in range(num_objs):
            committed = inference_state["output_dict_per_obj"][obj_idx]
            pending = inference_state["temp_output_dict_per_obj"][obj_idx]
            for kind in (NON_COND, COND):
                for frame_idx, out in pending[kind].items():
                    if out["maskmem_features"] is None:
                        # Memory of the latest prompt result (deferred while the user was still clicking).
                        masks_full = F.interpolate(
                            out["pred_masks"].to(inference_state["device"]),
                            size=(self.image_size, self.image_size),
                            mode="bilinear",
                            align_corners=False,
                        )
                        out["maskmem_features"], out["maskmem_pos_enc"] = self._run_memory_encoder(
                            inference_state=inference_state,
                            frame_idx=frame_idx,
                            batch_size=1,
                            high_res_masks=masks_full,
                            object_score_logits=out["object_score_logits"],
                            is_mask_from_pts=True,
                        )
                    committed[kind][frame_idx] = out
                    if self.clear_non_cond_mem_around_input:
                        self._clear_obj_non_cond_mem_around_input(inference_state, frame_idx, obj_idx)
                pending[kind].clear()
            if not committed[COND]:
                obj_id = self._obj_idx_to_id(inference_state, obj_idx)
                raise RuntimeError(
                    f"object id {obj_id!r} has no prompt on any frame (its prompts were cleared); "
                    "add points, a box or a mask for it, or remove it with remove_object"
                )
            for frame_idx in committed[COND]:
                committed[NON_COND].pop(frame_idx, None)

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: InferenceState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[Any], torch.Tensor]]:
        """Track every prompted object from `start_frame_idx` (default: the earliest prompted frame)
        forward, or backward with reverse=True, over at most `max_frame_num_to_track` frames after the
        start. Yields (frame_idx, obj_ids, mask logits [num_objs, 1, H, W] at video resolution)."""
        self.propagate_in_video_preflight(inference_state)
        obj_ids = inference_state["obj_ids"]
        num_frames = inference_state["num_frames"]
        num_objs = self._get_obj_num(inference_state)
        if start_frame_idx is None:
            start_frame_idx = min(
                t for out in inference_state["output_dict_per_obj"].values() for t in out[COND]
            )
        self._check_frame_idx(inference_state, start_frame_idx)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = num_frames
        if max_frame_num_to_track < 0:
            raise ValueError(f"max_frame_num_to_track must be >= 0, got {max_frame_num_to_track}")
        if reverse:
            last = max(start_frame_idx - max_frame_num_to_track, 0)
            # Nothing to do backwards from frame 0.
            order = range(start_frame_idx, last - 1, -1) if start_frame_idx > 0 else range(0)
        else:
            last = min(start_frame_idx + max_frame_num_to_track, num_frames - 1)
            order = range(start_frame_idx, last + 1)

        device = inference_state["device"]
        for frame_idx in tqdm(order, desc="propagate in video", disable=len(order) < 2):
            per_obj_masks = []
            for obj_idx in range(num_objs):
                committed = inference_state["output_dict_per_obj"][obj_idx]
                if frame_idx in committed[COND]:
                    logits = committed[COND][frame_idx]["pred_masks"].to(device, non_blocking=True)
                    if self.clear_non_cond_mem_around_input:
                        self._clear_obj_non_cond_mem_around_input(inference_state, frame_idx, obj_idx)
                else:
                    out, logits = self._run_single_frame_inference(
                        inference_state=inference_state,
                        output_dict=committed,
                        frame_idx=frame_idx,
                        batch_size=1,
                        is_init_cond_frame=False,
                        point_inputs=None,
                        mask_inputs=None,
                        reverse=reverse,
                        run_mem_encoder=True,
                    )
                    committed[NON_COND][frame_idx] = out
                inference_state["frames_tracked_per_obj"][obj_idx][frame_idx] = {"reverse": reverse}
                per_obj_masks.append(logits)
            all_masks = torch.cat(per_obj_masks, dim=0) if len(per_obj_masks) > 1 else per_obj_masks[0]
            _, video_res_masks = self._get_orig_video_res_output(inference_state, all_masks)
            yield frame_idx, obj_ids, video_res_masks

    def _clear_obj_non_cond_mem_around_input(
        self, inference_state: InferenceState, frame_idx: int, obj_idx: int
    ) -> None:
        """Forget one object's tracked memories near a prompted frame (they describe the old mask)."""
        reach = self.memory_temporal_stride_for_eval * self.num_maskmem
        non_cond = inference_state["output_dict_per_obj"][obj_idx][NON_COND]
        for t in range(frame_idx - reach, frame_idx + reach + 1):
            non_cond.pop(t, None)

    def _clear_non_cond_mem_around_input(self, inference_state: InferenceState, frame_idx: int) -> None:
        """`_clear_obj_non_cond_mem_around_input` for every object."""
        for obj_idx in range(self._get_obj_num(inference_state)):
            self._clear_obj_non_cond_mem_around_input(inference_state, frame_idx, obj_idx)

    # ------------------------------------------------------------------------------------------------------
    # Per-frame inference
    # ------------------------------------------------------------------------------------------------------

    def _get_image_feature(
        self, inference_state: InferenceState, frame_idx: int, batch_size: int
    ) -> tuple[torch.Tensor, dict[str, Any], list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """Backbone features of one frame, computed once per frame visit and expanded to `batch_size`.

        Returns (image, backbone_out, vision_feats, vision_pos_embeds, feat_sizes).
        """
        image, backbone_out = inference_state["cached_features"].get(frame_idx, (None, None))
        if backbone_out is None:
            frame = inference_state["images"][frame_idx]
            image = frame.to(inference_state["device"]).float().unsqueeze(0)
            backbone_out = self.forward_image(image)
            inference_state["cached_features"] = {frame_idx: (image, backbone_out)}
        expanded = {
            "backbone_fpn": [f.expand(batch_size, -1, -1, -1) for f in backbone_out["backbone_fpn"]],
            "vision_pos_enc": [p.expand(batch_size, -1, -1, -1) for p in backbone_out["vision_pos_enc"]],
        }
        return (image.expand(batch_size, -1, -1, -1), *self._prepare_backbone_features(expanded))

    def _run_single_frame_inference(
        self,
        inference_state: InferenceState,
        output_dict: dict[str, dict[int, FrameOutput]],
        frame_idx: int,
        batch_size: int,
        is_init_cond_frame: bool,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        reverse: bool,
        run_mem_encoder: bool,
        prev_sam_mask_logits: torch.Tensor | None = None,
    ) -> tuple[FrameOutput, torch.Tensor]:
        """One tracking step; returns (compact output kept in the session, mask logits on the device)."""
        if point_inputs is not None and mask_inputs is not None:
            raise ValueError("a frame takes either point prompts or a mask prompt, not both at once")
        _, _, vision_feats, vision_pos, feat_sizes = self._get_image_feature(
            inference_state, frame_idx, batch_size
        )
        out = self.track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=vision_feats,
            current_vision_pos_embeds=vision_pos,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=output_dict,
            num_frames=inference_state["num_frames"],
            track_in_reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        storage = inference_state["storage_device"]
        memory = out["maskmem_features"]
        if memory is not None:
            memory = memory.to(self.memory_dtype).to(storage, non_blocking=True)
        logits = out["pred_masks"]
        if self.fill_hole_area > 0:
            logits = fill_holes_in_mask_scores(logits, self.fill_hole_area)
        compact = {
            "maskmem_features": memory,
            "maskmem_pos_enc": self._get_maskmem_pos_enc(inference_state, out),
            "pred_masks": logits.to(storage, non_blocking=True),
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }
        return compact, logits

    def _run_memory_encoder(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        batch_size: int,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode the memory of `frame_idx` from given full-resolution mask logits."""
        _, _, vision_feats, _, feat_sizes = self._get_image_feature(inference_state, frame_idx, batch_size)
        memory, pos = self._encode_new_memory(
            current_vision_feats=vision_feats,
            feat_sizes=feat_sizes,
            pred_masks_high_res=high_res_masks,
            object_score_logits=object_score_logits,
            is_mask_from_pts=is_mask_from_pts,
        )
        memory = memory.to(self.memory_dtype).to(inference_state["storage_device"], non_blocking=True)
        return memory, self._get_maskmem_pos_enc(inference_state, {"maskmem_pos_enc": pos})

    def _get_maskmem_pos_enc(
        self, inference_state: InferenceState, current_out: FrameOutput
    ) -> list[torch.Tensor] | None:
        """The memory position encoding, identical for all frames and objects: stored once per session
        and handed out as expanded views."""
        pos = current_out["maskmem_pos_enc"]
        if pos is None:
            return None
        constants = inference_state["constants"]
        if "maskmem_pos_enc" not in constants:
            constants["maskmem_pos_enc"] = [p[0:1].clone() for p in pos]
        batch = pos[0].size(0)
        return [p.expand(batch, -1, -1, -1) for p in constants["maskmem_pos_enc"]]


def _clone_outputs(value: Any) -> Any:
    """Copy tensors out of a compiled function's (CUDA-graph) buffers before the next call reuses them."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone_outputs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_outputs(v) for v in value)
    return value


class SAM2VideoPredictorVOS(SAM2VideoPredictor):
    """The video predictor with the memory encoder, memory attention, prompt encoder and mask decoder
    compiled by `torch.compile` (max-autotune) for semi-supervised VOS throughput. Built by
    `build_sam2_video_predictor(..., vos_optimized=True)`, which also compiles the image encoder."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._compile_all_components()

    def _compile_all_components(self) -> None:
        logger.info("compiling the tracking components for VOS; the first frames will be slow")
        # The number of memory tokens changes from frame to frame, so memory attention is dynamic.
        plan = [
            (self.memory_encoder, False),
            (self.memory_attention, True),
            (self.sam_prompt_encoder, False),
            (self.sam_mask_decoder, False),
        ]
        for module, dynamic in plan:
            compiled = torch.compile(module.forward, mode="max-autotune", fullgraph=True, dynamic=dynamic)

            def run(*args: Any, _compiled: Any = compiled, **kwargs: Any) -> Any:
                return _clone_outputs(_compiled(*args, **kwargs))

            module.forward = run

    def forward_image(self, img_batch: torch.Tensor) -> dict[str, Any]:
        return _clone_outputs(super().forward_image(img_batch))
