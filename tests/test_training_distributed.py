"""Data-parallel training over gloo: two torchrun workers equal one process seeing the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from training_loop_support import NO_DROPOUT_OVERRIDES, TRAIN_CONFIG, make_clips, training_overrides

from sam2.training.train import main
from sam2.utils.network import free_port

# Everything random that differs between one process and two ranks is switched off: mask prompts on the
# first frame only, no augmentation, no dropout. Plain SGD without clipping, so that a wrongly normalised
# loss (e.g. objects not averaged across ranks) shows up as a different update instead of being hidden by
# Adam's or the clipper's scale invariance.
DETERMINISTIC = [
    "model.prob_to_use_pt_input_for_train=0.0",
    "model.num_init_cond_frames_for_train=1",
    "vos.train_transforms=${vos.val_transforms}",
    "trainer.optim.optimizer._target_=torch.optim.SGD",
    "scratch.gradient_clip_max_norm=null",
    "scratch.base_lr=1e-4",
    "scratch.vision_lr=1e-4",
    "trainer.checkpoint.save_freq=1",
    *NO_DROPOUT_OVERRIDES,
]


def _run_nodes(overrides_per_node: list[list[str]]) -> None:
    """`python -m sam2.training.train --num-nodes N` once per node, rendezvous from the environment (node
    rank, master address and port, as torchrun/PET_* give them); fails on any node's non-zero exit."""
    port = str(free_port())
    procs = []
    for node, overrides in enumerate(overrides_per_node):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} | {
            "OMP_NUM_THREADS": "1",
            "PET_NODE_RANK": str(node),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        cmd = [sys.executable, "-m", "sam2.training.train", "-c", TRAIN_CONFIG, "--use-cluster", "0"]
        cmd += ["--num-gpus", "1", "--num-nodes", str(len(overrides_per_node)), *overrides]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]


def _model_state(log_dir: Path, name: str = "checkpoint.pt") -> dict[str, torch.Tensor]:
    return torch.load(log_dir / "checkpoints" / name, weights_only=True)["model"]


