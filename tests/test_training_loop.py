"""The training entry point and Trainer on the CPU: learning, resume, checkpoints, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from training_loop_support import (
    MICRO_MODEL_OVERRIDES,
    MODEL_CONFIG,
    NUM_FRAMES,
    RESOLUTION,
    TRAIN_CONFIG,
    make_clips,
    training_overrides,
)

from sam2.training.train import compose_training_config, main
from sam2.training.trainer import NonFiniteLossError
from sam2.training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(overrides: list[str]) -> int:
    return main(["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1", *overrides])


def _scalars(tb_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_overfits_a_small_clip_and_saves_config_without_secrets(tmp_path):
    img, gt = make_clips(tmp_path / "data", {"clip": NUM_FRAMES})
    log_dir = tmp_path / "run"
    rc = _cli(
        training_overrides(
            img,
            gt,
            log_dir,
            extra=[
                "dataset.multiplier=24",
                "scratch.base_lr=1e-3",
                "scratch.vision_lr=1e-3",
                "+launcher.aws_secret_access_key=hunter2-do-not-log",
            ],
        )
    )
    assert rc == 0
    losses = _scalars(log_dir / "tensorboard", "train/core_loss")
    assert len(losses) == 24
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"loss did not halve: first steps {losses[:5]}, last steps {losses[-5:]}"

    resolved = (log_dir / "config_resolved.yaml").read_text()
    assert "hunter2" not in resolved and "aws_secret_access_key: '***'" in resolved
    assert f"img_folder: {img}" in resolved
    log_text = (log_dir / "logs" / "log_rank0.txt").read_text()
    assert "step 24" in log_text and "hunter2" not in log_text


@pytest.fixture(scope="module")
def three_epoch_run(tmp_path_factory):
    """An uninterrupted 3-epoch run (2 steps each) keeping a checkpoint per epoch."""
    root = tmp_path_factory.mktemp("resume")
    img, gt = make_clips(root / "data", {"a": 5, "b": 4})
    overrides = training_overrides(
        img, gt, root / "full", num_epochs=3, extra=["trainer.checkpoint.save_freq=1", "scratch.base_lr=1e-4"]
    )
    torch.set_num_threads(1)
    assert _cli(overrides) == 0
    return root, overrides


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(three_epoch_run):
    root, overrides = three_epoch_run
    full = torch.load(root / "full" / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert full["epoch"] == 3 and full["steps"] == 6

    # A "restarted pod": a fresh output folder holding only the checkpoint written after epoch 2.
    resumed_dir = root / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(
        root / "full" / "checkpoints" / "checkpoint_2.pt", resumed_dir / "checkpoints" / "checkpoint.pt"
    )
    resumed_overrides = [o for o in overrides if not o.startswith("launcher.experiment_log_dir=")]
    assert _cli([*resumed_overrides, f"launcher.experiment_log_dir={resumed_dir}"]) == 0
    resumed = torch.load(resumed_dir / "checkpoints" / "checkpoint.pt", weights_only=True)

    assert resumed["epoch"] == 3 and resumed["steps"] == 6
    mid = torch.load(root / "full" / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    assert any(not torch.equal(mid["model"][k], full["model"][k]) for k in full["model"]), (
        "epoch 3 changed nothing"
    )
    for name, value in full["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    full_opt, resumed_opt = full["optimizer"], resumed["optimizer"]
    assert full_opt["param_groups"] == resumed_opt["param_groups"]
    for idx, state in full_opt["state"].items():
        for key, value in state.items():
            assert torch.equal(value, resumed_opt["state"][idx][key]), (idx, key)


def test_training_checkpoint_loads_strictly_through_build_sam2(three_epoch_run):
    from sam2.build_sam import build_sam2

    root, _ = three_epoch_run
    ckpt = root / "full" / "checkpoints" / "checkpoint.pt"
    model = build_sam2(
        MODEL_CONFIG,
        str(ckpt),
        device="cpu",
        hydra_overrides_extra=[*MICRO_MODEL_OVERRIDES, f"model.image_size={RESOLUTION}"],
    )
    trained = torch.load(ckpt, weights_only=True)["model"]
    loaded = model.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    img, gt = make_clips(tmp_path / "data", {"clip": NUM_FRAMES})
    cfg = compose_training_config(
        TRAIN_CONFIG,
        training_overrides(
            img,
            gt,
            tmp_path / "run",
            extra=[
                "dataset.multiplier=4",
                "scratch.base_lr=1e30",
                "scratch.vision_lr=1e30",
                "scratch.gradient_clip_max_norm=null",
            ],
        ),
    )
    trainer = instantiate(cfg.trainer, _recursive_=False)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss .* epoch 0, batch \d+ .*optimizer step \d+"
    ) as err:
        trainer.run()
    assert "scratch.base_lr" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint.pt").exists()


def test_clip_shorter_than_num_frames_is_named(tmp_path, capsys):
    img, gt = make_clips(tmp_path / "data", {"long_enough": 4, "too_short": 2})
    rc = _cli(training_overrides(img, gt, tmp_path / "run"))
    assert rc == 2  # bad data is exit 2 (docs/errors-and-exit-codes.md)
    err = capsys.readouterr().err
    assert "too_short" in err and "num_frames" in err and "Traceback" not in err


def _micro_model(prompts: list[str]):
    cfg = compose_training_config(
        TRAIN_CONFIG,
        ["trainer.accelerator=cpu", f"scratch.resolution={RESOLUTION}", *MICRO_MODEL_OVERRIDES, *prompts],
    )
    return instantiate(cfg.trainer.model, _convert_="all")


def _batch(masks: torch.Tensor) -> BatchedVideoDatapoint:
    frames, objects = masks.shape[:2]
    return BatchedVideoDatapoint(
        img_batch=torch.randn(frames, 1, 3, RESOLUTION, RESOLUTION),
        obj_to_frame_idx=torch.tensor([[[t, 0]] * objects for t in range(frames)], dtype=torch.int32),
        masks=masks,
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.tensor(
                [[[7, obj + 1, t] for obj in range(objects)] for t in range(frames)], dtype=torch.long
            ),
            frame_orig_size=torch.full((frames, objects, 2), RESOLUTION, dtype=torch.long),
        ),
        dict_key="all",
    )


def test_empty_ground_truth_on_a_clicked_frame_is_named_when_required():
    """model.require_objects_on_first_frame=true (ours) names the object; upstream's default clicks on
    the background instead and trains on."""
    masks = torch.zeros(NUM_FRAMES, 2, RESOLUTION, RESOLUTION, dtype=torch.bool)
    masks[:, 0, 5:30, 5:25] = True
    masks[1:, 1, 35:50, 30:60] = True  # object 2 is absent from the first frame
    strict = _micro_model(
        ["model.prob_to_use_pt_input_for_train=1.0", "+model.require_objects_on_first_frame=true"]
    )
    with pytest.raises(
        ValueError, match=r"empty ground-truth mask on a correction frame: video_id 7, object 2, frame 0"
    ):
        strict.train()(_batch(masks))
    upstream = _micro_model(["model.prob_to_use_pt_input_for_train=1.0"]).train()
    plan = upstream.prepare_prompt_inputs(_batch(masks))
    labels = plan.point_inputs_per_frame[0]["point_labels"]
    assert labels[1, 0] == 0  # a negative click for the absent object, as upstream's get_next_point gives
    outputs = upstream(_batch(masks))
    assert all(torch.isfinite(o["pred_masks_high_res"]).all() for o in outputs)

    # A box drawn for that batch: upstream boxes the empty mask too; box_absent_objects_as_clicks clicks.
    boxes = ["model.prob_to_use_pt_input_for_train=1.0", "model.prob_to_use_box_input_for_train=1.0"]
    boxed = _micro_model(boxes).train().prepare_prompt_inputs(_batch(masks))
    assert boxed.point_inputs_per_frame[0]["point_labels"].tolist() == [[2, 3], [2, 3]]
    clicked = _micro_model([*boxes, "+model.box_absent_objects_as_clicks=true"]).train()
    assert (
        clicked.prepare_prompt_inputs(_batch(masks)).point_inputs_per_frame[0]["point_labels"].shape[1] == 1
    )


def test_image_batch_is_prompted_with_clicks_and_corrected():
    model = _micro_model(["model.num_correction_pt_per_frame=2"]).train()
    masks = torch.zeros(1, 2, RESOLUTION, RESOLUTION, dtype=torch.bool)
    masks[0, 0, 5:30, 5:25] = True
    masks[0, 1, 35:50, 30:60] = True
    (out,) = model(_batch(masks))
    # One initial prompt plus two corrective clicks, each step supervised.
    assert len(out["multistep_pred_multimasks_high_res"]) == 3
    clicks = out["multistep_point_inputs"][-1]["point_labels"]
    assert clicks.shape[0] == 2 and clicks.shape[1] in (3, 4)  # a click or box corners, then 2 clicks


def test_clip_of_only_mask_prompted_frames_still_trains_on_a_tracked_frame(tmp_path):
    """2-frame clips with the recipe's 2 initial conditioning frames: were both frames given their masks,
    no output would depend on the weights and backward would fail; one frame is tracked instead."""
    img, gt = make_clips(tmp_path / "data", {"a": 2, "b": 2})
    log_dir = tmp_path / "run"
    rc = _cli(
        training_overrides(
            img,
            gt,
            log_dir,
            extra=[
                "scratch.num_frames=2",
                "model.num_init_cond_frames_for_train=2",
                "model.rand_init_cond_frames_for_train=false",
                "model.prob_to_use_pt_input_for_train=0.0",
            ],
        )
    )
    assert rc == 0
    log_text = (log_dir / "logs" / "log_rank0.txt").read_text()
    assert log_text.count("mask-prompted conditioning frames (num_init_cond_frames_for_train=2") == 1
    losses = _scalars(log_dir / "tensorboard", "train/core_loss")
    assert len(losses) == 2 and all(loss > 0 for loss in losses)

    model = _micro_model(
        [
            "model.num_init_cond_frames_for_train=2",
            "model.rand_init_cond_frames_for_train=false",
            "model.prob_to_use_pt_input_for_train=0.0",
        ]
    ).train()
    masks = torch.zeros(2, 1, RESOLUTION, RESOLUTION, dtype=torch.bool)
    masks[:, 0, 5:30, 5:25] = True
    plan = model.prepare_prompt_inputs(_batch(masks))
    assert plan.init_cond_frames == [0] and plan.frames_not_in_init_cond == [1]


def test_train_mode_validates_with_j_and_f_and_keeps_the_best_checkpoint(tmp_path, capsys):
    img, gt = make_clips(tmp_path / "data", {"train_clip": NUM_FRAMES, "val_clip": 4})
    (tmp_path / "train.txt").write_text("train_clip\n")
    (tmp_path / "val.txt").write_text("val_clip\n")
    log_dir = tmp_path / "run"
    overrides = training_overrides(
        img,
        gt,
        log_dir,
        num_epochs=2,
        extra=[
            "trainer.mode=train",
            f"dataset.file_list_txt={tmp_path / 'train.txt'}",
            f"dataset.val_file_list_txt={tmp_path / 'val.txt'}",
            "trainer.data.val.pin_memory=false",
        ],
    )
    assert _cli(overrides) == 0
    jf = _scalars(log_dir / "tensorboard", "val/J&F")
    assert len(jf) == 2 and all(0.0 <= v <= 100.0 for v in jf)
    best = torch.load(log_dir / "checkpoints" / "checkpoint_best.pt", weights_only=True)
    assert best["loss"]["best_val_jf"] == pytest.approx(max(jf))
    assert best["epoch"] == 1 + jf.index(max(jf))
    assert "validation after epoch 1: J&F" in (log_dir / "logs" / "log_rank0.txt").read_text()

    # trainer.mode=val scores the newest checkpoint again, without training.
    capsys.readouterr()
    assert _cli([*overrides, "trainer.mode=val"]) == 0
    out = capsys.readouterr().out
    assert f"validation: J&F {jf[-1]:.2f}" in out
    assert torch.load(log_dir / "checkpoints" / "checkpoint.pt", weights_only=True)["steps"] == 2


def test_val_epoch_freq_zero_is_a_config_error_naming_the_key(tmp_path, capsys):
    """Was a ZeroDivisionError after the first epoch had trained; now refused before any work."""
    img, gt = make_clips(tmp_path / "data", {"clip": NUM_FRAMES})
    log_dir = tmp_path / "run"
    overrides = training_overrides(img, gt, log_dir, extra=["trainer.mode=train", "scratch.val_epoch_freq=0"])
    assert _cli(overrides) == 2  # a bad setting is exit 2 (docs/errors-and-exit-codes.md)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "trainer.val_epoch_freq" in err and "got 0" in err and "train_only" in err
    assert not (log_dir / "checkpoints" / "checkpoint.pt").exists()


def test_missing_initial_checkpoint_names_the_setting(tmp_path, capsys):
    img, gt = make_clips(tmp_path / "data", {"clip": NUM_FRAMES})
    overrides = training_overrides(img, gt, tmp_path / "run")
    overrides = [o for o in overrides if "checkpoint_path=" not in o]
    overrides.append(
        f"trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path={tmp_path / 'nope.pt'}"
    )
    assert _cli(overrides) == 2  # a bad setting is exit 2 (docs/errors-and-exit-codes.md)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "nope.pt does not exist" in err and "state_dict.checkpoint_path" in err and "null" in err


@pytest.mark.parametrize("prefix", ["", "++"])
def test_upstream_style_trainer_model_overrides_reach_the_model(prefix):
    cfg = compose_training_config(TRAIN_CONFIG, [f"{prefix}trainer.model.freeze_image_encoder=true"])
    assert cfg.trainer.model.freeze_image_encoder is True
    assert cfg.trainer.model._target_ == "sam2.training.model.sam2.SAM2Train"


def test_killed_mid_epoch_and_restarted_run_is_bit_identical(tmp_path):
    """A pod killed (SIGKILL) right after a mid-epoch checkpoint, restarted on the same folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    img, gt = make_clips(tmp_path / "data", {"a": 5, "b": 4, "c": 3})
    extra = ["trainer.checkpoint.save_every_n_steps=2", "dataset.multiplier=3"]  # 9 steps per epoch
    full = training_overrides(img, gt, tmp_path / "full", num_epochs=2, extra=extra)
    assert _cli(full) == 0

    run_dir = tmp_path / "killed"
    args = training_overrides(img, gt, run_dir, num_epochs=2, extra=extra)
    cmd = [
        sys.executable,
        "-m",
        "sam2.training.train",
        "-c",
        TRAIN_CONFIG,
        "--use-cluster",
        "0",
        "--num-gpus",
        "1",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    log = run_dir / "logs" / "log_rank0.txt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and "(epoch 0, step 4)" in log.read_text():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    killed_at = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert killed_at["epoch"] == 0 and killed_at["batches_done_in_epoch"] > 0

    assert _cli(args) == 0
    assert "batches of epoch 0 trained before the restart" in log.read_text()
    a = torch.load(tmp_path / "full" / "checkpoints" / "checkpoint.pt", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert a["steps"] == b["steps"] == 18
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for idx, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][idx][key]), (idx, key)
