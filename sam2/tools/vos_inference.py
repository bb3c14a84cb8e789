"""Semi-supervised VOS inference with SAM 2 over a folder of videos (the official tool's flags).

    python -m sam2.tools.vos_inference --sam2_cfg configs/sam2.1/sam2.1_hiera_b+.yaml \\
        --sam2_checkpoint ckpt.pt --base_video_dir JPEGImages --input_mask_dir Annotations \\
        --output_mask_dir preds [--video_list_file val.txt] [--per_obj_png_file] [--num_workers 2]

Under ``torchrun --nproc-per-node N`` each rank takes its share of the videos. A rerun reuses a finished
video only when the marker beside it records the same checkpoint (SHA-256), config and flags; otherwise
it is overwritten, as the official tool does.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sam2.eval.vos_inference import VOSInferenceOptions, default_device, list_videos, run_vos_inference
from sam2.utils.cli_errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sam2_cfg", default="configs/sam2.1/sam2.1_hiera_b+.yaml", help="model config name")
    parser.add_argument("--sam2_checkpoint", default="./checkpoints/sam2.1_hiera_base_plus.pt")
    parser.add_argument("--base_video_dir", required=True, help="<dir>/<video>/<frame>.jpg")
    parser.add_argument("--input_mask_dir", required=True, help="<dir>/<video>/<frame>.png prompts")
    parser.add_argument("--video_list_file", default=None, help="videos to run, one per line (default: all)")
    parser.add_argument("--output_mask_dir", required=True, help="where <video>/<frame>.png are written")
    parser.add_argument("--score_thresh", type=float, default=0.0, help="mask logit threshold")
    parser.add_argument(
        "--use_all_masks",
        action="store_true",
        help="prompt with every input mask, not only the first frame's",
    )
    parser.add_argument(
        "--per_obj_png_file",
        action="store_true",
        help="read and write one PNG per object (<video>/<object id>/<frame>.png, SA-V layout); masks may overlap",
    )
    parser.add_argument(
        "--apply_postprocessing",
        action="store_true",
        help="post-process masks (hole filling etc.; not used for the SAM 2 paper's numbers)",
    )
    parser.add_argument(
        "--track_object_appearing_later_in_video",
        action="store_true",
        help="track each object separately from the first frame it appears in (YouTube-VOS, LVOS)",
    )
    parser.add_argument("--use_vos_optimized_video_predictor", action="store_true", help="compile the model")
    parser.add_argument("--device", default=default_device(), help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--num_workers", type=int, default=1, help="local processes sharing the videos")
    parser.add_argument("--offload_video_to_cpu", action="store_true", help="keep frames in host memory")
    parser.add_argument(
        "--offload_state_to_cpu", action="store_true", help="keep tracking state in host memory"
    )
    parser.add_argument(
        "--hydra_overrides",
        nargs="*",
        default=[],
        help="extra model config overrides, e.g. ++model.image_size=512",
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = VOSInferenceOptions(
        score_thresh=args.score_thresh,
        use_all_masks=args.use_all_masks,
        per_obj_png_file=args.per_obj_png_file,
        track_object_appearing_later_in_video=args.track_object_appearing_later_in_video,
        offload_video_to_cpu=args.offload_video_to_cpu,
        offload_state_to_cpu=args.offload_state_to_cpu,
    )
    videos = list_videos(args.base_video_dir, args.video_list_file)
    summary = run_vos_inference(
        args.sam2_cfg,
        args.sam2_checkpoint,
        args.base_video_dir,
        args.input_mask_dir,
        args.output_mask_dir,
        videos=videos,
        options=options,
        device=args.device,
        num_workers=args.num_workers,
        apply_postprocessing=args.apply_postprocessing,
        hydra_overrides_extra=args.hydra_overrides,
        vos_optimized=args.use_vos_optimized_video_predictor,
    )
    fps = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    print(
        f"wrote {len(summary.written)} video(s), {summary.frames} frames ({fps:.1f} frames/s); "
        f"reused {len(summary.skipped)} made with the same checkpoint, config and flags; "
        f"output in {args.output_mask_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
