"""Frame extraction and object storage throughput.

Measures, in one run on the same synthetic H.264 videos:
- the reference: a plain single-threaded decode-and-save (PyAV with FFmpeg's decoder threads off,
  ``to_image().save()`` one frame after another),
- the same script with PyAV's default decoder threading (FFmpeg slice threads), which is what a simple
  script gets (5-11% faster than the reference here),
- ``sam2.data.frame_extraction.extract_dataset`` (FFmpeg frame threads + parallel JPEG encoding),
and the upload / download throughput of the extracted data set to a private local SeaweedFS S3 server.
Each extraction runs ``--repeats`` times, the three interleaved, after an ``os.sync()`` so that the kernel's
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
from sam2.tools.s3_server import SeaweedS3Server
from sam2.utils.network import free_port


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


def decode_and_save(videos: list[Path], out: Path, decoder_threads: bool) -> int:
    """Decode and save one frame after another (what a simple script does); returns the frame count.

    ``decoder_threads=False`` turns FFmpeg's own decoder threads off: the single-threaded reference.
    """
    count = 0
    for video in videos:
        target = out / video.stem
        target.mkdir(parents=True)
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            if not decoder_threads:
                stream.thread_type = "NONE"
            for index, frame in enumerate(container.decode(stream)):
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

        contenders = {
            "baseline: 1 thread decode+save": lambda out: decode_and_save(videos, out, decoder_threads=False),
            "PyAV defaults decode+save": lambda out: decode_and_save(videos, out, decoder_threads=True),
            "extract_dataset": lambda out: extract_dataset(source, out, workers=args.workers).num_frames,
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        outputs: dict[str, Path] = {}
        for repeat in range(args.repeats):
            for index, (name, run) in enumerate(contenders.items()):
                out = work / f"run{index}-{repeat}"
                seconds, frames = timed(run, out)
                assert frames == args.videos * args.frames, (name, frames)
                times[name].append(seconds)
                if name in outputs:
                    shutil.rmtree(outputs[name])
                outputs[name] = out
        median = {name: statistics.median(seconds) for name, seconds in times.items()}
        reference = median["baseline: 1 thread decode+save"]
        frames_dirs = {
            name: out / IMAGES_DIR if name == "extract_dataset" else out for name, out in outputs.items()
        }
        errors = {
            name: colour_error(videos[0], folder / videos[0].stem) for name, folder in frames_dirs.items()
        }
        ours_out = outputs["extract_dataset"]

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
        total = args.videos * args.frames
        for name, seconds in median.items():
            print(
                f"| {name} | {total} frames | {seconds:.2f} | {total / seconds:.1f} frames/s | "
                f"{reference / seconds:.2f}x | {errors[name]:.2f} |"
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
