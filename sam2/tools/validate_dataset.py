"""Validate a data set (frames decode, masks fit, clips long enough, first frames hold objects).

    python -m sam2.tools.validate_dataset --root R [--num_frames 8] [--on_bad exclude|fail]
        [--report_dir D] [--workers N]

Writes ``validation_report.json`` and ``valid_videos.txt`` (a ``dataset.file_list_txt``) to
``--report_dir`` (default: ``R``), prints a summary naming each bad video and why, and exits 1 when
``--on_bad fail`` and any video is bad (or no good video is left).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sam2.data.layout import DataPrepError
from sam2.data.validation import validate_dataset, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        required=True,
        type=Path,
        help="data set root (JPEGImages/ + Annotations/, or images/ + annotations.coco.json)",
    )
    parser.add_argument("--num_frames", type=int, default=8, help="clip length the training sampler draws")
    parser.add_argument("--on_bad", choices=["exclude", "fail"], default="exclude")
    parser.add_argument("--report_dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = validate_dataset(args.root, num_frames=args.num_frames, workers=args.workers)
        valid = write_report(report, args.report_dir or args.root, on_bad=args.on_bad)
    except DataPrepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"{len(report.good)} valid videos listed in {valid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
