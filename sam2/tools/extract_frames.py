"""Extract frames and normalise a raw data set into the training layout, with a manifest.

    python -m sam2.tools.extract_frames --input <video|folder|archive|s3://...> --output <dir|s3://...>
        [--fps F] [--workers N] [--quality Q] [--work_dir D]

Frames are JPEGs (libjpeg quality ``--quality``, 90 by default) named ``%05d.jpg`` from 0, every frame
unless ``--fps`` resamples. Rerunning skips finished videos; an interrupted run resumes. Prints a summary
with the data set version (the manifest hash); exits 2 with one line naming the file at fault on bad input
(docs/errors-and-exit-codes.md).
"""

from __future__ import annotations

import argparse
import logging
import sys

from sam2.data.frame_extraction import DEFAULT_JPEG_QUALITY, extract_dataset
from sam2.utils.cli_errors import cli_entry


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input", required=True, help="video, folder (DAVIS/MOSE/SA-V/videos), archive or s3:// URI"
    )
    parser.add_argument("--output", required=True, help="output folder or s3:// prefix")
    parser.add_argument("--fps", type=float, default=None, help="resample to this many frames per second")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: CPU count)")
    parser.add_argument(
        "--quality",
        type=int,
        default=DEFAULT_JPEG_QUALITY,
        help=f"JPEG quality 1-100 (default: {DEFAULT_JPEG_QUALITY}), chroma 4:2:0",
    )
    parser.add_argument("--work_dir", default=None, help="local staging for s3:// input/output and archives")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = extract_dataset(
        args.input,
        args.output,
        fps=args.fps,
        jpeg_quality=args.quality,
        workers=args.workers,
        work_dir=args.work_dir,
    )
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