def test_two_gloo_workers_match_one_process_with_the_same_global_batch(tmp_path, one_thread):
    img, gt = make_clips(tmp_path / "data", {f"v{i}": 3 for i in range(4)})

    single_dir = tmp_path / "single"
    single = training_overrides(img, gt, single_dir, num_epochs=2, batch_size=2, extra=DETERMINISTIC)
    assert main(["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1", *single]) == 0

    ddp_dir = tmp_path / "ddp"
    ddp = training_overrides(img, gt, ddp_dir, num_epochs=2, batch_size=1, extra=DETERMINISTIC)
    torchrun = Path(sys.executable).with_name("torchrun")
    # torchrun takes its settings from the PET_* variables, as in a PyTorchJob pod.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(free_port()),
    }
    proc = subprocess.run(
        [str(torchrun), "-m", "sam2.training.train"]
        + ["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "2", *ddp],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ddp_dir / "logs" / "log_rank1.txt").is_file()
    assert "joined process group: rank 1 of 2 (gloo)" in (ddp_dir / "logs" / "log_rank1.txt").read_text()

    ckpt = torch.load(ddp_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ckpt["steps"] == 4  # 2 epochs x (4 clips / global batch 2)
    one, two = _model_state(single_dir), _model_state(ddp_dir)
    start = _model_state(single_dir, "checkpoint_1.pt")
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    assert moved > 1e-6, "training did not change the parameters"
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-3 * moved + 1e-7, f"ranks disagree with one process by {worst} (updates ~{moved})"


def test_two_nodes_meet_through_pytorchjob_variables_without_torchrun(tmp_path):
    """`--num-nodes 2`: each node spawns its worker; node rank and rendezvous come from the environment."""
    img, gt = make_clips(tmp_path / "data", {"a": 3, "b": 3})
    log_dir = tmp_path / "run"
    overrides = training_overrides(img, gt, log_dir, extra=NO_DROPOUT_OVERRIDES)
    _run_nodes([overrides, overrides])
    assert "joined process group: rank 1 of 2 (gloo)" in (log_dir / "logs" / "log_rank1.txt").read_text()
    assert torch.load(log_dir / "checkpoints" / "checkpoint.pt", weights_only=True)["steps"] == 1


def _run_two_nodes(img: Path, gt: Path, node_dirs: list[Path], num_epochs: int) -> None:
    """One training process per node, each with its own experiment folder (its own disk)."""
    extra = [*DETERMINISTIC, "trainer.distributed.timeout_mins=2"]
    _run_nodes(
        [
            training_overrides(img, gt, node_dir, num_epochs=num_epochs, batch_size=1, extra=extra)
            for node_dir in node_dirs
        ]
    )


def test_ranks_resume_from_rank_0s_checkpoint_when_a_node_holds_an_older_one(tmp_path, one_thread):
    """Two nodes with their own disks: node 0 holds the checkpoint after epoch 2, node 1 an older copy
    (after epoch 1, as an object-storage mirror can lag). Both must go on from rank 0's epoch 2 with rank
    0's state; rank 1 resuming its own epoch 1 ran one epoch more and the job fell apart."""
    import shutil

    img, gt = make_clips(tmp_path / "data", {f"v{i}": 3 for i in range(4)})
    first = tmp_path / "first"
    args = ["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1"]
    two_epochs = training_overrides(img, gt, first, num_epochs=2, batch_size=2, extra=DETERMINISTIC)
    assert main([*args, *two_epochs]) == 0

    reference = tmp_path / "reference"
    (reference / "checkpoints").mkdir(parents=True)
    shutil.copy(first / "checkpoints" / "checkpoint_2.pt", reference / "checkpoints" / "checkpoint.pt")
    assert (
        main(
            [*args, *training_overrides(img, gt, reference, num_epochs=3, batch_size=2, extra=DETERMINISTIC)]
        )
        == 0
    )

    nodes = [tmp_path / "node0", tmp_path / "node1"]
    newer, older = (node / "checkpoints" / "checkpoint.pt" for node in nodes)
    for held, dest in (("checkpoint_2.pt", newer), ("checkpoint_1.pt", older)):
        dest.parent.mkdir(parents=True)
        shutil.copy(first / "checkpoints" / held, dest)
    _run_two_nodes(img, gt, nodes, num_epochs=3)

    rank1_log = nodes[1] / "logs" / "log_rank1.txt"
    text = rank1_log.read_text()
    assert f"rank 1: its checkpoint {older} (epoch 1, step 2," in text
    assert f"is not rank 0's {newer} (epoch 2, step 4," in text
    assert f"resumed from rank 0's {newer} (sent over the process group): epoch 2, step 4" in text
    final = torch.load(newer, weights_only=True)
    assert (final["epoch"], final["steps"]) == (3, 6)
    # The third epoch trained as one process with the same global batch trains it from epoch 2.
    ref, ddp = _model_state(reference), _model_state(nodes[0])
    start = _model_state(first, "checkpoint_2.pt")
    moved = max((ref[k] - start[k]).abs().max().item() for k in ref)
    assert moved > 1e-6, "the third epoch did not change the parameters"
    worst = max((ref[k] - ddp[k]).abs().max().item() for k in ref)
    assert worst < 1e-3 * moved + 1e-7, f"the resumed ranks disagree with one process by {worst} (~{moved})"

    # Node 1 now holds the same checkpoint as node 0: it loads its own copy, nothing is sent.
    shutil.copy(newer, older)
    before = len(text)
    _run_two_nodes(img, gt, nodes, num_epochs=4)
    text = rank1_log.read_text()[before:]
    assert f"resumed from {older}: epoch 3, step 6" in text and "sent over the process group" not in text
    assert torch.load(newer, weights_only=True)["steps"] == 8


def _validation_line(log_dir: Path) -> str:
    lines = [
        line
        for line in (log_dir / "logs" / "log_rank0.txt").read_text().splitlines()
        if "validation after epoch" in line
    ]
    assert len(lines) == 1, lines
    return lines[0].split("validation after epoch", 1)[1]


def test_validation_counts_each_video_once_on_two_ranks_at_the_videos_size(tmp_path, one_thread):
    """trainer.mode=val over 3 videos of 40x56 (not the 64x64 training resolution): two gloo ranks report
    the J&F of one process (the DistributedSampler pads rank 1's shard with a repeat of a video, which
    must not count twice), over 3 clips, with each frame scored against its mask at 40x56."""
    from training_data_synth import make_davis

    img, gt = make_davis(tmp_path / "data", {f"v{i}": 3 for i in range(3)}, size=(40, 56))
    runs = {}
    for procs in (1, 2):
        log_dir = tmp_path / f"val{procs}"
        overrides = training_overrides(
            img,
            gt,
            log_dir,
            extra=["trainer.mode=val", "trainer.data.val.pin_memory=false", *NO_DROPOUT_OVERRIDES],
        )
        cmd = [sys.executable, "-m", "sam2.training.train", "-c", TRAIN_CONFIG, "--use-cluster", "0"]
        cmd += ["--num-gpus", str(procs), *overrides]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env |= {"OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[procs] = _validation_line(log_dir)
    assert "(6 objects in 3 clips)" in runs[1]
    assert runs[1] == runs[2], runs


def test_validation_ground_truth_is_read_at_the_videos_size(tmp_path):
    from hydra.utils import instantiate
    from training_data_synth import make_davis

    from sam2.training.train import compose_training_config
    from sam2.training.trainer import _GroundTruth

    img, gt = make_davis(tmp_path / "data", {"v0": 3}, size=(40, 56))
    cfg = compose_training_config(
        TRAIN_CONFIG,
        training_overrides(img, gt, tmp_path / "run", extra=["trainer.data.val.pin_memory=false"]),
    )
    val = instantiate(cfg.trainer.data.val, _convert_="all")
    truth = _GroundTruth(val)
    assert truth.available
    raw = val.datasets[0].video_dataset
    video = raw.get_video(0)[0]
    import numpy as np
    from PIL import Image

    labels = np.asarray(Image.open(gt / "v0" / "00002.png"))
    mask = truth.mask(video.video_id, 2, 1, (40, 56))
    assert mask.shape == (40, 56) and np.array_equal(mask, labels == 1) and mask.any()
    assert not truth.mask(video.video_id, 2, 99, (40, 56)).any()  # an object absent from the frame
