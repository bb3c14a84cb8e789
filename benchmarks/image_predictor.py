"""Image predictor latency per model size: `set_image` (image encoder) and `predict` (one click, prompt
encoder + mask decoder + upscaling), ours against the official sam2==1.1.0 package in the same run.

Every measurement runs in its own subprocess; the official one with the oracle directory (installed by
tests/sam2_oracle.py under .cache/sam2_ref) first on PYTHONPATH and its working directory outside the
repository, so the two packages named `sam2` never meet. Both get random weights and the same image; on
CUDA both run under bf16 autocast (ours by default, the official one inside `torch.autocast`, as its
README does).

    python benchmarks/image_predictor.py --sizes t --device cpu --image-size 256
    python benchmarks/image_predictor.py --sizes t,s,b+,l --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ORACLE_DIR = Path(os.environ.get("SAM2_ORACLE_DIR", REPO_ROOT / ".cache" / "sam2_ref"))
SIZE_CONFIGS = {size: f"configs/sam2.1/sam2.1_hiera_{size}.yaml" for size in ("t", "s", "b+", "l")}
RESULT_TAG = "IMAGE_PREDICTOR_RESULT "


def _timed_ms(fn, repeats: int, device: str) -> tuple[float, float]:
    """Median wall time and median CPU time (this process's) of `fn()` in milliseconds (CUDA work
    included in the wall time). On a shared CPU the CPU time counts the work, not the wait for cores."""
    import time

    import torch

    samples, cpu_samples = [], []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1000.0)
        cpu_samples.append((time.process_time() - cpu_start) * 1000.0)
    return statistics.median(samples), statistics.median(cpu_samples)


def worker(args: argparse.Namespace) -> None:
    """Measure one (package, size) pair in this process and print one tagged JSON line."""
    import contextlib

    import numpy as np
    import torch

    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    overrides = [f"++model.image_size={args.image_size}"]
    if args.compile:
        overrides.append("++model.compile_image_encoder=true")
    model = build_sam2(SIZE_CONFIGS[args.size], None, device=args.device, hydra_overrides_extra=overrides)
    predictor = SAM2ImagePredictor(model)
    if hasattr(predictor, "_bb_feat_sizes"):  # the official predictor assumes 1024-pixel inputs
        side = args.image_size
        predictor._bb_feat_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else contextlib.nullcontext()
    )
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    click = dict(point_coords=np.array([[320.0, 240.0]]), point_labels=np.array([1]))
    with autocast:
        for _ in range(args.warmup):
            predictor.set_image(image)
            predictor.predict(**click)
        embed_ms, embed_cpu_ms = _timed_ms(lambda: predictor.set_image(image), args.repeats, args.device)
        predict_ms, predict_cpu_ms = _timed_ms(lambda: predictor.predict(**click), args.repeats, args.device)
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else float("nan")
    result = {
        "set_image_ms": embed_ms,
        "predict_ms": predict_ms,
        "set_image_cpu_ms": embed_cpu_ms,
        "predict_cpu_ms": predict_cpu_ms,
        "peak_mib": peak_mib,
    }
    print(RESULT_TAG + json.dumps(result))


def run_worker(official: bool, size: str, args: argparse.Namespace) -> dict | None:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--size",
        size,
        "--device",
        args.device,
        "--image-size",
        str(args.image_size),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ]
    if args.compile:
        cmd.append("--compile")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if official:
        env["PYTHONPATH"] = str(ORACLE_DIR)
    with tempfile.TemporaryDirectory(prefix="image_bench-") as workdir:
        proc = subprocess.run(
            cmd, cwd=workdir if official else REPO_ROOT, env=env, capture_output=True, text=True, check=False
        )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    who = "official" if official else "ours"
    print(f"[{who} {size}] failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
    return None


def _median_result(results: list[dict]) -> dict | None:
    if not results:
        return None
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def measure_rounds(
    size: str, args: argparse.Namespace, have_official: bool
) -> tuple[dict | None, dict | None]:
    """Alternate our and the official measurement for `args.rounds` rounds (swapping who goes first) so a
    change in machine load hits both alike; report the median over rounds."""
    ours_runs: list[dict] = []
    ref_runs: list[dict] = []
    for round_idx in range(args.rounds):
        order = [False, True] if round_idx % 2 == 0 else [True, False]
        for official in order:
            if official and not have_official:
                continue
            result = run_worker(official, size, args)
            if result is not None:
                (ref_runs if official else ours_runs).append(result)
    return _median_result(ours_runs), _median_result(ref_runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="t", help="comma-separated model sizes among t,s,b+,l")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--image-size", type=int, default=1024, help="model input resolution")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating ours/official rounds per size")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per measurement")
    parser.add_argument("--compile", action="store_true", help="torch.compile the image encoder (both)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="t", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZE_CONFIGS]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose among {list(SIZE_CONFIGS)}")
    have_official = (ORACLE_DIR / "sam2" / "__init__.py").is_file()
    if not have_official:
        print(
            f"official package not found in {ORACLE_DIR}; install it with "
            "`cd tests && python -c 'import sam2_oracle; sam2_oracle.ensure_oracle()'`",
            file=sys.stderr,
        )
    header = (
        f"{'size':<5} {'set_image ms':>13} {'official':>9} {'ratio':>6} "
        f"{'predict ms':>11} {'official':>9} {'ratio':>6} {'peak MiB':>9}"
    )
    print(
        f"device={args.device} image_size={args.image_size} compile={args.compile} "
        f"repeats={args.repeats} rounds={args.rounds}"
    )
    print(header)
    print("-" * len(header))
    for size in sizes:
        ours, ref = measure_rounds(size, args, have_official)

        def cell(result: dict | None, key: str) -> str:
            return f"{result[key]:.1f}" if result else "n/a"

        def ratio(key: str, ours: dict | None = ours, ref: dict | None = ref) -> str:
            # Above 1: ours is faster (official time / our time).
            return f"{ref[key] / ours[key]:.2f}" if ours and ref else "n/a"

        peak = f"{ours['peak_mib']:.0f}" if ours and ours["peak_mib"] == ours["peak_mib"] else "n/a"
        print(
            f"{size:<5} {cell(ours, 'set_image_ms'):>13} {cell(ref, 'set_image_ms'):>9} {ratio('set_image_ms'):>6} "
            f"{cell(ours, 'predict_ms'):>11} {cell(ref, 'predict_ms'):>9} {ratio('predict_ms'):>6} {peak:>9}"
        )
        if args.device == "cpu":
            print(
                f"{'  cpu':<5} {cell(ours, 'set_image_cpu_ms'):>13} {cell(ref, 'set_image_cpu_ms'):>9} "
                f"{ratio('set_image_cpu_ms'):>6} {cell(ours, 'predict_cpu_ms'):>11} "
                f"{cell(ref, 'predict_cpu_ms'):>9} {ratio('predict_cpu_ms'):>6}"
            )
    print("ratio = official time / our time (above 1: ours is faster); 'cpu' rows: process CPU time")


if __name__ == "__main__":
    main()
