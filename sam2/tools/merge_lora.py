"""Merge a LoRA adapter checkpoint into its base weights: a plain checkpoint `build_sam2` loads strictly.

    python -m sam2.tools.merge_lora --sam2_cfg configs/sam2.1/sam2.1_hiera_b+.yaml \
        --base_checkpoint sam2.1_hiera_base_plus.pt --adapter_checkpoint checkpoints/checkpoint_best.pt \
        --output merged.pt

A LoRA run (`trainer.lora.rank` > 0) writes its adapters alone (checkpoint.pt, checkpoint_best.pt,
checkpoint_<epoch>.pt) and merges the last ones itself (checkpoint_merged.pt); this merges any of them.
Paths may be s3:// URIs for the inputs. Exits 2 with one line naming the file or setting for a wrong
config, or a checkpoint that is damaged, not a LoRA adapter checkpoint or does not fit the base model.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sam2.training.utils.checkpoint_utils import local_copy, read_checkpoint_file, save_checkpoint_atomic
from sam2.utils.cli_errors import cli_entry


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sam2_cfg", required=True, help="model config, e.g. configs/sam2.1/sam2.1_hiera_t.yaml"
    )
    parser.add_argument(
        "--base_checkpoint", required=True, help="the initial weights the adapters were trained on"
    )
    parser.add_argument(
        "--adapter_checkpoint", required=True, help="a LoRA run's checkpoint (adapters alone)"
    )
    parser.add_argument("--output", required=True, help="where to write {'model': merged state dict}")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra Hydra override of the model config (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sam2.build_sam import build_sam2
    from sam2.training.lora import merge_adapter_checkpoint

    model = build_sam2(args.sam2_cfg, args.base_checkpoint, device="cpu", hydra_overrides_extra=args.override)
    adapters = read_checkpoint_file(local_copy(args.adapter_checkpoint), args.adapter_checkpoint)
    merged = merge_adapter_checkpoint(model, adapters, source=args.adapter_checkpoint)
    path = save_checkpoint_atomic({"model": merged, "merged_lora": adapters["lora"]}, args.output)
    print(f"merged {len(adapters['model'])} adapter tensors of {args.adapter_checkpoint} into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
