"""Losses of SAM 2 training: focal + dice on the masks, L1 on the predicted IoU, BCE on the object score.

Every term is summed over objects and divided by the number of objects per rank averaged over all ranks,
so that averaging gradients across data-parallel ranks gives the same update as one process seeing the
whole global batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

CORE_LOSS_KEY = "core_loss"
LOSS_KEYS = ("loss_mask", "loss_dice", "loss_iou", "loss_class")


def dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, num_objects: float, loss_on_multimask: bool = False
) -> torch.Tensor:
    """1 - soft Dice (with +1 smoothing) between sigmoid(logits) and binary targets.

    With `loss_on_multimask` the inputs are [N, M, H, W] and the result is [N, M] (one value per candidate
    mask, already divided by `num_objects`); otherwise inputs are [N, ...] and the result is a scalar.
    """
    probs = logits.sigmoid()
    if loss_on_multimask:
        if probs.dim() != 4 or targets.dim() != 4:
            raise ValueError(f"multimask dice expects [N, M, H, W] tensors, got {tuple(probs.shape)}")
        probs, targets = probs.flatten(2), targets.flatten(2)
    else:
        probs, targets = probs.flatten(1), targets.flatten(1)
    overlap = 2 * (probs * targets).sum(-1)
    total = probs.sum(-1) + targets.sum(-1)
    loss = 1 - (overlap + 1) / (total + 1)
    if loss_on_multimask:
        return loss / num_objects
    return loss.sum() / num_objects


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_objects: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
    loss_on_multimask: bool = False,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) averaged over pixels; `alpha < 0` disables the class weighting.

    With `gamma=0, alpha=-1` it is plain binary cross-entropy. Shapes as in `dice_loss`.
    """
    probs = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    prob_of_truth = probs * targets + (1 - probs) * (1 - targets)
    loss = bce * (1 - prob_of_truth) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if loss_on_multimask:
        if loss.dim() != 4:
            raise ValueError(f"multimask focal loss expects [N, M, H, W] tensors, got {tuple(loss.shape)}")
        return loss.flatten(2).mean(-1) / num_objects
    return loss.flatten(1).mean(1).sum() / num_objects


def iou_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pred_ious: torch.Tensor,
    num_objects: float,
    loss_on_multimask: bool = False,
    use_l1_loss: bool = False,
) -> torch.Tensor:
    """Error of the IoU head: |predicted IoU - actual IoU of the thresholded mask| (or its square).

    logits/targets: [N, M, H, W]; pred_ious: [N, M]. Returns [N, M] with `loss_on_multimask`, else a scalar.
    """
    if logits.dim() != 4 or targets.dim() != 4:
        raise ValueError(f"iou_loss expects [N, M, H, W] tensors, got {tuple(logits.shape)}")
    pred = logits.flatten(2) > 0
    truth = targets.flatten(2) > 0
    intersection = (pred & truth).sum(-1).float()
    union = (pred | truth).sum(-1).float()
    actual_ious = intersection / union.clamp(min=1.0)
    if use_l1_loss:
        loss = F.l1_loss(pred_ious, actual_ious, reduction="none")
    else:
        loss = F.mse_loss(pred_ious, actual_ious, reduction="none")
    if loss_on_multimask:
        return loss / num_objects
    return loss.sum() / num_objects


