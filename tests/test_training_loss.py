"""The SAM 2 training loss on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from sam2.training.loss_fns import MultiStepMultiMasksAndIous, dice_loss, iou_loss, sigmoid_focal_loss

BIG = 50.0  # a logit that makes sigmoid 0 or 1 in float32


def _loss(**kwargs) -> MultiStepMultiMasksAndIous:
    weights = {"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1}
    args = {"supervise_all_iou": True, "iou_use_l1_loss": True, "pred_obj_scores": True} | kwargs
    return MultiStepMultiMasksAndIous(weights, **args)


def test_dice_focal_and_iou_match_hand_computed_values():
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # sigmoid(0) = 0.5 everywhere: overlap 2*0.5 = 1, sizes 2 + 1 -> 1 - (1 + 1) / (3 + 1)
    assert dice_loss(torch.zeros(1, 4), target, num_objects=1).item() == pytest.approx(0.5)
    # p_t = 0.5 everywhere: one positive pixel weighted 0.25, three negatives 0.75, times (1 - 0.5)^2 * ln 2
    want = (0.25 + 3 * 0.75) / 4 * 0.25 * math.log(2)
    assert sigmoid_focal_loss(torch.zeros(1, 4), target, num_objects=1).item() == pytest.approx(want)
    assert sigmoid_focal_loss(torch.zeros(1, 4), target, 2.0).item() == pytest.approx(want / 2)
    # thresholded prediction covers pixels 0 and 1, truth pixel 0: IoU 1/2, predicted 0.8 -> |0.8 - 0.5|
    logits = torch.tensor([[[[BIG, BIG], [-BIG, -BIG]]]])
    truth = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    l1 = iou_loss(logits, truth, torch.tensor([[0.8]]), 1, loss_on_multimask=True, use_l1_loss=True)
    mse = iou_loss(logits, truth, torch.tensor([[0.8]]), 1, loss_on_multimask=True)
    assert l1.item() == pytest.approx(0.3) and mse.item() == pytest.approx(0.09)


def _frame(masks, ious, score):
    return {
        "multistep_pred_multimasks_high_res": [masks],
        "multistep_pred_ious": [ious],
        "multistep_object_score_logits": [score],
    }


def test_only_the_best_of_the_candidate_masks_is_supervised():
    truth = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    truth[0, 0, :2, :2] = True
    perfect = torch.where(truth[0, 0], BIG, -BIG)
    candidates = torch.stack([-perfect, perfect, torch.full_like(perfect, BIG)])[None]  # [1, 3, 4, 4]
    out = _frame(candidates, torch.tensor([[0.0, 1.0, 0.25]]), torch.tensor([[BIG]]))
    losses = _loss()([out], truth)
    assert losses["loss_mask"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(0.0, abs=1e-6)
    # IoU head: actual IoUs 0, 1, 0.25 are predicted exactly -> 0 with supervise_all_iou
    assert losses["loss_iou"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_class"].item() == pytest.approx(0.0, abs=1e-6)
    wrong_iou = _frame(candidates, torch.tensor([[0.3, 1.0, 0.25]]), torch.tensor([[BIG]]))
    assert _loss()([wrong_iou], truth)["loss_iou"].item() == pytest.approx(0.3 / 3)
    assert _loss(supervise_all_iou=False)([wrong_iou], truth)["loss_iou"].item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_absent_object_only_trains_the_object_score_and_objects_are_averaged():
    truth = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    truth[0, 0, 1:3, 1:3] = True  # object 1 present, object 2 absent
    masks = torch.zeros(2, 1, 4, 4)  # sigmoid 0.5 everywhere
    out = _frame(masks, torch.zeros(2, 1), torch.zeros(2, 1))
    losses = _loss()([out], truth)
    present_focal = sigmoid_focal_loss(
        masks[:1], truth[0, :1, None].float(), 1, loss_on_multimask=True
    ).item()
    # Only object 1 counts for the mask terms; every term is divided by the 2 objects.
    assert losses["loss_mask"].item() == pytest.approx(present_focal / 2)
    assert losses["loss_class"].item() == pytest.approx(math.log(2))  # BCE of logit 0, both objects, / 2
    total = 20 * losses["loss_mask"] + losses["loss_dice"] + losses["loss_iou"] + losses["loss_class"]
    assert losses["core_loss"].item() == pytest.approx(total.item())


def test_steps_and_frames_add_up():
    truth = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    truth[:, 0, :2] = True
    one_step = _frame(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1), torch.zeros(1, 1))
    two_steps = {k: v * 2 for k, v in one_step.items()}
    single = _loss()([one_step, one_step], truth)["core_loss"].item()
    double = _loss()([two_steps, two_steps], truth)["core_loss"].item()
    assert double == pytest.approx(2 * single)
    with pytest.raises(ValueError, match="frame outputs"):
        _loss()([one_step], truth)
