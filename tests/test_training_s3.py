"""Initial weights and the resume source may live in S3 (a real SeaweedFS server from tests/s3_server.py)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from training_loop_support import NUM_FRAMES, TRAIN_CONFIG, make_clips, training_overrides

from sam2.training.train import compose_training_config, main


@pytest.fixture
def trained_checkpoint(tmp_path):
    torch.set_num_threads(1)
    img, gt = make_clips(tmp_path / "data", {"a": NUM_FRAMES, "b": NUM_FRAMES})
    overrides = training_overrides(img, gt, tmp_path / "first")
    assert main(["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1", *overrides]) == 0
    return tmp_path, img, gt, tmp_path / "first" / "checkpoints" / "checkpoint.pt"


def test_initial_weights_and_resume_come_from_s3_uris(trained_checkpoint, s3_store, s3_bucket, s3_env):
    tmp_path, img, gt, local_ckpt = trained_checkpoint
    uri = f"s3://{s3_bucket}/runs/first/checkpoints/checkpoint.pt"
    s3_store.upload_file(local_ckpt, uri)
    saved = torch.load(local_ckpt, weights_only=True)

    # Initial weights: the Trainer's model holds exactly the stored tensors before any step.
    init = training_overrides(img, gt, tmp_path / "from_s3_init")
    init = [o for o in init if "checkpoint_path=" not in o]
    init.append(f"trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path={uri}")
    trainer = instantiate(compose_training_config(TRAIN_CONFIG, init).trainer, _recursive_=False)
    try:
        state = trainer.model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved["model"].items())
        assert trainer.epoch == 0
    finally:
        trainer.close()

    # Resume: an empty output folder plus resume_from continues at the stored epoch.
    resume_dir = tmp_path / "resumed"
    resumed = training_overrides(
        img, gt, resume_dir, num_epochs=2, extra=[f"trainer.checkpoint.resume_from={uri}"]
    )
    assert main(["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1", *resumed]) == 0
    final = torch.load(resume_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert final["epoch"] == 2 and final["steps"] == saved["steps"] + 2
    assert "resumed from" in (resume_dir / "logs" / "log_rank0.txt").read_text()
