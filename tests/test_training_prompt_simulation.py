"""SAM2Train's prompt simulation, seen in the model's outputs: which prompt each frame got, which frames
received corrective clicks, where those clicks landed, and what a corrected frame does to the memory."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from training_loop_support import MICRO_MODEL_OVERRIDES, NO_DROPOUT_OVERRIDES, RESOLUTION, TRAIN_CONFIG

from sam2.training.model.sam2 import SAM2Train
from sam2.training.train import compose_training_config
from sam2.training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

NUM_CORRECTIONS = 2  # corrective clicks per corrected frame (the recipe's 7, fewer for speed)
BOX_LABELS = [2, 3]  # a box prompt is two corner points with these labels

# Clicks on every batch, one initial conditioning frame, nothing corrected beyond the first frame:
# each test changes only the setting it is about.
CLICKS_ON_FRAME_0 = [
    "model.prob_to_use_pt_input_for_train=1.0",
    "model.prob_to_use_box_input_for_train=0.0",
    "model.num_init_cond_frames_for_train=1",
    "model.rand_init_cond_frames_for_train=false",
    "model.num_frames_to_correct_for_train=1",
    "model.rand_frames_to_correct_for_train=false",
    "model.prob_to_sample_from_gt_for_train=0.0",
    "model.add_all_frames_to_correct_as_cond=false",
    f"model.num_correction_pt_per_frame={NUM_CORRECTIONS}",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(*overrides: str) -> SAM2Train:
    cfg = compose_training_config(
        TRAIN_CONFIG,
        [
            "trainer.accelerator=cpu",
            f"scratch.resolution={RESOLUTION}",
            *MICRO_MODEL_OVERRIDES,
            *NO_DROPOUT_OVERRIDES,
            *CLICKS_ON_FRAME_0,
            *overrides,
        ],
    )
    torch.manual_seed(0)  # the same weights for every model built here
    return instantiate(cfg.trainer.model, _convert_="all").train()


def _clip(num_frames: int = 4) -> BatchedVideoDatapoint:
    """One clip of two rectangles, both visible on every frame."""
    masks = torch.zeros(num_frames, 2, RESOLUTION, RESOLUTION, dtype=torch.bool)
    for t in range(num_frames):
        masks[t, 0, 5 + t : 30 + t, 5:25] = True
        masks[t, 1, 40:52, 30 + t : 60] = True
    generator = torch.Generator().manual_seed(1)
    return BatchedVideoDatapoint(
        img_batch=torch.randn(num_frames, 1, 3, RESOLUTION, RESOLUTION, generator=generator),
        obj_to_frame_idx=torch.tensor([[[t, 0], [t, 0]] for t in range(num_frames)], dtype=torch.int32),
        masks=masks,
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.tensor(
                [[[7, 1, t], [7, 2, t]] for t in range(num_frames)], dtype=torch.long
            ),
            frame_orig_size=torch.full((num_frames, 2, 2), RESOLUTION, dtype=torch.long),
        ),
        dict_key="all",
    )


@torch.no_grad()
def _run(model: SAM2Train, batch: BatchedVideoDatapoint, seed: int) -> list[dict]:
    """One forward with the prompt generator and torch's RNG (click sampling) seeded."""
    model.reseed_prompts(seed)
    torch.manual_seed(seed)
    return model(batch)


def _corrected_frames(outputs: list[dict]) -> list[int]:
    """Frames that got corrective clicks: each adds one prediction step with a longer click list."""
    corrected = []
    for t, out in enumerate(outputs):
        steps = out["multistep_point_inputs"]
        assert len(steps) in (1, 1 + NUM_CORRECTIONS), (t, len(steps))
        assert out["multistep_pred_masks"].shape[1] == len(steps)
        if len(steps) > 1:
            corrected.append(t)
    return corrected


