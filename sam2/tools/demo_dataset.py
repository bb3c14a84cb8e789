"""Write the small deterministic demo data set (DAVIS layout, palette masks, manifest).

python -m sam2.tools.demo_dataset --output DIR [--num_videos 6] [--num_frames 14] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sam2.data.demo import generate_demo_dataset
from sam2.data.layout import MANIFEST_NAME
from sam2.utils.cli_errors import cli_entry


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--num_videos", type=int, default=6)
    parser.add_argument("--num_frames", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = generate_demo_dataset(args.output, args.num_videos, args.num_frames, args.seed)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    print(
        f"demo data set: {manifest['num_videos']} videos, {manifest['num_frames']} frames -> {root} "
        f"(version {manifest['version']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
