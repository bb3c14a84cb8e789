"""Trainable parameters, peak memory and step time of LoRA fine-tuning against full fine-tuning.

Each configuration runs in its own subprocess (peak memory then belongs to it alone): the recipe's
SAM2Train of one size, AdamW over its trainable parameters, a few full training steps on one synthetic
clip. On the CPU memory is the process's peak RSS and, to leave out what both share (Python, torch,
peft and transformers, which every configuration imports, and the model's weights), the peak above the
RSS right after the model and optimizer are built; on CUDA it is torch's max allocated. Ratios are
against full fine-tuning of the same size and shape, measured in the same run.

    python benchmarks/lora_memory.py --device cpu --sizes t --resolution 256 --frames 2
    python benchmarks/lora_memory.py --device cuda --sizes b+,l --resolution 1024 --frames 8 --ranks 8,32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import run_single  # noqa: E402  (a sibling script, found through the line above)

from sam2.build_sam import MODEL_SIZES, model_configs


def _current_rss_gib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def measure(args: argparse.Namespace) -> dict:
    """One configuration in this process: build, warm up, then timed training steps."""
    import peft  # noqa: F401  (imported by every configuration, so the RSS baseline is the same)
    import torch
    from hydra.utils import instantiate
    from train_step import _batch, peak_memory_gib, timed_steps, training_step

    from sam2.training.lora import LoRASettings, add_lora_adapters, trainable_parameter_count
    from sam2.training.optimizer import build_optimizer_from_config
    from sam2.training.train import compose_training_config

    device = torch.device(args.device)
    cfg = compose_training_config(
        model_configs(args.size)[1],
        [f"trainer.accelerator={args.device}", f"scratch.resolution={args.resolution}"],
    )
    torch.manual_seed(0)
    model = instantiate(cfg.trainer.model, _convert_="all").to(device).train()
    model.reseed_prompts(0)
    total = sum(p.numel() for p in model.parameters())
    if args.rank > 0:
        lora_conf = {**cfg.trainer.lora, "rank": args.rank, "alpha": 2 * args.rank}
        add_lora_adapters(model, LoRASettings.from_config(lora_conf))
    optim = build_optimizer_from_config(model, cfg.trainer.optim)
    step = training_step(
        cfg, model, optim, _batch(args.frames, args.objects, args.resolution, device), device
    )
    built_gib = _current_rss_gib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    times = timed_steps(step, args.steps, device)
    peak_gib, name = peak_memory_gib(device)
    above_gib = peak_gib if device.type == "cuda" else peak_gib - built_gib
    return {
        "size": args.size,
        "rank": args.rank,
        "total": total,
        "trainable": trainable_parameter_count(model),
        "peak_gib": peak_gib,
        "above_gib": above_gib,
        "step_s": statistics.median(times),
        "device": name,
    }


def _run_one(base: argparse.Namespace, size: str, rank: int) -> dict:
    cmd = [sys.executable, __file__, "--single", "--device", base.device, "--size", size]
    cmd += ["--rank", str(rank), "--resolution", str(base.resolution), "--frames", str(base.frames)]
    cmd += ["--objects", str(base.objects), "--steps", str(base.steps), "--warmup", str(base.warmup)]
    return run_single(cmd, {"size": size, "rank": rank})


def print_table(rows: list[dict], base: argparse.Namespace) -> None:
    mem = "peak GiB" if base.device == "cuda" else "peak RSS GiB"
    header = (
        f"{'size':<5}{'mode':<10}{'trainable':>12}{'% of all':>9}{mem:>14}{'above build':>13}"
        f"{'step s':>8}{'x train':>9}{'x peak':>8}{'x above':>9}{'x time':>8}"
    )
    print(header)
    print("-" * len(header))
    reference: dict[str, dict] = {}
    for row in rows:
        mode = "full" if row["rank"] == 0 else f"lora r={row['rank']}"
        if "error" in row:
            print(f"{row['size']:<5}{mode:<10}  failed: {row['error']}")
            continue
        ref = reference.setdefault(row["size"], row)
        print(
            f"{row['size']:<5}{mode:<10}{row['trainable']:>12,}{100 * row['trainable'] / row['total']:>8.2f}%"
            f"{row['peak_gib']:>14.2f}{row['above_gib']:>13.2f}{row['step_s']:>8.2f}"
            f"{row['trainable'] / ref['trainable']:>9.4f}{row['peak_gib'] / ref['peak_gib']:>8.2f}"
            f"{row['above_gib'] / ref['above_gib']:>9.2f}{row['step_s'] / ref['step_s']:>8.2f}"
        )
    devices = sorted({r["device"] for r in rows if "device" in r})
    print(
        f"device: {', '.join(devices)}; resolution {base.resolution}, {base.frames} frame(s), {base.objects} "
        f"object(s), median of {base.steps} step(s) after {base.warmup} warm-up; x: against full "
        "fine-tuning of the same size in this run"
        + (
            ""
            if base.device == "cuda"
            else "; above build: peak RSS minus the RSS once model and optimizer exist"
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default="t", help="comma list of t,s,b+,l")
    parser.add_argument(
        "--ranks", default="8", help="comma list of LoRA ranks (full fine-tuning always runs)"
    )
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(measure(args)))
        return
    if args.device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for size in args.sizes.split(","):
        if size not in MODEL_SIZES:
            parser.error(f"unknown size {size!r}; use {','.join(MODEL_SIZES)}")
        for rank in [0, *(int(r) for r in args.ranks.split(","))]:
            rows.append(_run_one(args, size, rank))
    print_table(rows, args)


if __name__ == "__main__":
    main()
