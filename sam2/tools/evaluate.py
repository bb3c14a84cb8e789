"""J&F of predicted VOS masks against ground truth: prints the scores and optionally writes them as JSON.

python -m sam2.tools.evaluate --gt_root G --pred_root P [--video_list_file F] [-n PROCS]
    [--do_not_skip_first_and_last_frame] [--protocol sav|davis2017] [--output_json OUT]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sam2.eval.evaluator import PROTOCOLS, EvaluationResult, evaluate, read_video_list, write_metrics_json
from sam2.utils.cli_errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gt_root", required=True, help="ground-truth masks: <gt_root>/<video>/...")
    parser.add_argument(
        "--pred_root", required=True, help="predicted masks in the same layout (or per object)"
    )
    parser.add_argument("--video_list_file", default=None, help="evaluate only these videos (one per line)")
    parser.add_argument(
        "-n", "--num_processes", type=int, default=None, help="worker processes (default: CPUs)"
    )
    parser.add_argument(
        "--do_not_skip_first_and_last_frame",
        action="store_true",
        help="score the first and last frame too (they are skipped by default, as in semi-supervised VOS)",
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, default="sav", help="scoring rules (default: sav)")
    parser.add_argument("--output_json", default=None, help="write the scores (percent) to this JSON file")
    parser.add_argument("--report_dir", default=None, help="also write a Markdown report with plots here")
    parser.add_argument(
        "--image_root", default=None, help="video frames (JPEGImages) for the report overlays"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the global scores")
    return parser


def format_table(result: EvaluationResult) -> str:
    """A plain-text table: global scores, then one line per (video, object), in percent."""
    width = max([len("Global score"), *(len(name) for name in result.videos)])
    lines = [f"{'sequence':<{width}} {'obj':>5} {'J&F':>6} {'J':>6} {'F':>6}"]
    lines.append(
        f"{'Global score':<{width}} {'':>5} {100 * result.jf:6.1f} {100 * result.j:6.1f} {100 * result.f:6.1f}"
    )
    for name, video in sorted(result.videos.items()):
        for object_id, obj in sorted(video.objects.items()):
            jf = (obj.j + obj.f) / 2
            lines.append(
                f"{name:<{width}} {object_id:>5} {100 * jf:6.1f} {100 * obj.j:6.1f} {100 * obj.f:6.1f}"
            )
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    videos = read_video_list(args.video_list_file) if args.video_list_file else None
    result = evaluate(
        args.gt_root,
        args.pred_root,
        videos=videos,
        protocol=args.protocol,
        skip_first_and_last=not args.do_not_skip_first_and_last_frame,
        num_processes=args.num_processes,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(format_table(result))
    print(f"J&F: {100 * result.jf:.2f}  J: {100 * result.j:.2f}  F: {100 * result.f:.2f}")
    if args.output_json:
        write_metrics_json(result, args.output_json)
        print(f"wrote {args.output_json}")
    if args.report_dir:
        from sam2.eval.report import write_report  # matplotlib only when a report is asked for

        write_report(result, args.report_dir, args.gt_root, args.pred_root, args.image_root)
        print(f"wrote {Path(args.report_dir) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
