"""Training step time, throughput and peak memory of SAM2Train per model size, resolution and frame count,
with and without the memory savers (frozen image encoder + activation checkpointing).

Each configuration runs in its own subprocess so that peak memory (CUDA max allocated, or the process's
peak RSS on the CPU) belongs to that configuration alone. Ratios are against the first configuration of
the same size/resolution/frames measured without memory savers in this run.

    python benchmarks/train_step.py --device cpu --sizes t --resolutions 128,256 --frames 3
    python benchmarks/train_step.py --device cuda --sizes b+ --resolutions 1024 --frames 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from sam2.build_sam import MODEL_SIZES, model_configs

SAVERS = [
    "model.freeze_image_encoder=true",
    "model.activation_checkpointing=true",
    "model.use_act_ckpt_iterative_pt_sampling=true",
]
# Dense bf16 peak of the GPUs we report on, for model FLOP utilisation.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _batch(num_frames: int, num_objects: int, resolution: int, device):
    import torch

    from sam2.training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(num_frames, num_objects, resolution, resolution, dtype=torch.bool)
    step = resolution // (num_objects + 1)
    for t in range(num_frames):
        for obj in range(num_objects):
            top = obj * step + t
            masks[t, obj, top : top + step, resolution // 8 + t : resolution // 2 + t] = True
    return BatchedVideoDatapoint(
        img_batch=torch.randn(num_frames, 1, 3, resolution, resolution, generator=gen),
        obj_to_frame_idx=torch.tensor([[[t, 0]] * num_objects for t in range(num_frames)], dtype=torch.int32),
        masks=masks,
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.zeros(num_frames, num_objects, 3, dtype=torch.long),
            frame_orig_size=torch.full((num_frames, num_objects, 2), resolution, dtype=torch.long),
        ),
        dict_key="all",
    ).to(device)


def training_step(cfg, model, optim, batch, device) -> Callable[[], None]:
    """One full training step as the recipe's trainer takes it (loss, backward, gradient clipping, optimizer
    step), under bf16 autocast on CUDA; shared with lora_memory.py so both time the same step."""
    import torch
    from hydra.utils import instantiate

    loss_fn = instantiate(cfg.trainer.loss.all)
    clipper = instantiate(cfg.trainer.optim.gradient_clip)
    use_amp = device.type == "cuda"

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            losses = loss_fn(model(batch), batch.masks)
        losses["core_loss"].backward()
        clipper(model)
        optim.step()
        optim.zero_grad()

    return step


def timed_steps(step: Callable[[], None], count: int, device) -> list[float]:
    """Wall seconds of each of `count` calls of `step`, synchronised on CUDA so queued kernels count."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for _ in range(count):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def peak_memory_gib(device) -> tuple[float, str]:
    """This process's peak memory in GiB (CUDA max allocated, else peak RSS) and the device's name."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.get_device_name()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu"  # KiB -> GiB


def run_single(cmd: list[str], identity: dict) -> dict:
    """The JSON row a `--single` subprocess prints last, or `identity` with its last stderr line as the
    error when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {**identity, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict:
    """One configuration in this process: warm-up steps, then timed full training steps."""
    import torch
    from hydra.utils import instantiate

    from sam2.training.optimizer import build_optimizer_from_config
    from sam2.training.train import compose_training_config

    device = torch.device(args.device)
    overrides = [
        f"trainer.accelerator={args.device}",
        f"scratch.resolution={args.resolution}",
        *(SAVERS if args.savers else []),
    ]
    cfg = compose_training_config(model_configs(args.size)[1], overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.trainer.model, _convert_="all").to(device).train()
    model.reseed_prompts(0)
    optim = build_optimizer_from_config(model, cfg.trainer.optim)
    step = training_step(
        cfg, model, optim, _batch(args.frames, args.objects, args.resolution, device), device
    )
    for _ in range(args.warmup):
        step()
    flops = None
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = timed_steps(step, args.steps, device)
    peak_gb, name = peak_memory_gib(device)
    step_s = statistics.median(times)
    return {
        "size": args.size,
        "resolution": args.resolution,
        "frames": args.frames,
        "savers": args.savers,
        "step_s": step_s,
        "samples_per_s": 1.0 / step_s,
        "peak_gb": peak_gb,
        "tflops": None if flops is None else flops / step_s / 1e12,
        "device": name,
    }


def _run_one(base: argparse.Namespace, size: str, resolution: int, frames: int, savers: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--single",
        "--device",
        base.device,
        "--size",
        size,
        "--resolution",
        str(resolution),
        "--frames",
        str(frames),
        "--objects",
        str(base.objects),
        "--steps",
        str(base.steps),
        "--warmup",
        str(base.warmup),
    ]
    if savers:
        cmd.append("--savers")
    if base.count_flops:
        cmd.append("--count-flops")
    return run_single(cmd, {"size": size, "resolution": resolution, "frames": frames, "savers": savers})


def _mfu(row: dict) -> str:
    if row.get("tflops") is None:
        return "-"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in row["device"]), None)
    return f"{100 * row['tflops'] / peak:.0f}%" if peak else "-"


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'size':<5}{'res':>6}{'frames':>7}{'savers':>8}{'step s':>9}{'clips/s':>9}{'peak GiB':>10}"
        f"{'x time':>8}{'x mem':>7}{'TFLOP/s':>9}{'MFU':>6}"
    )
    print(header)
    print("-" * len(header))
    reference: dict[tuple, dict] = {}
    for row in rows:
        key = (row["size"], row["resolution"], row["frames"])
        if "error" in row:
            print(
                f"{row['size']:<5}{row['resolution']:>6}{row['frames']:>7}{'yes' if row['savers'] else 'no':>8}  failed: {row['error']}"
            )
            continue
        ref = reference.setdefault(key, row)
        tflops = "-" if row["tflops"] is None else f"{row['tflops']:.2f}"
        print(
            f"{row['size']:<5}{row['resolution']:>6}{row['frames']:>7}{'yes' if row['savers'] else 'no':>8}"
            f"{row['step_s']:>9.2f}{row['samples_per_s']:>9.3f}{row['peak_gb']:>10.2f}"
            f"{row['step_s'] / ref['step_s']:>8.2f}{row['peak_gb'] / ref['peak_gb']:>7.2f}{tflops:>9}{_mfu(row):>6}"
        )
    devices = {r.get("device") for r in rows if "device" in r}
    print(f"device: {', '.join(sorted(devices))}; x time / x mem: against the same shape without savers")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default="t", help="comma list of t,s,b+,l")
    parser.add_argument("--resolutions", default="128,256")
    parser.add_argument("--frames", default="3", help="comma list (per configuration with --single)")
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--count-flops", action="store_true", help="count FLOPs of one step (slow on CPU)")
    parser.add_argument("--savers", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        args.frames = int(args.frames)
        print(json.dumps(measure(args)))
        return
    if args.device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for size in args.sizes.split(","):
        if size not in MODEL_SIZES:
            parser.error(f"unknown size {size!r}; use {','.join(MODEL_SIZES)}")
        for resolution in (int(r) for r in args.resolutions.split(",")):
            for frames in (int(f) for f in args.frames.split(",")):
                for savers in (False, True):
                    rows.append(_run_one(args, size, resolution, frames, savers))
    print_table(rows)


if __name__ == "__main__":
    main()
