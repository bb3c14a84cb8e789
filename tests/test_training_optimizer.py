"""The optimizer built from the training config: every parameter in one group with the right lr and wd."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from training_loop_support import MICRO_MODEL_OVERRIDES, RESOLUTION, TRAIN_CONFIG

from sam2.training.optimizer import (
    ConstantParamScheduler,
    CosineParamScheduler,
    OptionRule,
    build_optimizer_from_config,
    construct_optimizer,
)
from sam2.training.train import compose_training_config

BASE_LR, VISION_LR, WD, DECAY = 5e-6, 3e-6, 0.1, 0.9


def _model_and_optim(extra: list[str] | None = None):
    cfg = compose_training_config(
        TRAIN_CONFIG,
        [
            "trainer.accelerator=cpu",
            f"scratch.resolution={RESOLUTION}",
            *MICRO_MODEL_OVERRIDES,
            *(extra or []),
        ],
    )
    model = instantiate(cfg.trainer.model, _convert_="all")
    return model, build_optimizer_from_config(model, cfg.trainer.optim)


def _settings_by_name(model, optim) -> dict[str, tuple[float, float]]:
    group_of = {id(p): g for g in optim.optimizer.param_groups for p in g["params"]}
    return {
        n: (group_of[id(p)]["lr"], group_of[id(p)]["weight_decay"])
        for n, p in model.named_parameters()
        if id(p) in group_of
    }


def _expected(model, name: str) -> tuple[float, float]:
    num_blocks = len(model.image_encoder.trunk.blocks)
    module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    is_norm = isinstance(module, torch.nn.LayerNorm)  # upstream's rule: LayerNorm2d weights are decayed
    wd = 0.0 if name.endswith("bias") or is_norm else WD
    if not name.startswith("image_encoder."):
        return BASE_LR, wd
    lr = VISION_LR
    local = name.removeprefix("image_encoder.trunk.")
    if name.startswith("image_encoder.trunk.") and local.startswith("blocks."):
        lr *= DECAY ** (num_blocks - int(local.split(".")[1]))
    elif local.startswith("patch_embed"):
        lr *= DECAY ** (num_blocks + 1)
    return lr, wd


def test_every_parameter_is_in_exactly_one_group_with_its_lr_and_weight_decay():
    model, optim = _model_and_optim()
    grouped = [id(p) for g in optim.optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}

    settings = _settings_by_name(model, optim)
    for name in settings:
        lr, wd = settings[name]
        want_lr, want_wd = _expected(model, name)
        assert math.isclose(lr, want_lr, rel_tol=1e-9), (name, lr, want_lr)
        assert wd == want_wd, (name, wd, want_wd)
    # Spot checks of the rules the recipe relies on.
    assert settings["image_encoder.trunk.pos_embed"][0] == pytest.approx(VISION_LR)  # pinned to 1.0
    assert settings["sam_mask_decoder.iou_prediction_head.layers.0.bias"][1] == 0.0
    assert settings["image_encoder.trunk.blocks.3.attn.qkv.weight"] == (pytest.approx(VISION_LR * DECAY), WD)
    assert settings["image_encoder.trunk.blocks.0.attn.qkv.weight"][0] == pytest.approx(VISION_LR * DECAY**4)


def test_learning_rates_follow_the_cosine_schedule_to_a_tenth():
    model, optim = _model_and_optim()
    optim.step_schedulers(1.0)
    settings = _settings_by_name(model, optim)
    assert settings["sam_mask_decoder.iou_token.weight"][0] == pytest.approx(BASE_LR / 10)
    assert settings["image_encoder.neck.convs.0.conv.weight"][0] == pytest.approx(VISION_LR / 10)
    optim.step_schedulers(0.5)
    assert _settings_by_name(model, optim)["sam_mask_decoder.iou_token.weight"][0] == pytest.approx(
        (BASE_LR + BASE_LR / 10) / 2
    )


def test_frozen_image_encoder_has_no_parameters_in_the_optimizer():
    model, optim = _model_and_optim(["model.freeze_image_encoder=true"])
    in_optim = {id(p) for g in optim.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optim for p in model.image_encoder.parameters())
    assert {id(p) for p in model.parameters() if p.requires_grad} == in_optim


def test_overlapping_rules_and_missing_default_are_rejected():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    sgd = torch.optim.SGD
    with pytest.raises(ValueError, match="exactly one rule without"):
        construct_optimizer(model, sgd, {"lr": [OptionRule(ConstantParamScheduler(1.0), param_names=["*"])]})
    overlapping = [
        OptionRule(ConstantParamScheduler(0.1)),
        OptionRule(ConstantParamScheduler(0.0), param_names=["*bias*"]),
        OptionRule(ConstantParamScheduler(0.0), module_cls_names=["torch.nn.LayerNorm"]),
    ]
    with pytest.raises(ValueError, match=r"parameter 1.bias is claimed by two rules"):
        construct_optimizer(
            model, sgd, {"lr": [OptionRule(CosineParamScheduler(1, 0.1))], "weight_decay": overlapping}
        )
