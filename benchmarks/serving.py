"""What serving costs: frames/s and peak memory of the served endpoint against vos_inference on the same clip.

Default (HTTP, CPU here): a private SeaweedFS S3 server and a SQLite MLflow registry hold a random-weight
model (registered as the promote step registers it) and the clip's frames; `python -m sam2.serving` (the
KServe ModelServer) serves the champion, and each round POSTs one V1 request for the clip (frames fetched
from S3, tracked, masks returned as COCO RLE). Against it, in a subprocess of its own, the predictor as
vos_inference builds it runs `sam2.eval.vos_inference.infer_video` on the same frames and first-frame masks
(palette PNGs written). Model loading is left out of both: the server is timed once ready, vos_inference
after a warm-up video. Peak memory is each process's peak RSS (VmHWM); on CUDA also the peak allocated.

`--inproc` skips HTTP, S3 and the registry (for the GPU check, whose image has no kserve): the tracker's
own request path (sam2.serving.tracking.track_page on uploaded frames, RLE included) in the same process
as vos_inference, alternating.

    python benchmarks/serving.py --size t --resolution 256 --frames 16 --frame-size 240x320 --rounds 3
    python benchmarks/serving.py --inproc --device cuda --size b+ --resolution 1024 --frames 24 --frame-size 480x854
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SIZE_CONFIGS = {
    "t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
RESULT = "SERVING_BENCH_RESULT "


def write_clip(folder: Path, frames: int, height: int, width: int) -> None:
    """Two moving objects over a gradient as `<index>.jpg`, and `Annotations/clip/00000.png` (their ids)."""
    import numpy as np
    from PIL import Image

    from sam2.eval.masks import write_palette_png

    video = folder / "JPEGImages" / "clip"
    video.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    radius = min(height, width) // 6
    for t in range(frames):
        img = np.empty((height, width, 3), np.uint8)
        img[..., 0] = (xx * 255 // max(width - 1, 1)).astype(np.uint8)
        img[..., 1] = (yy * 255 // max(height - 1, 1)).astype(np.uint8)
        img[..., 2] = 90
        img[(xx - width // 3 - 3 * t) ** 2 + (yy - height // 2) ** 2 < radius**2] = (220, 40, 40)
        img[(abs(xx - 3 * width // 4 + 2 * t) < radius) & (abs(yy - height // 4) < radius)] = (40, 180, 220)
        Image.fromarray(img).save(video / f"{t:05d}.jpg", quality=95)
    ids = np.zeros((height, width), np.uint8)
    ids[(xx - width // 3) ** 2 + (yy - height // 2) ** 2 < radius**2] = 1
    ids[(abs(xx - 3 * width // 4) < radius) & (abs(yy - height // 4) < radius)] = 2
    write_palette_png(folder / "Annotations" / "clip" / "00000.png", ids)


def make_checkpoint(path: Path, size: str, overrides: list[str]) -> None:
    import torch

    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(SIZE_CONFIGS[size], None, device="cpu", hydra_overrides_extra=overrides)
    torch.save({"model": model.state_dict()}, path)


def peak_rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request_body(folder: Path) -> dict:
    import numpy as np

    from sam2.eval.masks import read_mask_png
    from sam2.serving import rle

    ids = read_mask_png(folder / "Annotations" / "clip" / "00000.png")
    objects = [{"id": int(i), "mask": rle.encode(ids == i)} for i in np.unique(ids) if i]
    return {"objects": objects}


# -- vos_inference side (a subprocess: its own peak memory) ----------------------------------------------


def vos_worker(args: argparse.Namespace) -> None:
    """Warm up on the clip once, then time infer_video `rounds` times; print one RESULT line."""
    import torch

    from sam2.eval.vos_inference import build_vos_predictor, infer_video

    torch.set_num_threads(args.threads)
    folder = Path(args.data)
    predictor = build_vos_predictor(
        SIZE_CONFIGS[args.size], args.checkpoint, device=args.device, hydra_overrides_extra=args.overrides
    )
    out = folder / "vos_out"
    infer_video(predictor, folder / "JPEGImages", folder / "Annotations", out, "clip")
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        frames = infer_video(predictor, folder / "JPEGImages", folder / "Annotations", out, "clip")
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    cuda = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    print(
        RESULT + json.dumps({"frames": frames, "seconds": times, "rss_mib": peak_rss_mib(), "cuda_mib": cuda})
    )


def run_vos(args: argparse.Namespace, data: Path, checkpoint: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--vos-worker",
        f"--data={data}",
        f"--checkpoint={checkpoint}",
        f"--size={args.size}",
        f"--device={args.device}",
        f"--rounds={args.rounds}",
        f"--threads={args.threads}",
        f"--resolution={args.resolution}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    raise RuntimeError(f"vos_inference worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


# -- the served endpoint ------------------------------------------------------------------------------


def run_http(args: argparse.Namespace, data: Path, checkpoint: Path, work: Path) -> dict:
    from mlflow import MlflowClient

    from sam2.promotion.pyfunc_model import save_model_folder
    from sam2.storage import ObjectStore, S3Settings
    from sam2.tools.s3_server import SeaweedS3Server
    from sam2.utils.network import free_port

    s3 = SeaweedS3Server(
        work / "s3", "BENCH" + secrets.token_hex(4).upper(), secrets.token_urlsafe(18), free_port()
    )
    s3.start(timeout_s=90)
    proc = None
    try:
        store = ObjectStore(S3Settings(s3.endpoint_url, s3.access_key, s3.secret_key))
        store.upload_file(checkpoint, "s3://bench/run/checkpoints/checkpoint.pt")
        for frame in sorted((data / "JPEGImages" / "clip").iterdir()):
            store.upload_file(frame, f"s3://bench/JPEGImages/clip/{frame.name}")
        env = {**os.environ, **s3.env(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url}
        os.environ.update(env)
        folder = save_model_folder(
            work / "mlflow_model",
            "s3://bench/run/checkpoints/checkpoint.pt",
            SIZE_CONFIGS[args.size],
            args.overrides,
        )
        store.upload_folder(folder, "s3://bench/run/mlflow_model")
        tracking = f"sqlite:///{work / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        client.create_registered_model("sam2-bench")
        version = client.create_model_version("sam2-bench", source="s3://bench/run/mlflow_model")
        client.set_registered_model_alias("sam2-bench", "champion", version.version)
        port = free_port()
        env.update(MLFLOW_TRACKING_URI=tracking, OMP_NUM_THREADS=str(args.threads))
        cmd = [
            sys.executable,
            "-m",
            "sam2.serving",
            "--model_uri=models:/sam2-bench@champion",
            "--model_name=sam2",
            f"--http_port={port}",
            "--enable_grpc=false",
            f"--max_frames={args.frames}",
        ]
        with open(work / "server.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/v1/models/sam2"
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"model server not ready:\n{(work / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if json.load(answer).get("ready"):
                        break
            except OSError:
                time.sleep(0.5)
        body = {"instances": [{"video": "s3://bench/JPEGImages/clip", **request_body(data)}]}
        payload = json.dumps(body).encode()
        times = []
        for i in range(args.rounds + 1):  # the first is the warm-up
            started = time.perf_counter()
            request = urllib.request.Request(
                f"{url}:predict", data=payload, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=3600) as answer:
                result = json.load(answer)["predictions"][0]
            if i:
                times.append(time.perf_counter() - started)
        return {
            "frames": result["num_frames"],
            "seconds": times,
            "rss_mib": peak_rss_mib(proc.pid),
            "cuda_mib": None,
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        s3.stop(grace_s=0.5)


def run_inproc(args: argparse.Namespace, data: Path, checkpoint: Path, work: Path) -> dict:
    """The tracker's request path in this process, on uploaded frames (no HTTP, no S3)."""
    import torch

    from sam2.eval.vos_inference import build_vos_predictor
    from sam2.serving.request import parse_request
    from sam2.serving.tracking import track_page
    from sam2.serving.video_source import stage_page

    torch.set_num_threads(args.threads)
    predictor = build_vos_predictor(
        SIZE_CONFIGS[args.size], str(checkpoint), device=args.device, hydra_overrides_extra=args.overrides
    )
    frames = [
        base64.b64encode(p.read_bytes()).decode() for p in sorted((data / "JPEGImages" / "clip").iterdir())
    ]
    request = parse_request({"video": {"frames": frames}, **request_body(data)})
    times = []
    for i in range(args.rounds + 1):
        if i == 1 and args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            page = stage_page(request.video, 0, args.frames, Path(tmp) / "frames", 1 << 34)
            result = track_page(predictor, page, request)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - started)
    cuda = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    return {"frames": len(result.frames), "seconds": times, "rss_mib": peak_rss_mib(), "cuda_mib": cuda}


