"""Validate a data set (frames decode, masks fit, clips long enough, first frames hold objects).

    python -m sam2.tools.validate_dataset --root R [--num_frames 8] [--on_bad exclude|fail]
        [--report_dir D] [--workers N]

Writes ``validation_report.json`` and ``valid_videos.txt`` (a ``dataset.file_list_txt``) to
``--report_dir`` (default: ``R_validation/`` beside the data set, whose folder is left untouched; split_dataset
reads the list from there), prints a summary naming each bad video and why, and exits 2 when
``--on_bad fail`` and any video is bad (or no good video is left). ``R`` may be an ``s3://`` URI of a
published data set (fetched to ``--work_dir``; the report then goes to the current folder unless
``--report_dir`` says where).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from sam2.data.validation import default_report_dir, validate_dataset, write_report
from sam2.storage import is_s3_uri
from sam2.utils.cli_errors import cli_entry


def _local_root(root: str, work_dir: str | None) -> Path:
    """``root`` itself, or a local copy of the published data set at an ``s3://`` URI."""
    if not is_s3_uri(root):
        return Path(root)
    from sam2.storage import ObjectStore

    dest = Path(work_dir or tempfile.mkdtemp(prefix="sam2-validate-")) / "data"
    ObjectStore().sync_to_local(root.rstrip("/"), dest)
    return dest


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        required=True,
        help="data set root (JPEGImages/ + Annotations/, or images/ + annotations.coco.json), or s3:// URI",
    )
    parser.add_argument("--num_frames", type=int, default=8, help="clip length the training sampler draws")
    parser.add_argument("--on_bad", choices=["exclude", "fail"], default="exclude")
    parser.add_argument("--report_dir", type=Path, default=None, help="default: <root>_validation/")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--work_dir", default=None, help="local copy of an s3:// data set")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = _local_root(args.root, args.work_dir)
    report_dir = args.report_dir
    if report_dir is None:
        report_dir = Path.cwd() / "validation" if is_s3_uri(args.root) else default_report_dir(root)
    report = validate_dataset(root, num_frames=args.num_frames, workers=args.workers)
    print(report.summary())
    valid = write_report(report, report_dir, on_bad=args.on_bad)
    print(f"{len(report.good)} valid videos listed in {valid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