def objects_per_rank(num_local_objects: int, device: torch.device) -> float:
    """Number of objects per rank averaged over all ranks (at least 1); an all_reduce when distributed."""
    count = torch.tensor(float(num_local_objects), device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        world_size = dist.get_world_size()
    return max(count.item() / world_size, 1.0)


class MultiStepMultiMasksAndIous(nn.Module):
    """The SAM 2 training loss over all frames and all interactive steps of a clip.

    For each frame and each prompting step, of the candidate masks the decoder proposed only the one with
    the lowest weighted focal + dice loss is supervised (the IoU head on all of them when
    `supervise_all_iou`); mask and IoU terms only count for objects present in the ground truth, the
    object-score term for all.
    """

    def __init__(
        self,
        weight_dict: Mapping[str, float],
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        supervise_all_iou: bool = False,
        iou_use_l1_loss: bool = False,
        pred_obj_scores: bool = False,
        focal_gamma_obj_score: float = 0.0,
        focal_alpha_obj_score: float = -1.0,
    ) -> None:
        super().__init__()
        missing = [k for k in ("loss_mask", "loss_dice", "loss_iou") if k not in weight_dict]
        if missing:
            raise ValueError(f"loss weight_dict lacks {missing}; give weights for {list(LOSS_KEYS)}")
        self.weight_dict = {k: float(weight_dict.get(k, 0.0)) for k in LOSS_KEYS}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.supervise_all_iou = supervise_all_iou
        self.iou_use_l1_loss = iou_use_l1_loss
        self.pred_obj_scores = pred_obj_scores
        self.focal_gamma_obj_score = focal_gamma_obj_score
        self.focal_alpha_obj_score = focal_alpha_obj_score

    def forward(self, outs_batch: Sequence[Mapping], targets_batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """outs_batch: one output dict per frame; targets_batch: bool/float [T, O, H, W] masks.

        Returns each (unweighted) term summed over frames, plus `core_loss`, their weighted total to
        back-propagate.
        """
        if len(outs_batch) != len(targets_batch):
            raise ValueError(f"{len(outs_batch)} frame outputs for {len(targets_batch)} target frames")
        num_objects = objects_per_rank(targets_batch.shape[1], targets_batch.device)
        totals: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=targets_batch.device))
        for outs, targets in zip(outs_batch, targets_batch, strict=True):
            for key, value in self._frame_losses(outs, targets, num_objects).items():
                totals[key] = totals[key] + value
        return dict(totals)

    def _frame_losses(
        self, outputs: Mapping, targets: torch.Tensor, num_objects: float
    ) -> dict[str, torch.Tensor]:
        target_masks = targets.unsqueeze(1).float()  # [O, 1, H, W]
        masks_per_step = outputs["multistep_pred_multimasks_high_res"]
        ious_per_step = outputs["multistep_pred_ious"]
        scores_per_step = outputs["multistep_object_score_logits"]
        if not len(masks_per_step) == len(ious_per_step) == len(scores_per_step):
            raise ValueError("the model returned different numbers of mask, IoU and object-score steps")
        losses = {k: torch.zeros((), device=targets.device) for k in LOSS_KEYS}
        for masks, ious, score_logits in zip(masks_per_step, ious_per_step, scores_per_step, strict=True):
            self._add_step_losses(losses, masks, target_masks, ious, score_logits, num_objects)
        losses[CORE_LOSS_KEY] = sum(losses[k] * self.weight_dict[k] for k in LOSS_KEYS)
        return losses

    def _add_step_losses(
        self,
        losses: dict[str, torch.Tensor],
        pred_masks: torch.Tensor,
        target_masks: torch.Tensor,
        pred_ious: torch.Tensor,
        score_logits: torch.Tensor,
        num_objects: float,
    ) -> None:
        pred_masks = pred_masks.float()
        target_masks = target_masks.expand_as(pred_masks)
        focal = sigmoid_focal_loss(
            pred_masks, target_masks, num_objects, self.focal_alpha, self.focal_gamma, loss_on_multimask=True
        )
        dice = dice_loss(pred_masks, target_masks, num_objects, loss_on_multimask=True)
        iou = iou_loss(
            pred_masks,
            target_masks,
            pred_ious.float(),
            num_objects,
            loss_on_multimask=True,
            use_l1_loss=self.iou_use_l1_loss,
        )
        if self.pred_obj_scores:
            present = (target_masks[:, 0] > 0).flatten(1).any(dim=-1)[:, None].float()
            loss_class = sigmoid_focal_loss(
                score_logits.float(),
                present,
                num_objects,
                self.focal_alpha_obj_score,
                self.focal_gamma_obj_score,
            )
        else:
            present = torch.ones(focal.shape[0], 1, device=focal.device)
            loss_class = torch.zeros((), device=focal.device)

        # Supervise only the best of the candidate masks (lowest weighted focal + dice).
        combined = focal * self.weight_dict["loss_mask"] + dice * self.weight_dict["loss_dice"]
        best = combined.argmin(dim=-1, keepdim=True)
        loss_mask = focal.gather(1, best)
        loss_dice = dice.gather(1, best)
        loss_iou = iou.mean(dim=-1, keepdim=True) if self.supervise_all_iou else iou.gather(1, best)

        losses["loss_mask"] = losses["loss_mask"] + (loss_mask * present).sum()
        losses["loss_dice"] = losses["loss_dice"] + (loss_dice * present).sum()
        losses["loss_iou"] = losses["loss_iou"] + (loss_iou * present).sum()
        losses["loss_class"] = losses["loss_class"] + loss_class