def row(name: str, found: dict) -> str:
    median = statistics.median(found["seconds"])
    cuda = f"{found['cuda_mib']:.0f}" if found["cuda_mib"] is not None else "n/a"
    return (
        f"| {name} | {found['frames']} | {median:.2f} | {found['frames'] / median:.2f} | "
        f"{found['rss_mib']:.0f} | {cuda} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="t", choices=sorted(SIZE_CONFIGS))
    parser.add_argument("--resolution", type=int, default=256, help="model input size (++model.image_size)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--frame-size", default="240x320", help="HxW of the clip")
    parser.add_argument("--rounds", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--inproc", action="store_true", help="no HTTP/S3/registry (see the docstring)")
    parser.add_argument("--vos-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.overrides = [f"++model.image_size={args.resolution}"]
    if args.vos_worker:
        vos_worker(args)
        return
    height, width = (int(v) for v in args.frame_size.split("x"))
    with tempfile.TemporaryDirectory(prefix="sam2-serving-bench-") as tmp:
        work = Path(tmp)
        write_clip(work / "data", args.frames, height, width)
        checkpoint = work / "checkpoint.pt"
        make_checkpoint(checkpoint, args.size, args.overrides)
        vos = run_vos(args, work / "data", checkpoint)
        served = (run_inproc if args.inproc else run_http)(args, work / "data", checkpoint, work)
    print(
        f"device {args.device}, size {args.size}, {args.resolution} px, clip {args.frames} x {args.frame_size}, "
        f"2 objects, {args.threads} CPU thread(s), median of {args.rounds}"
    )
    print("| path | frames | s / clip | frames/s | peak RSS MiB | peak CUDA MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(row("vos_inference (infer_video)", vos))
    print(row("tracker in process (track_page)" if args.inproc else "KServe endpoint (V1 HTTP, S3)", served))
    print(
        f"ratio endpoint / vos_inference frames/s: {statistics.median(vos['seconds']) / statistics.median(served['seconds']):.2f}"
    )


if __name__ == "__main__":
    main()