def _correction_clicks(outputs: list[dict], frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(coords [O, NUM_CORRECTIONS, 2], labels [O, NUM_CORRECTIONS]) of the clicks added on `frame`."""
    final = outputs[frame]["multistep_point_inputs"][-1]
    return final["point_coords"][:, -NUM_CORRECTIONS:], final["point_labels"][:, -NUM_CORRECTIONS:]


def test_box_prompts_are_used_with_box_probability_one_and_never_with_zero():
    batch = _clip()
    boxes = _model("model.prob_to_use_box_input_for_train=1.0")
    clicks = _model("model.prob_to_use_box_input_for_train=0.0")
    for seed in range(4):
        prompt = _run(boxes, batch, seed)[0]["point_inputs"]
        assert prompt["point_labels"].tolist() == [BOX_LABELS, BOX_LABELS]
        # the corners enclose each object's mask (up to the noise of a simulated user's box)
        top_left, bottom_right = prompt["point_coords"][0]
        assert top_left[0] <= 8 and top_left[1] <= 8 and bottom_right[0] >= 21 and bottom_right[1] >= 26

        prompt = _run(clicks, batch, seed)[0]["point_inputs"]
        assert prompt["point_labels"].shape == (2, 1)
        assert set(prompt["point_labels"].flatten().tolist()) <= {0, 1}
    # Mask-prompted batches (prob_to_use_pt_input 0) get neither, whatever the box probability.
    masks_only = _model(
        "model.prob_to_use_pt_input_for_train=0.0", "model.prob_to_use_box_input_for_train=1.0"
    )
    out = _run(masks_only, batch, 0)
    assert out[0]["point_inputs"] is None and out[0]["mask_inputs"] is not None
    assert _corrected_frames(out) == []


def test_num_frames_to_correct_picks_that_many_frames_the_first_always_among_them():
    batch = _clip()
    assert _corrected_frames(_run(_model(), batch, 0)) == [0]

    model = _model("model.num_frames_to_correct_for_train=3")
    seen = set()
    for seed in range(6):
        outputs = _run(model, batch, seed)
        corrected = _corrected_frames(outputs)
        assert len(corrected) == 3 and corrected[0] == 0, corrected
        seen.add(tuple(corrected))
        for t in range(1, 4):
            # a tracked frame has no prompt of its own; a corrected one is clicked on from scratch
            first_step = outputs[t]["multistep_point_inputs"][0]
            assert first_step is None and outputs[t]["point_inputs"] is None
            if t in corrected:
                assert outputs[t]["multistep_point_inputs"][-1]["point_labels"].shape == (2, NUM_CORRECTIONS)
    assert len(seen) > 1, "the later corrected frames should be drawn, not fixed"


def test_rand_frames_to_correct_draws_how_many_frames_are_corrected():
    batch = _clip()
    fixed = _model("model.num_frames_to_correct_for_train=3")
    drawn = _model("model.num_frames_to_correct_for_train=3", "model.rand_frames_to_correct_for_train=true")
    counts_fixed, counts_drawn = set(), set()
    for seed in range(10):
        counts_fixed.add(len(_corrected_frames(_run(fixed, batch, seed))))
        corrected = _corrected_frames(_run(drawn, batch, seed))
        assert corrected[0] == 0
        counts_drawn.add(len(corrected))
    assert counts_fixed == {3}
    assert counts_drawn == {1, 2, 3}  # uniform between the initial conditioning frames (1) and 3


def test_add_all_frames_to_correct_as_cond_makes_a_corrected_frame_conditioning_memory():
    """All three frames corrected. Frame 2 attends to frame 1's memory either as a conditioning frame
    (temporal slot 0) or as the previous frame (slot 1): its prediction must change with the setting,
    while frames 0 and 1, computed before the choice matters, stay bit-identical."""
    batch = _clip(num_frames=3)
    as_cond = _model(
        "model.num_frames_to_correct_for_train=3", "model.add_all_frames_to_correct_as_cond=true"
    )
    as_recent = _model("model.num_frames_to_correct_for_train=3")
    as_recent.load_state_dict(as_cond.state_dict())
    with_cond, without = _run(as_cond, batch, 0), _run(as_recent, batch, 0)
    assert _corrected_frames(with_cond) == _corrected_frames(without) == [0, 1, 2]
    for t in (0, 1):
        assert torch.equal(with_cond[t]["multistep_pred_masks"], without[t]["multistep_pred_masks"]), t
    # Same weights, inputs and seeds: were the setting ignored, frame 2 would be bit-identical too. (An
    # untrained model leans little on its memory, so the change is small, but far above rounding.)
    change = (with_cond[2]["multistep_pred_masks"] - without[2]["multistep_pred_masks"]).abs().max()
    assert change > 1e-6, change


def test_prob_to_sample_from_gt_places_corrections_in_the_ground_truth_alone():
    """From the ground truth alone (probability 1) every corrective click is a positive click on the
    object; from the error region of the (untrained) prediction (probability 0) clicks also land on
    its false positives, as negative clicks outside the object."""
    batch = _clip()
    model_gt = _model("model.prob_to_sample_from_gt_for_train=1.0", "model.num_frames_to_correct_for_train=4")
    model_err = _model("model.num_frames_to_correct_for_train=4")
    negatives = 0
    for seed in range(3):
        for model, from_gt in ((model_gt, True), (model_err, False)):
            outputs = _run(model, batch, seed)
            for t in range(4):
                coords, labels = _correction_clicks(outputs, t)
                x, y = coords[..., 0].long(), coords[..., 1].long()
                inside = torch.stack([batch.masks[t, o][y[o], x[o]] for o in range(2)])
                assert torch.equal(inside, labels == 1), (seed, t, from_gt)  # the click's label is right
                if from_gt:
                    assert labels.eq(1).all(), (seed, t)
                else:
                    negatives += int(labels.eq(0).sum())
    assert negatives > 0, "corrections from the prediction's errors never hit a false positive"
