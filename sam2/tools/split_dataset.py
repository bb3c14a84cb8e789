"""Split a data set's videos into train/val lists (deterministic, seeded, no video in both).

    python -m sam2.tools.split_dataset --gt_root G --output_dir D [--val_fraction 0.2] [--seed 0]
        [--stratify] [--video_list valid_videos.txt]

Writes ``D/train.txt`` and ``D/val.txt`` (one video per line; usable as ``dataset.file_list_txt``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sam2.data.layout import DataPrepError
from sam2.data.splitting import split_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gt_root",
        required=True,
        type=Path,
        help="the Annotations/ folder, or a COCO data set root (annotations.coco.json)",
    )
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--val_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stratify", action="store_true", help="keep object-count proportions in both lists")
    parser.add_argument("--video_list", type=Path, default=None, help="only split these videos")
    args = parser.parse_args(argv)
    try:
        result = split_dataset(
            args.gt_root, args.output_dir, args.val_fraction, args.seed, args.stratify, args.video_list
        )
    except DataPrepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
