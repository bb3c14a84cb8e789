"""Video predictor throughput (frames per second of `propagate_in_video`) per model size, ours against the
official sam2==1.1.0 package measured in the same run.

Each measurement runs in its own subprocess: ours with the project on the path, the official one with the
oracle directory (tests/sam2_oracle.py installs it under .cache/sam2_ref) first on PYTHONPATH and a working
directory outside the repository, so the two packages named `sam2` never meet. Both get the same random
weights (seeded), the same synthetic JPEG video and two objects, one prompted with a mask and one with a
click on frame 0; on CUDA both run under bf16 autocast. With `--rounds R` the two packages alternate R
times (who goes first swaps every round), so a change in machine load hits both alike, and the table
quotes the medians over rounds.

    python benchmarks/vos_fps.py --sizes t,s --frames 8 --frame-size 240x320 --device cpu --rounds 5
    python benchmarks/vos_fps.py --sizes t,s,b+,l --device cuda --compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ORACLE_DIR = Path(os.environ.get("SAM2_ORACLE_DIR", REPO_ROOT / ".cache" / "sam2_ref"))
SIZE_CONFIGS = {
    "t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
RESULT_PREFIX = "VOS_FPS_RESULT "


def write_video(folder: Path, num_frames: int, height: int, width: int) -> None:
    """A moving disk and a moving square over a gradient, as `<index>.jpg` frames, plus `mask.npy` (the
    disk on frame 0, object 1's prompt) and `click.npy` (the square's centre on frame 0, object 2's)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    radius = min(height, width) // 6
    for t in range(num_frames):
        img = np.empty((height, width, 3), np.uint8)
        img[..., 0] = (xx * 255 // max(width - 1, 1)).astype(np.uint8)
        img[..., 1] = (yy * 255 // max(height - 1, 1)).astype(np.uint8)
        img[..., 2] = 90
        cx, cy = width // 3 + 3 * t, height // 2
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = (220, 40, 40)
        sx, sy = 3 * width // 4 - 2 * t, height // 4
        img[(abs(xx - sx) < radius) & (abs(yy - sy) < radius)] = (40, 180, 220)
        Image.fromarray(img).save(folder / f"{t:05d}.jpg", quality=95)
    np.save(folder / "mask.npy", (xx - width // 3) ** 2 + (yy - height // 2) ** 2 < radius**2)
    np.save(folder / "click.npy", np.array([[3 * width // 4, height // 4]], dtype=np.float32))


def worker(args: argparse.Namespace) -> None:
    """Measure one (package, size) pair in this process and print one JSON result line."""
    import numpy as np
    import torch

    from sam2.build_sam import build_sam2_video_predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the same random weights in both packages (same modules, same init order)
    device = torch.device(args.device)
    overrides = [] if args.resolution == 1024 else [f"++model.image_size={args.resolution}"]
    predictor = build_sam2_video_predictor(
        SIZE_CONFIGS[args.size],
        None,
        device=str(device),
        hydra_overrides_extra=overrides,
        apply_postprocessing=not args.no_postprocessing,
        vos_optimized=args.compile,
    )
    mask = np.load(Path(args.video) / "mask.npy")
    click = np.load(Path(args.video) / "click.npy")
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    timings = []
    with torch.inference_mode(), autocast:
        for rep in range(args.repeats + 1):  # the first pass warms up (and compiles, with --compile)
            # A shorter warm-up (--warmup-frames) is enough for eager CPU runs.
            limit = args.warmup_frames - 1 if rep == 0 and args.warmup_frames else None
            state = predictor.init_state(args.video)
            predictor.add_new_mask(state, 0, 1, mask)
            predictor.add_new_points_or_box(state, 0, 2, points=click, labels=np.array([1], np.int32))
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            tracked = sum(1 for _ in predictor.propagate_in_video(state, max_frame_num_to_track=limit))
            sync()
            timings.append((time.perf_counter() - start, tracked, time.process_time() - cpu_start))
    measured = timings[1:]
    frames = sum(n for _, n, _ in measured)
    seconds = sum(s for s, _, _ in measured)
    cpu_seconds = sum(c for _, _, c in measured)
    result = {
        "fps": frames / seconds,
        "frames": frames,
        "seconds": seconds,
        # CPU time of this process: on a shared CPU it counts the work done, not the waiting for cores.
        "cpu_fps": frames / cpu_seconds,
        "sam2": __import__("sam2").__file__,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(official: bool, size: str, video: Path, args: argparse.Namespace, oracle_dir: Path) -> dict:
    """Run `worker` in a subprocess for our package or the official one; returns its result dict."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--size",
        size,
        "--video",
        str(video),
        "--device",
        args.device,
        "--resolution",
        str(args.resolution),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--warmup-frames",
        str(args.warmup_frames),
    ]
    if args.compile:
        cmd.append("--compile")
    if args.no_postprocessing:
        cmd.append("--no-postprocessing")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if official:
        env["PYTHONPATH"] = str(oracle_dir)
        env["PYTHONNOUSERSITE"] = "1"
        cwd = tempfile.gettempdir()
    else:
        env["PYTHONPATH"] = str(REPO_ROOT)
        cwd = str(REPO_ROOT)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    who = "official" if official else "ours"
    raise RuntimeError(f"{who} measurement for size {size} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="t", help="comma-separated model sizes among t,s,b+,l")
    parser.add_argument("--resolution", type=int, default=1024, help="model input side (image_size)")
    parser.add_argument("--frames", type=int, default=8, help="frames in the synthetic video")
    parser.add_argument("--frame-size", default="480x854", help="video frame HxW")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes after one warm-up pass")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating ours/official rounds (median)")
    parser.add_argument(
        "--warmup-frames", type=int, default=0, help="frames of the warm-up pass (0: the whole video)"
    )
    parser.add_argument("--compile", action="store_true", help="vos_optimized=True (torch.compile) on both")
    parser.add_argument(
        "--no-postprocessing",
        action="store_true",
        help="apply_postprocessing=False on both (the official package skips hole filling anyway when its "
        "compiled extension is missing; ours always fills holes)",
    )
    parser.add_argument("--official-dir", type=Path, default=DEFAULT_ORACLE_DIR, help="official sam2 install")
    parser.add_argument("--no-official", action="store_true", help="measure only our package")
    # Worker mode (internal).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        worker(args)
        return

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZE_CONFIGS]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose among {list(SIZE_CONFIGS)}")
    height, width = (int(v) for v in args.frame_size.lower().split("x"))
    with_official = not args.no_official and (args.official_dir / "sam2" / "__init__.py").exists()
    if not args.no_official and not with_official:
        print(
            f"official package not found in {args.official_dir}; measuring ours only "
            '(install it with `python -c \'import sys; sys.path.insert(0, "tests"); '
            "import sam2_oracle; sam2_oracle.ensure_oracle()'`)"
        )

    with tempfile.TemporaryDirectory(prefix="vos_fps-") as tmp:
        video = Path(tmp) / "video"
        write_video(video, args.frames, height, width)
        rows = []
        for size in sizes:
            ours_runs, ref_runs, ours_cpu, ref_cpu = [], [], [], []
            for round_idx in range(args.rounds):
                order = [False, True] if round_idx % 2 == 0 else [True, False]
                for official in order:
                    if official and not with_official:
                        continue
                    result = run_worker(official, size, video, args, args.official_dir)
                    (ref_runs if official else ours_runs).append(result["fps"])
                    (ref_cpu if official else ours_cpu).append(result["cpu_fps"])
                    who = "official" if official else "ours"
                    print(
                        f"  {size} round {round_idx + 1} {who}: {result['fps']:.3f} FPS, "
                        f"{result['cpu_fps']:.3f} frames per CPU second",
                        flush=True,
                    )
            ours = statistics.median(ours_runs)
            ref = statistics.median(ref_runs) if ref_runs else None
            ratios = [o / r for o, r in zip(ours_runs, ref_runs, strict=False)]
            cpu_ratios = [o / r for o, r in zip(ours_cpu, ref_cpu, strict=False)]
            rows.append(
                (
                    size,
                    ours,
                    ref,
                    statistics.median(ratios) if ratios else None,
                    statistics.median(cpu_ratios) if cpu_ratios else None,
                )
            )

    print(
        f"\nVOS propagation, 2 objects (a mask and a click), {args.frames} frames {height}x{width}, "
        f"image_size {args.resolution}, device {args.device}, {torch_threads(args)}"
        f"{', compiled' if args.compile else ''}"
        f"{', no post-processing' if args.no_postprocessing else ''}, median of {args.rounds} round(s)"
    )
    print("| size | ours FPS | official FPS | ours/official FPS | ours/official per CPU second |")
    print("| --- | --- | --- | --- | --- |")
    for size, ours, ref, ratio, cpu_ratio in rows:
        ref_fps = f"{ref:.3f}" if ref else "n/a"
        ratio_text = f"{ratio:.3f}" if ratio else "n/a (official package absent)"
        cpu_text = f"{cpu_ratio:.3f}" if cpu_ratio else "n/a"
        print(f"| {size} | {ours:.3f} | {ref_fps} | {ratio_text} | {cpu_text} |")
    print("ratios: medians of the per-round ratios (above 1: ours is faster)")


def torch_threads(args: argparse.Namespace) -> str:
    return f"{args.threads} thread(s)" if args.threads else "torch's default threads"


if __name__ == "__main__":
    main()
