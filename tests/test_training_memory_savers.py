"""Memory savers change memory, not results: activation checkpointing and gradient accumulation."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from training_loop_support import (
    MICRO_MODEL_OVERRIDES,
    NO_DROPOUT_OVERRIDES,
    NUM_FRAMES,
    RESOLUTION,
    TRAIN_CONFIG,
    make_clips,
    training_overrides,
)

from sam2.training.train import compose_training_config, main
from sam2.training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData


def _model(extra: list[str]):
    cfg = compose_training_config(
        TRAIN_CONFIG,
        ["trainer.accelerator=cpu", f"scratch.resolution={RESOLUTION}", *MICRO_MODEL_OVERRIDES, *extra],
    )
    return instantiate(cfg.trainer.model, _convert_="all").train(), instantiate(cfg.trainer.loss.all)


def _clip() -> BatchedVideoDatapoint:
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(NUM_FRAMES, 2, RESOLUTION, RESOLUTION, dtype=torch.bool)
    for t in range(NUM_FRAMES):
        masks[t, 0, 5 + t : 30 + t, 5:25] = True
        masks[t, 1, 35:50, 30 + t : 60] = True
    return BatchedVideoDatapoint(
        img_batch=torch.randn(NUM_FRAMES, 1, 3, RESOLUTION, RESOLUTION, generator=gen),
        obj_to_frame_idx=torch.tensor([[[t, 0]] * 2 for t in range(NUM_FRAMES)], dtype=torch.int32),
        masks=masks,
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.zeros(NUM_FRAMES, 2, 3, dtype=torch.long),
            frame_orig_size=torch.full((NUM_FRAMES, 2, 2), RESOLUTION, dtype=torch.long),
        ),
        dict_key="all",
    )


def _loss_and_grads(model, loss_fn, batch) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # click sampling, drop path and dropout draw from the global generator
    model.reseed_prompts(3)
    loss = loss_fn(model(batch), batch.masks)["core_loss"]
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.set_num_threads(1)
    clicks = ["model.prob_to_use_pt_input_for_train=1.0", "model.num_correction_pt_per_frame=2"]
    plain, loss_fn = _model(clicks)
    ckpt, _ = _model(
        [*clicks, "model.activation_checkpointing=true", "model.use_act_ckpt_iterative_pt_sampling=true"]
    )
    ckpt.load_state_dict(plain.state_dict())
    batch = _clip()
    loss_a, grads_a = _loss_and_grads(plain, loss_fn, batch)
    loss_b, grads_b = _loss_and_grads(ckpt, loss_fn, batch)
    assert loss_a == loss_b
    assert grads_a.keys() == grads_b.keys() and any(
        k.startswith("image_encoder.trunk.blocks") for k in grads_a
    )
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_accumulation_equals_a_bigger_batch(tmp_path):
    torch.set_num_threads(1)
    img, gt = make_clips(tmp_path / "data", {f"v{i}": NUM_FRAMES for i in range(4)})
    same = [
        "model.prob_to_use_pt_input_for_train=0.0",
        "model.num_init_cond_frames_for_train=1",
        "vos.train_transforms=${vos.val_transforms}",
        "trainer.optim.optimizer._target_=torch.optim.SGD",
        "scratch.gradient_clip_max_norm=null",
        "scratch.base_lr=1e-3",
        "scratch.vision_lr=1e-3",
        *NO_DROPOUT_OVERRIDES,
    ]
    states = []
    for name, batch, accumulate in (("batch2", 2, 1), ("accum2", 1, 2)):
        overrides = training_overrides(
            img,
            gt,
            tmp_path / name,
            num_epochs=2,
            batch_size=batch,
            extra=[
                *same,
                f"scratch.gradient_accumulation_steps={accumulate}",
                "trainer.checkpoint.save_freq=1",
            ],
        )
        assert main(["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1", *overrides]) == 0
        states.append(torch.load(tmp_path / name / "checkpoints" / "checkpoint.pt", weights_only=True))
    big, accumulated = states
    assert big["steps"] == accumulated["steps"] == 4
    start = torch.load(tmp_path / "batch2" / "checkpoints" / "checkpoint_1.pt", weights_only=True)["model"]
    moved = max((big["model"][k] - start[k]).abs().max().item() for k in start)
    worst = max((big["model"][k] - accumulated["model"][k]).abs().max().item() for k in start)
    assert moved > 1e-5, "the second epoch did not change the parameters"
    assert worst < 1e-3 * moved, f"accumulation differs from the bigger batch by {worst} (updates ~{moved})"
