"""Split a data set's videos into train/val lists (deterministic, seeded, no video in both).

    python -m sam2.tools.split_dataset --gt_root G --output_dir D [--val_fraction 0.2] [--seed 0]
        [--stratify] [--video_list valid_videos.txt | --all_videos]

Writes ``D/train.txt`` and ``D/val.txt`` (one video per line; usable as ``dataset.file_list_txt``).
Without ``--video_list`` the videos validation found good are split when its ``valid_videos.txt`` sits
next to the data (the data set root, or ``<root>_validation/``); ``--all_videos`` splits every annotated
video instead. Bad input exits 2 with one line naming it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sam2.data.splitting import default_video_list, split_dataset
from sam2.utils.cli_errors import cli_entry

logger = logging.getLogger("sam2.tools.split_dataset")


@cli_entry
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
    videos = parser.add_mutually_exclusive_group()
    videos.add_argument(
        "--video_list",
        type=Path,
        default=None,
        help="only split these videos (default: validation's valid_videos.txt next to the data, if any)",
    )
    videos.add_argument(
        "--all_videos", action="store_true", help="split every annotated video, ignoring validation's list"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    video_list = args.video_list
    if video_list is None and not args.all_videos:
        video_list = default_video_list(args.gt_root)
        if video_list is not None:
            logger.info(
                "splitting the videos validation found good: %s (--all_videos: every video)", video_list
            )
        else:
            logger.warning(
                "no valid_videos.txt next to %s: splitting every annotated video, bad ones included "
                "(run sam2.tools.validate_dataset first)",
                args.gt_root,
            )
    result = split_dataset(
        args.gt_root, args.output_dir, args.val_fraction, args.seed, args.stratify, video_list
    )
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
