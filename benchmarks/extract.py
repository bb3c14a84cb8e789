"""Frame extraction and object storage throughput.

Measures, in one run on the same synthetic H.264 videos:
- a plain single-threaded baseline (decode with PyAV, ``to_image().save()`` one frame after another),
- ``sam2.data.frame_extraction.extract_dataset`` (FFmpeg frame threads + parallel JPEG encoding),
and the upload / download throughput of the extracted data set to a private local SeaweedFS S3 server.
Each extraction runs ``--repeats`` times, the two interleaved, after an ``os.sync()`` so that the kernel's
write-back of an earlier run's files does not land in the next one's time; the table shows the median.
The colour error column is the mean absolute difference of the first video's JPEG frames to FFmpeg's own
RGB decode of the same frames: speed must not be bought with image quality.

    python benchmarks/extract.py [--videos 4] [--frames 60] [--width 854] [--height 480] [--workers N]
                                 [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from sam2.data.frame_extraction import DEFAULT_JPEG_QUALITY, extract_dataset
from sam2.data.layout import IMAGES_DIR
from sam2.storage import ObjectStore, S3Settings
from sam2.tools.s3_server import SeaweedS3Server, free_port


def make_video(path: Path, frames: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(height, width * 2, 3), dtype=np.uint8)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=24)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for index in range(frames):
        image = np.ascontiguousarray(texture[:, index * 4 : index * 4 + width])
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def baseline(videos: list[Path], out: Path) -> int:
    """Decode and save one frame after another on one thread (what a simple script does)."""
    count = 0
    for video in videos:
        target = out / video.stem
        target.mkdir(parents=True)
        with av.open(str(video)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                frame.to_image().save(target / f"{index:05d}.jpg", quality=DEFAULT_JPEG_QUALITY)
                count += 1
    return count


def colour_error(video: Path, frames_dir: Path) -> float:
    """Mean absolute RGB difference of ``frames_dir``'s JPEGs to FFmpeg's RGB decode of ``video``."""
    errors = []
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            reference = frame.to_ndarray(format="rgb24").astype(np.int16)
            with Image.open(frames_dir / f"{index:05d}.jpg") as image:
                ours = np.asarray(image.convert("RGB"), dtype=np.int16)
            errors.append(float(np.abs(ours - reference).mean()))
    return statistics.fmean(errors)


def timed(function, *args, **kwargs):
    """(seconds, result) of one call, started after flushing earlier runs' dirty pages to disk."""
    os.sync()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sam2-bench-extract-"))
    try:
        source = work / "videos"
        source.mkdir()
        videos = [source / f"video_{i}.mp4" for i in range(args.videos)]
        for video in videos:
            make_video(video, args.frames, args.width, args.height)

        base_times, ours_times = [], []
        for repeat in range(args.repeats):
            base_out, ours_out = work / f"baseline{repeat}", work / f"ours{repeat}"
            base_s, base_frames = timed(baseline, videos, base_out)
            ours_s, result = timed(extract_dataset, source, ours_out, workers=args.workers)
            assert result.num_frames == base_frames, (result.num_frames, base_frames)
            base_times.append(base_s)
            ours_times.append(ours_s)
            if repeat < args.repeats - 1:
                shutil.rmtree(base_out)
                shutil.rmtree(ours_out)
        base_s, ours_s = statistics.median(base_times), statistics.median(ours_times)
        base_error = colour_error(videos[0], base_out / videos[0].stem)
        ours_error = colour_error(videos[0], ours_out / IMAGES_DIR / videos[0].stem)

        server = SeaweedS3Server(work / "s3", "BENCH" + "0" * 8, "bench-secret-key", free_port())
        server.start()
        try:
            store = ObjectStore(
                S3Settings(server.endpoint_url, server.access_key, server.secret_key), workers=8
            )
            # SeaweedFS grows its volumes on a bucket's first write (about 0.6 s, once): not a transfer
            store.write_bytes("s3://bench/warm-up", b"0")
            size_mb = folder_bytes(ours_out) / 1e6
            start = time.perf_counter()
            store.upload_folder(ours_out, "s3://bench/dataset")
            up_s = time.perf_counter() - start
            start = time.perf_counter()
            store.sync_to_local("s3://bench/dataset", work / "downloaded")
            down_s = time.perf_counter() - start
        finally:
            server.stop(grace_s=1.0)

        print(
            f"\n{args.videos} videos x {args.frames} frames, {args.width}x{args.height} H.264, JPEG quality "
            f"{DEFAULT_JPEG_QUALITY}, {os.cpu_count()} CPUs, workers={args.workers}, median of {args.repeats}\n"
        )
        print("| step | amount | seconds | throughput | vs baseline | colour error |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(
            f"| baseline: 1 thread decode+save | {base_frames} frames | {base_s:.2f} | {base_frames / base_s:.1f} frames/s | 1.00x | {base_error:.2f} |"
        )
        print(
            f"| extract_dataset | {result.num_frames} frames | {ours_s:.2f} | {result.num_frames / ours_s:.1f} frames/s | "
            f"{base_s / ours_s:.2f}x | {ours_error:.2f} |"
        )
        print(
            f"| S3 upload_folder (SeaweedFS, local) | {size_mb:.1f} MB | {up_s:.2f} | {size_mb / up_s:.1f} MB/s | | |"
        )
        print(
            f"| S3 sync_to_local (SeaweedFS, local) | {size_mb:.1f} MB | {down_s:.2f} | {size_mb / down_s:.1f} MB/s | | |"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
