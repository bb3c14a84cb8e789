"""Seconds per training step of the real CPU launch, `python -m sam2.training.train --num-gpus N
trainer.accelerator=cpu` as the README documents it (OMP_NUM_THREADS not set), against the same launch
with OMP_NUM_THREADS=1, measured in the same run.

The two launches alternate (round r starts with the other one than round r - 1), so a change in machine
load hits both alike; the table quotes medians over rounds of each run's median step time (its first
step, which includes warm-up, left out). Data: DAVIS-style synthetic videos (two moving rectangles), the
tiny model, batch 1 per process, no validation. Step times are the gaps between the timestamps of
consecutive `step N:` lines in rank 0's log (log_freq 1).

    python benchmarks/train_launch.py --processes 1,2 --rounds 3
    python benchmarks/train_launch.py --repo /tmp/older-checkout --processes 2 --rounds 1 --steps 2

`--repo` measures another checkout of this project (e.g. the commit before a change) with the same data.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from sam2.build_sam import MODEL_SIZES, model_configs

REPO_ROOT = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*\bstep (\d+): loss", re.M)
PALETTE = [0, 0, 0, 230, 30, 30, 30, 230, 30] + [0] * (3 * 253)


def write_videos(
    root: Path, videos: int, frames: int, height: int = 240, width: int = 320
) -> tuple[Path, Path]:
    """`root/JPEGImages/<v>/<%05d>.jpg` and palette `root/Annotations/<v>/<%05d>.png`, two objects each."""
    img_root, gt_root = root / "JPEGImages", root / "Annotations"
    for v in range(videos):
        (img_root / f"v{v}").mkdir(parents=True)
        (gt_root / f"v{v}").mkdir(parents=True)
        for t in range(frames):
            ids = np.zeros((height, width), np.uint8)
            ids[20 + 10 * v : 100 + 10 * v, 30 + 4 * t : 130 + 4 * t] = 1
            ids[140:220, 180 - 3 * t : 280 - 3 * t] = 2
            image = np.full((height, width, 3), 25, np.uint8)
            image[ids == 1] = (220, 40, 40)
            image[ids == 2] = (40, 200, 60)
            Image.fromarray(image).save(img_root / f"v{v}" / f"{t:05d}.jpg", quality=95)
            png = Image.fromarray(ids, mode="P")
            png.putpalette(PALETTE)
            png.save(gt_root / f"v{v}" / f"{t:05d}.png")
    return img_root, gt_root


def run_launch(
    repo: Path, processes: int, omp: str | None, data: tuple[Path, Path], args: argparse.Namespace, work: Path
) -> dict:
    """One training launch; returns {"step_s": median seconds per step (first step left out), ...}."""
    log_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    img, gt = data
    # Enough clips for `args.steps` steps on every rank (batch 1 per rank).
    multiplier = max(1, -(-args.steps * processes // args.videos))
    cmd = [
        sys.executable,
        "-m",
        "sam2.training.train",
        "-c",
        model_configs(args.size)[1],
        "--use-cluster",
        "0",
        "--num-gpus",
        str(processes),
        "trainer.accelerator=cpu",
        f"dataset.img_folder={img}",
        f"dataset.gt_folder={gt}",
        f"dataset.multiplier={multiplier}",
        "dataset.file_list_txt=null",  # every synthetic video (the recipe lists upstream's MOSE videos)
        f"scratch.resolution={args.resolution}",
        f"scratch.num_frames={args.frames}",
        "scratch.max_num_objects=2",
        "scratch.num_epochs=1",
        "scratch.train_batch_size=1",
        "scratch.num_train_workers=0",
        "trainer.mode=train_only",
        "trainer.logging.log_freq=1",
        "trainer.data.train.pin_memory=false",
        f"launcher.experiment_log_dir={log_dir}",
        "trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path=null",
        "trainer.checkpoint.save_freq=0",
    ]
    drop = {"OMP_NUM_THREADS", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(repo)
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"launch failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    log = (log_dir / "logs" / "log_rank0.txt").read_text()
    stamps = [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f") for stamp, _ in STEP_LINE.findall(log)]
    if len(stamps) < 2:
        raise RuntimeError(f"fewer than two steps logged in {log_dir}/logs/log_rank0.txt")
    steps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
    threads = re.findall(r"rank 0 trains on the CPU with (\d+) thread", log)
    return {
        "step_s": statistics.median(steps),
        "steps": len(steps),
        "threads": threads[0] if threads else "?",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", default="1,2", help="comma list of --num-gpus values")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per process count")
    parser.add_argument("--steps", type=int, default=4, help="steps per rank and run (the first is left out)")
    parser.add_argument("--size", default="t", choices=MODEL_SIZES)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument(
        "--repo", type=Path, default=REPO_ROOT, help="checkout whose sam2 package is measured"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per launch")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is left out)")
    counts = [int(n) for n in args.processes.split(",")]
    results: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="train_launch-") as tmp:
        work = Path(tmp)
        data = write_videos(work / "data", args.videos, max(args.frames, 4))
        for n in counts:
            for r in range(args.rounds):
                order = [None, "1"] if r % 2 == 0 else ["1", None]
                for omp in order:
                    label = "unset" if omp is None else f"OMP_NUM_THREADS={omp}"
                    result = run_launch(args.repo, n, omp, data, args, work)
                    results.setdefault((n, label), []).append(result)
                    print(f"  {n} process(es), {label}: {result['step_s']:.2f} s/step", flush=True)
    print(
        f"\ntraining launch, sam2 from {args.repo}, {os.cpu_count()} CPUs, hiera_{args.size}, "
        f"{args.resolution} px, {args.frames} frames, 2 objects, batch 1 per process, median of {args.rounds} round(s)"
    )
    print("| processes | threads as documented | s/step as documented | s/step OMP_NUM_THREADS=1 | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for n in counts:
        unset = results[(n, "unset")]
        one = results[(n, "OMP_NUM_THREADS=1")]
        unset_s = statistics.median(r["step_s"] for r in unset)
        one_s = statistics.median(r["step_s"] for r in one)
        print(f"| {n} | {unset[0]['threads']} | {unset_s:.2f} | {one_s:.2f} | {unset_s / one_s:.2f} |")
    print("ratio = documented launch time / OMP_NUM_THREADS=1 time (the goal: at most 1.2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
