"""One training step of the official training code (the `training` package inside the sam2==1.1.0 wheel,
run in a subprocess by tests/sam2_oracle.py) and of ours, from the same weights on the same clip: the
same losses and the same gradient for every parameter, with mask prompts and with the MOSE recipe's
random prompts (clicks, boxes, corrective clicks, several conditioning frames).

The wheel's `training.utils.data_utils` decorates its batch classes with tensordict's `tensorclass`;
tensordict is no dependency of either package, so the oracle script stands a dataclass with a
`batch_size` in for that decorator (the model only reads the batch's fields and properties, which the
classes define, and `batch_size[0]`, the number of frames).
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from sam2_oracle import oracle_checkpoint, require_oracle, run_oracle
from training_loop_support import NO_DROPOUT_OVERRIDES, TRAIN_CONFIG

from sam2.training.train import compose_training_config
from sam2.training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

MODEL_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
RESOLUTION = 128
NUM_FRAMES = 4
# The recipe's prompt simulation (configs/sam2.1_training/sam2.1_MOSE_finetune_common.yaml, upstream's
# values), and the same with mask prompts on the first frame only.
RECIPE_PROMPTS = {
    "prob_to_use_pt_input_for_train": 0.5,
    "prob_to_use_box_input_for_train": 0.5,
    "prob_to_sample_from_gt_for_train": 0.1,
    "num_frames_to_correct_for_train": 2,
    "rand_frames_to_correct_for_train": True,
    "add_all_frames_to_correct_as_cond": True,
    "num_init_cond_frames_for_train": 2,
    "rand_init_cond_frames_for_train": True,
    "num_correction_pt_per_frame": 7,
}
MASK_PROMPTS = {**RECIPE_PROMPTS, "prob_to_use_pt_input_for_train": 0.0, "num_init_cond_frames_for_train": 1}
# Per tensor: max abs difference over the official tensor's largest magnitude (float noise of a
# different but equivalent order of operations; a wrong term moves a gradient by far more).
GRAD_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5
LOSS_WEIGHTS = {"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1}

_OFFICIAL_STEP = """
import dataclasses, types


def tensorclass(cls):
    # tensordict's decorator as far as the model uses it: the fields, and batch_size ([T] for a batch).
    cls = dataclasses.dataclass(cls)
    init = cls.__init__

    def __init__(self, *args, batch_size=(), **kwargs):
        init(self, *args, **kwargs)
        self.batch_size = torch.Size(batch_size)

    cls.__init__ = __init__
    return cls


shim = types.ModuleType("tensordict")
shim.tensorclass = tensorclass
sys.modules["tensordict"] = shim
import numpy as np
from hydra import compose
from hydra.utils import instantiate
from training.loss_fns import MultiStepMultiMasksAndIous
from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

