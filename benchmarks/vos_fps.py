"""Video predictor throughput (frames per second of `propagate_in_video`) per model size, ours against the
official sam2==1.1.0 package measured in the same run.

Each measurement runs in its own subprocess: ours with the project on the path, the official one with the
oracle directory (tests/sam2_oracle.py installs it under .cache/sam2_ref) first on PYTHONPATH and a working
directory outside the repository, so the two packages named `sam2` never meet. Both get random weights,
the same synthetic JPEG video and one mask-prompted object; on CUDA both run under bf16 autocast.

    python benchmarks/vos_fps.py --sizes t --resolution 256 --frames 6 --device cpu
    python benchmarks/vos_fps.py --sizes t,s,b+,l --device cuda --compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
    """A moving disk over a gradient, as `<index>.jpg` frames, plus `mask.npy` (the disk on frame 0)."""
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
        Image.fromarray(img).save(folder / f"{t:05d}.jpg", quality=95)
    np.save(folder / "mask.npy", (xx - width // 3) ** 2 + (yy - height // 2) ** 2 < radius**2)


def worker(args: argparse.Namespace) -> None:
    """Measure one (package, size) pair in this process and print one JSON result line."""
    import numpy as np
    import torch

    from sam2.build_sam import build_sam2_video_predictor

    if args.threads:
        torch.set_num_threads(args.threads)
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
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    timings = []
    with torch.inference_mode(), autocast:
        for _ in range(args.repeats + 1):  # the first pass warms up (and compiles, with --compile)
            state = predictor.init_state(args.video)
            predictor.add_new_mask(state, 0, 1, mask)
            sync()
            start = time.perf_counter()
            tracked = sum(1 for _ in predictor.propagate_in_video(state))
            sync()
            timings.append((time.perf_counter() - start, tracked))
    measured = timings[1:]
    frames = sum(n for _, n in measured)
    seconds = sum(s for s, _ in measured)
    result = {
        "fps": frames / seconds,
        "frames": frames,
        "seconds": seconds,
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
            ours = run_worker(False, size, video, args, args.official_dir)
            ref = run_worker(True, size, video, args, args.official_dir) if with_official else None
            rows.append((size, ours, ref))

    print(
        f"\nVOS propagation, {args.frames} frames {height}x{width}, image_size {args.resolution}, "
        f"device {args.device}{', compiled' if args.compile else ''}"
        f"{', no post-processing' if args.no_postprocessing else ''}, {args.repeats} timed pass(es)"
    )
    print(f"{'size':<6}{'ours FPS':>10}{'official FPS':>14}{'ours/official':>15}")
    for size, ours, ref in rows:
        ref_fps = f"{ref['fps']:.2f}" if ref else "n/a"
        ratio = f"{ours['fps'] / ref['fps']:.2f}" if ref else "n/a"
        print(f"{size:<6}{ours['fps']:>10.2f}{ref_fps:>14}{ratio:>15}")


if __name__ == "__main__":
    main()
