"""Shared pieces of the training-loop tests: a micro SAM 2.1 model, synthetic data, CLI arguments.

The micro model is the Hiera-tiny config with every width and depth shrunk (same module structure and
parameter names), so a training step at 64 px takes well under a second on a loaded CPU.
"""

from __future__ import annotations

from pathlib import Path

from training_data_synth import make_davis

TRAIN_CONFIG = "configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml"
MODEL_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
RESOLUTION = 64
NUM_FRAMES = 3

# Applied to the root `model:` node, so they work for training configs and for build_sam2 alike.
MICRO_MODEL_OVERRIDES = [
    "scratch.d_model=32",
    "scratch.mem_dim=16",
    "model.image_encoder.trunk.embed_dim=8",
    "model.image_encoder.trunk.stages=[1,1,1,1]",
    "model.image_encoder.trunk.global_att_blocks=[2]",
    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "model.image_encoder.trunk.window_spec=[4,4,2,2]",
    "model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "model.memory_attention.num_layers=1",
    "model.memory_attention.layer.dim_feedforward=64",
    "model.num_maskmem=3",
    "+model.memory_encoder.in_dim=32",
    "+model.memory_encoder.mask_downsampler.embed_dim=32",
]

# No randomness inside the model (drop path, dropout): needed where two runs must agree exactly.
NO_DROPOUT_OVERRIDES = [
    "model.image_encoder.trunk.drop_path_rate=0.0",
    "model.memory_attention.layer.dropout=0.0",
    "model.memory_attention.layer.self_attention.dropout=0.0",
    "model.memory_attention.layer.cross_attention.dropout=0.0",
]


def make_clips(root: Path, videos: dict[str, int], num_objects: int = 2) -> tuple[Path, Path]:
    """DAVIS-style JPEGImages/Annotations under `root` with {video: frame count}."""
    return make_davis(root, videos, num_objects=num_objects, size=(RESOLUTION, RESOLUTION))


def training_overrides(
    img_folder: Path,
    gt_folder: Path,
    log_dir: Path,
    *,
    num_epochs: int = 1,
    batch_size: int = 1,
    extra: list[str] | None = None,
) -> list[str]:
    """Hydra overrides for a CPU training run of the micro model on a synthetic data set."""
    return [
        f"dataset.img_folder={img_folder}",
        f"dataset.gt_folder={gt_folder}",
        "dataset.file_list_txt=null",  # every synthetic video (the recipe defaults to upstream's MOSE list)
        "dataset.val_file_list_txt=null",
        "dataset.multiplier=1",
        f"scratch.resolution={RESOLUTION}",
        f"scratch.num_frames={NUM_FRAMES}",
        "scratch.max_num_objects=2",
        f"scratch.num_epochs={num_epochs}",
        f"scratch.train_batch_size={batch_size}",
        "scratch.num_train_workers=0",
        "trainer.accelerator=cpu",
        "trainer.logging.log_freq=1",
        "trainer.data.train.pin_memory=false",
        f"launcher.experiment_log_dir={log_dir}",
        "trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path=null",
        *MICRO_MODEL_OVERRIDES,
        *(extra or []),
    ]
