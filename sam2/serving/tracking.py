"""Track the prompted objects through one staged page with the video predictor, one session per request.

Each request gets its own inference state (its own memory bank); nothing of a request is kept on the
predictor, so requests never see each other's memories. Masks are made as `vos_inference` writes them
for palette output: where objects overlap, the highest logit wins (ties: the smaller id), and a pixel is
foreground when that logit is > 0. The score of an object on a frame is the model's object-presence
probability (sigmoid of its object score logit, upstream's occlusion head).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sam2.serving import rle
from sam2.serving.request import RequestError, TrackRequest
from sam2.serving.video_source import StagedPage

logger = logging.getLogger(__name__)

COND = "cond_frame_outputs"
NON_COND = "non_cond_frame_outputs"


@dataclass
class TrackResult:
    """Per frame of the page, the mask (COCO RLE) and score of every returned object."""

    object_ids: list[int]
    start_frame: int
    height: int
    width: int
    total_frames: int | None
    frames: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def next_start_frame(self) -> int | None:
        """Where the next page starts (its prompts: this page's last masks), None at the end of the video."""
        end = self.start_frame + len(self.frames) - 1
        if self.total_frames is not None and end >= self.total_frames - 1:
            return None
        return end

    def to_json(self) -> dict[str, Any]:
        return {
            "object_ids": self.object_ids,
            "start_frame": self.start_frame,
            "num_frames": len(self.frames),
            "total_frames": self.total_frames,
            "next_start_frame": self.next_start_frame,
            "height": self.height,
            "width": self.width,
            "frames": self.frames,
        }


def exclusive_masks(logits: torch.Tensor) -> np.ndarray:
    """Boolean masks [objects, H, W] from logits [objects, 1, H, W]: per pixel only the highest-scoring
    object (the first on ties) and only where its logit is > 0."""
    scores = logits[:, 0].float().cpu()
    best = scores.argmax(dim=0)
    inside = scores.max(dim=0).values > 0
    ids = torch.arange(scores.shape[0]).view(-1, 1, 1)
    return ((best.unsqueeze(0) == ids) & inside.unsqueeze(0)).numpy()


def track_page(predictor: Any, page: StagedPage, request: TrackRequest) -> TrackResult:
    """Prompt every object on the page's first frame and propagate forward through the page.

    Raises RequestError when a prompt does not fit the video (a mask of another size, a point outside).
    """
    started = time.perf_counter()
    with torch.inference_mode():
        state = predictor.init_state(
            str(page.folder),
            offload_video_to_cpu=request.offload_video_to_cpu,
            offload_state_to_cpu=request.offload_state_to_cpu,
        )
        try:
            height, width = state["video_height"], state["video_width"]
            for prompt in sorted(request.objects, key=lambda p: p.obj_id):
                _add_prompt(predictor, state, prompt, height, width)
            wanted = set(request.return_object_ids or [p.obj_id for p in request.objects])
            result = TrackResult(sorted(wanted), page.start_frame, height, width, page.total_frames)
            for idx, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=0):
                masks = exclusive_masks(logits)
                objects = []
                for i, obj_id in enumerate(obj_ids):
                    if int(obj_id) not in wanted:
                        continue
                    score = _presence(state, i, idx)
                    objects.append({"id": int(obj_id), "score": score, "mask": rle.encode(masks[i])})
                result.frames.append({"frame": page.start_frame + idx, "objects": objects})
        finally:
            predictor.reset_state(state)
            state.clear()
    result.seconds = time.perf_counter() - started
    return result


def _add_prompt(predictor: Any, state: dict, prompt: Any, height: int, width: int) -> None:
    if prompt.mask is not None:
        if prompt.mask.shape != (height, width):
            raise RequestError(
                f"object {prompt.obj_id}: mask size {prompt.mask.shape[0]}x{prompt.mask.shape[1]} differs "
                f"from the video's {height}x{width}"
            )
        predictor.add_new_mask(state, 0, prompt.obj_id, torch.from_numpy(prompt.mask))
        return
    coords = [
        c for c in (prompt.points, None if prompt.box is None else prompt.box.reshape(2, 2)) if c is not None
    ]
    for xy in coords:
        if (
            (xy[:, 0] < 0).any()
            or (xy[:, 1] < 0).any()
            or (xy[:, 0] > width).any()
            or (xy[:, 1] > height).any()
        ):
            raise RequestError(
                f"object {prompt.obj_id}: a point or box corner lies outside the {width}x{height} frame "
                "(coordinates are pixels, x then y)"
            )
    predictor.add_new_points_or_box(
        state, 0, prompt.obj_id, points=prompt.points, labels=prompt.labels, box=prompt.box
    )


def _presence(state: dict, obj_idx: int, frame_idx: int) -> float:
    outputs = state["output_dict_per_obj"][obj_idx]
    out = outputs[COND].get(frame_idx) or outputs[NON_COND].get(frame_idx)
    if out is None or out.get("object_score_logits") is None:
        return 1.0
    return float(torch.sigmoid(out["object_score_logits"].float()).flatten()[0])
