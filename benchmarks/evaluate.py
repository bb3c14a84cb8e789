"""Evaluation throughput (frames/s) of sam2.eval against vos-benchmark on the same generated data.

vos-benchmark (PyPI, what SAM 2's SA-V evaluator is adapted from) is installed into its own virtual
environment under --reference_venv (created on first use; never a project dependency). Both run in a
fresh subprocess with the same number of worker processes; the timed span is the evaluation call itself
(pool start, PNG decoding, scoring). The script also checks that the two agree on every (video, object)
J and F, and prints a table with the speed ratio.

    .venv/bin/python benchmarks/evaluate.py [--videos 16] [--frames 30] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import numpy as np

from sam2.eval.masks import default_palette, write_palette_png

REFERENCE_PACKAGES = ["numpy", "opencv-python-headless", "scikit-image", "pillow", "tqdm"]

REFERENCE_SNIPPET = """
import json, sys, time
from vos_benchmark.benchmark import benchmark
gt, pred, procs = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
jf, j, f, objects = benchmark([gt], [pred], num_processes=procs, verbose=False)
seconds = time.perf_counter() - start
per_object = {v: {str(int(o)): [iou[o], bf[o]] for o in iou} for v, (iou, bf) in objects[0].items()}
print(json.dumps({"seconds": seconds, "J&F": jf[0], "J": j[0], "F": f[0], "per_object": per_object}))
"""

OURS_SNIPPET = """
import json, sys, time
from sam2.eval.evaluator import evaluate
gt, pred, procs = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
result = evaluate(gt, pred, num_processes=procs, progress=False)
seconds = time.perf_counter() - start
out = result.to_dict()
per_object = {v: {o: [s["J"], s["F"]] for o, s in d["per_object"].items()} for v, d in out["per_video"].items()}
print(json.dumps({"seconds": seconds, "J&F": out["J&F"], "J": out["J"], "F": out["F"], "per_object": per_object,
                  "frames": result.num_frames}))
"""


def _ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    rows, cols = np.ogrid[:height, :width]
    return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0


def generate(root: Path, videos: int, frames: int, height: int, width: int, objects: int, seed: int) -> None:
    """Moving ellipses per video; predictions are jittered, sometimes late, sometimes with extra ids.

    Object ids are non-contiguous and include 255; some objects leave the frame and come back, and every
    third video has a different frame size, so the data exercise the protocol, not only the pixel maths.
    """
    rng = np.random.default_rng(seed)
    palette = default_palette()
    for index in range(videos):
        name = f"video_{index:03d}"
        size = (height, width) if index % 3 else (height * 3 // 4, width * 3 // 4)
        ids = rng.choice([1, 2, 3, 5, 9, 17, 255], size=objects, replace=False)
        tracks = []
        for object_id in ids:
            appear = int(rng.integers(0, max(1, frames // 3)))
            cy, cx = rng.uniform(0.2, 0.8) * size[0], rng.uniform(0.2, 0.8) * size[1]
            vy, vx = rng.normal(0, 2, 2)
            ry, rx = rng.uniform(0.05, 0.2) * size[0], rng.uniform(0.05, 0.2) * size[1]
            tracks.append((int(object_id), appear, cy, cx, vy, vx, ry, rx))
        for t in range(frames):
            gt = np.zeros(size, np.uint8)
            pred = np.zeros(size, np.uint8)
            for object_id, appear, cy, cx, vy, vx, ry, rx in tracks:
                y, x = cy + vy * t, cx + vx * t
                gone = (t // 7) % 4 == 3 and object_id % 2 == 1  # leaves and returns
                if t >= appear and not gone:
                    gt[_ellipse(*size, y, x, ry, rx)] = object_id
                if t >= appear + 1:
                    jitter = rng.normal(0, 3, 4)
                    pred[_ellipse(*size, y + jitter[0], x + jitter[1], ry + jitter[2], rx + jitter[3])] = (
                        object_id
                    )
            if index % 4 == 1 and t % 5 == 0:
                pred[_ellipse(*size, size[0] / 2, size[1] / 2, 10, 10)] = 77  # prediction-only id
            write_palette_png(root / "gt" / name / f"{t:05d}.png", gt, palette)
            write_palette_png(root / "pred" / name / f"{t:05d}.png", pred, palette)


def ensure_reference(venv_dir: Path) -> Path:
    """A virtual environment holding vos-benchmark and its run-time dependencies; returns its python."""
    python = venv_dir / "bin" / "python"
    check = [str(python), "-c", "import vos_benchmark.benchmark, cv2, skimage"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    venv.create(venv_dir, with_pip=True, clear=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    # --no-deps: vos-benchmark pins opencv-python (GUI build, needs libGL); the headless build suffices.
    subprocess.run([*pip, "--no-deps", "vos-benchmark==0.1.0"], check=True)
    subprocess.run([*pip, *REFERENCE_PACKAGES], check=True)
    subprocess.run(check, check=True)
    return python


def run_snippet(python: str, snippet: str, gt: Path, pred: Path, processes: int, cwd: str) -> dict:
    done = subprocess.run(
        [python, "-c", snippet, str(gt), str(pred), str(processes)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_difference(ours: dict, reference: dict) -> float:
    """Largest |difference| (percent points) over every (video, object) J and F; inf if the sets differ."""
    if set(ours) != set(reference):
        return float("inf")
    worst = 0.0
    for video, objects in reference.items():
        if set(objects) != set(ours[video]):
            return float("inf")
        for object_id, pair in objects.items():
            worst = max(worst, *(abs(a - b) for a, b in zip(pair, ours[video][object_id], strict=True)))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per implementation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference_venv",
        type=Path,
        default=Path(".cache/vos-benchmark-venv"),
        help="where vos-benchmark lives",
    )
    args = parser.parse_args()

    reference_python = ensure_reference(args.reference_venv.resolve())
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as work:
        root = Path(work)
        generate(root, args.videos, args.frames, args.height, args.width, args.objects, args.seed)
        rows = []
        for processes in args.processes:
            timings = {}
            for label, python, snippet in (
                ("vos-benchmark", str(reference_python), REFERENCE_SNIPPET),
                ("sam2.eval", sys.executable, OURS_SNIPPET),
            ):
                runs = [
                    run_snippet(python, snippet, root / "gt", root / "pred", processes, cwd=work)
                    for _ in range(args.repeats)
                ]
                timings[label] = min(runs, key=lambda run: run["seconds"])
            ours, reference = timings["sam2.eval"], timings["vos-benchmark"]
            frames = ours["frames"]
            difference = max(
                max_difference(ours["per_object"], reference["per_object"]),
                abs(ours["J&F"] - reference["J&F"]),
            )
            for label in ("vos-benchmark", "sam2.eval"):
                run = timings[label]
                rows.append(
                    (
                        label,
                        processes,
                        run["seconds"],
                        frames / run["seconds"],
                        reference["seconds"] / run["seconds"],
                        run["J&F"],
                        difference,
                    )
                )
    print(
        f"{args.videos} videos x {args.frames} frames ({frames} evaluated), {args.height}x{args.width}, "
        f"{args.objects} objects per video"
    )
    header = f"| {'implementation':<14} | procs | seconds | frames/s | speed-up | J&F (%) | max diff (pp) |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for label, processes, seconds, fps, ratio, jf, difference in rows:
        print(
            f"| {label:<14} | {processes:>5} | {seconds:7.2f} | {fps:8.1f} | {ratio:7.2f}x | {jf:7.3f} | {difference:13.2e} |"
        )
    agree = all(row[-1] < 1e-6 for row in rows)
    print("results agree" if agree else "RESULTS DIFFER")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