torch.set_num_threads(1)
cfg = compose(config_name=inputs["config"], overrides=inputs["overrides"])
torch.manual_seed(0)
model = instantiate(cfg.model, _recursive_=True)
state = torch.load(inputs["ckpt"], map_location="cpu", weights_only=True)["model"]
model.load_state_dict(state, strict=True)
model.train()
model.rng = np.random.default_rng(inputs["prompt_seed"])  # upstream seeds it with 42 in __init__
loss_fn = MultiStepMultiMasksAndIous(
    weight_dict=inputs["weights"], focal_alpha=0.25, focal_gamma=2.0, supervise_all_iou=True,
    iou_use_l1_loss=True, pred_obj_scores=True, focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1.0,
)
b = inputs["batch"]
batch = BatchedVideoDatapoint(
    img_batch=b["img_batch"], obj_to_frame_idx=b["obj_to_frame_idx"], masks=b["masks"],
    metadata=BatchedVideoMetaData(
        unique_objects_identifier=b["ids"], frame_orig_size=b["sizes"]
    ),
    dict_key="all",
    batch_size=[b["img_batch"].shape[0]],  # as upstream's collate_fn gives it
)
torch.manual_seed(inputs["seed"])
losses = loss_fn(model(batch), batch.masks)
losses["core_loss"].backward()
outputs["losses"] = {k: float(v.detach()) for k, v in losses.items()}
outputs["grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
"""


def _clip() -> dict[str, torch.Tensor]:
    """Two rectangles moving over noise; the second leaves the frame on the last frame."""
    masks = torch.zeros(NUM_FRAMES, 2, RESOLUTION, RESOLUTION, dtype=torch.bool)
    for t in range(NUM_FRAMES):
        masks[t, 0, 20 + 4 * t : 70 + 4 * t, 15:60] = True
        if t < NUM_FRAMES - 1:
            masks[t, 1, 80:110, 60 + 8 * t : 100 + 8 * t] = True
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(NUM_FRAMES, 1, 3, RESOLUTION, RESOLUTION, generator=gen)
    img[:, 0, 0][masks[:, 0]] += 2.0  # the objects stand out in the image
    img[:, 0, 2][masks[:, 1]] += 2.0
    return {
        "img_batch": img,
        "obj_to_frame_idx": torch.tensor([[[t, 0], [t, 0]] for t in range(NUM_FRAMES)], dtype=torch.int32),
        "masks": masks,
        "ids": torch.tensor([[[3, 1, t], [3, 2, t]] for t in range(NUM_FRAMES)], dtype=torch.long),
        "sizes": torch.full((NUM_FRAMES, 2, 2), RESOLUTION, dtype=torch.long),
    }


def _official_overrides(prompts: dict) -> list[str]:
    dropout_off = [f"++{o}" for o in NO_DROPOUT_OVERRIDES]
    return [
        "++model._target_=training.model.sam2.SAM2Train",
        f"++model.image_size={RESOLUTION}",
        *dropout_off,
        *(f"++model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in prompts.items()),
    ]


def _our_step(checkpoint, prompts: dict, clip: dict, seed: int, prompt_seed: int) -> tuple[dict, dict]:
    overrides = [
        "trainer.accelerator=cpu",
        f"scratch.resolution={RESOLUTION}",
        *NO_DROPOUT_OVERRIDES,
        *(f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in prompts.items()),
    ]
    cfg = compose_training_config(TRAIN_CONFIG, overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.trainer.model, _convert_="all")
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"], strict=True)
    model.train()
    model.reseed_prompts(prompt_seed)
    loss_fn = instantiate(cfg.trainer.loss.all)
    batch = BatchedVideoDatapoint(
        img_batch=clip["img_batch"],
        obj_to_frame_idx=clip["obj_to_frame_idx"],
        masks=clip["masks"],
        metadata=BatchedVideoMetaData(unique_objects_identifier=clip["ids"], frame_orig_size=clip["sizes"]),
        dict_key="all",
    )
    torch.manual_seed(seed)
    losses = loss_fn(model(batch), batch.masks)
    losses["core_loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in losses.items()}, grads


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    require_oracle()
    state = torch.load(oracle_checkpoint(MODEL_CONFIG), map_location="cpu", weights_only=True)["model"]
    state["sam_mask_decoder.pred_obj_score_head.layers.2.bias"] += 5.0  # objects judged present
    out = tmp_path_factory.mktemp("official_step") / "tiny_present.pt"
    torch.save({"model": state}, out)
    return out


# Prompt seeds (the numpy generator both models draw prompts from): 42, upstream's own, draws mask
# prompts at the recipe's 0.5; 8 draws a box on frame 0 and corrective clicks on frames 0 and 2; 11
# draws clicks on frame 0, a second conditioning frame 2 with a box, and corrections on both.
@pytest.mark.parametrize(
    ("prompts", "prompt_seed", "seed"),
    [(MASK_PROMPTS, 42, 0), (RECIPE_PROMPTS, 8, 3), (RECIPE_PROMPTS, 11, 4)],
    ids=["mask_prompts", "recipe_box_and_corrections", "recipe_clicks_two_cond_frames"],
)
def test_one_training_step_equals_the_official_training_code(
    checkpoint, one_thread, prompts, prompt_seed, seed
) -> None:
    clip = _clip()
    official = run_oracle(
        _OFFICIAL_STEP,
        {
            "config": MODEL_CONFIG,
            "overrides": _official_overrides(prompts),
            "ckpt": str(checkpoint),
            "weights": LOSS_WEIGHTS,
            "batch": clip,
            "seed": seed,
            "prompt_seed": prompt_seed,
        },
    )
    losses, grads = _our_step(checkpoint, prompts, clip, seed, prompt_seed)

    assert losses.keys() == official["losses"].keys()
    for key, value in official["losses"].items():
        assert losses[key] == pytest.approx(value, rel=LOSS_TOLERANCE, abs=1e-7), (key, losses[key], value)
    assert losses["core_loss"] > 0
    assert grads.keys() == official["grads"].keys()
    moved = 0
    for name, ref in official["grads"].items():
        scale = float(ref.abs().max())
        err = float((grads[name] - ref).abs().max())
        assert err <= GRAD_TOLERANCE * max(scale, 1e-12) or err < 1e-10, (name, err, scale)
        moved += scale > 0
    assert moved > 0.9 * len(grads), f"only {moved} of {len(grads)} gradients are non-zero"
