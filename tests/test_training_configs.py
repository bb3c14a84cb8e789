"""The four MOSE fine-tuning recipes: official values, the keys DESIGN.md promises, the model configs reused."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from sam2.training.train import compose_training_config

SIZES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}
DESIGN_KEYS = [
    "dataset.img_folder",
    "dataset.gt_folder",
    "dataset.file_list_txt",
    "scratch.resolution",
    "scratch.num_frames",
    "scratch.max_num_objects",
    "scratch.num_epochs",
    "scratch.train_batch_size",
    "scratch.num_train_workers",
    "trainer.accelerator",
    "launcher.experiment_log_dir",
    "trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path",
]
TRAINING_ONLY_MODEL_KEYS = {"_target_", "image_size"}


def _model_config(size: str):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("sam2", version_base="1.2"):
        return compose(config_name=f"configs/sam2.1/sam2.1_hiera_{size}.yaml")


@pytest.mark.parametrize("size", list(SIZES))
def test_recipe_has_the_official_values_and_design_keys(size):
    cfg = compose_training_config(f"configs/sam2.1_training/sam2.1_hiera_{size}_MOSE_finetune.yaml", [])
    for key in DESIGN_KEYS:
        assert OmegaConf.select(cfg, key, throw_on_missing=False, default="absent") != "absent", key
    s = cfg.scratch
    assert (s.resolution, s.num_frames, s.max_num_objects, s.num_epochs) == (1024, 8, 3, 40)
    assert (s.base_lr, s.vision_lr, s.weight_decay, s.gradient_clip_max_norm) == (5e-6, 3e-6, 0.1, 0.1)
    optim = cfg.trainer.optim
    assert optim.amp.enabled and optim.amp.amp_dtype == "bfloat16"
    assert optim.param_group_modifiers[0].layer_decay_value == 0.9
    assert dict(cfg.trainer.loss.all.weight_dict) == {
        "loss_mask": 20,
        "loss_dice": 1,
        "loss_iou": 1,
        "loss_class": 1,
    }
    assert cfg.trainer.max_epochs == 40 and cfg.trainer.model.image_size == 1024
    assert cfg.trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path.endswith(
        f"sam2.1_hiera_{SIZES[size]}.pt"
    )

    # The model is the released model config, turned into SAM2Train with the training settings added.
    trained = OmegaConf.to_container(cfg.model, resolve=True)
    released = OmegaConf.to_container(_model_config(size).model, resolve=True)
    assert trained["_target_"] == "sam2.training.model.sam2.SAM2Train"
    trained["image_encoder"]["trunk"].pop("drop_path_rate")
    for key, value in released.items():
        if key not in TRAINING_ONLY_MODEL_KEYS:
            assert trained[key] == value, key


def test_excluded_videos_are_left_out_of_validation_too(tmp_path):
    """With no val list the val data set takes every video of img_folder: the excluded ones must go."""
    from hydra.utils import instantiate
    from training_data_synth import make_davis

    img, gt = make_davis(tmp_path / "data", {"keep_a": 3, "broken": 3, "keep_b": 3}, size=(32, 32))
    excluded = tmp_path / "excluded.txt"
    excluded.write_text("broken\n")
    cfg = compose_training_config(
        "configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
        [
            f"dataset.img_folder={img}",
            f"dataset.gt_folder={gt}",
            f"dataset.excluded_videos_list_txt={excluded}",
            "dataset.file_list_txt=null",
            "dataset.val_file_list_txt=null",
            "scratch.resolution=32",
            "scratch.num_frames=3",
            "scratch.num_train_workers=0",
            "trainer.data.val.pin_memory=false",
        ],
    )
    val = instantiate(cfg.trainer.data.val, _convert_="all")
    (raw,) = [d.video_dataset for d in val.datasets]
    assert raw.video_names == ["keep_a", "keep_b"]
    validated = {int(b.metadata.unique_objects_identifier[0, 0, 0]) for b in val.get_loader(epoch=0)}
    assert validated == {raw.get_video(i)[0].video_id for i in range(len(raw))}
    train = instantiate(cfg.trainer.data.train, _convert_="all")
    assert "broken" not in train.datasets[0].dataset.datasets[0].video_dataset.video_names


def test_recipe_takes_upstreams_weight_decay_rule_and_mose_sample_lists():
    """The weight-decay exemptions and the train list of the official sam2==1.1.0 recipe (read from the
    wheel's YAML); the lists shipped are upstream's (training/assets at 2b90b9f): 1246 train videos and
    the 200 held out, disjoint."""
    from pathlib import Path

    from sam2_oracle import require_oracle

    official = OmegaConf.load(
        require_oracle() / "sam2" / "configs" / "sam2.1_training" / "sam2.1_hiera_b+_MOSE_finetune.yaml"
    )
    cfg = compose_training_config("configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml", [])
    ours_wd, theirs_wd = cfg.trainer.optim.options.weight_decay, official.trainer.optim.options.weight_decay
    assert [r.scheduler.value for r in ours_wd] == [0.1, 0.0] == [r.scheduler.value for r in theirs_wd]
    assert list(ours_wd[1].param_names) == list(theirs_wd[1].param_names) == ["*bias*"]
    assert list(ours_wd[1].module_cls_names) == list(theirs_wd[1].module_cls_names) == ["torch.nn.LayerNorm"]

    train, val = Path(cfg.dataset.file_list_txt), Path(cfg.dataset.val_file_list_txt)
    assert train.name == Path(official.dataset.file_list_txt).name == "MOSE_sample_train_list.txt"
    assert train.is_absolute() and val.name == "MOSE_sample_val_list.txt"
    train_names, val_names = train.read_text().split(), val.read_text().split()
    assert (len(train_names), len(set(train_names)), len(val_names)) == (1246, 1246, 200)
    assert not set(train_names) & set(val_names)
    # null keeps every video of img_folder
    assert (
        compose_training_config(
            "configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml", ["dataset.file_list_txt=null"]
        ).dataset.file_list_txt
        is None
    )
