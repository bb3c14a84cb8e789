"""Compile the pipeline to `pipelines/sam2_finetune.yaml` (committed; a test checks it is current).

`python -m pipelines.compile [--output PATH]`. The components' image is `$SAM2_PIPELINE_IMAGE` when set
(your registry's build of docker/Dockerfile), else the default; the committed file uses the default.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kfp import compiler

from pipelines.sam2_finetune import sam2_finetune
from sam2.utils.atomic_io import atomic_path

COMPILED = Path(__file__).resolve().with_name("sam2_finetune.yaml")


def compile_pipeline(output: str | os.PathLike[str] = COMPILED) -> Path:
    """Write the compiled pipeline atomically; returns its path."""
    # kfp picks JSON or YAML from the name it writes to; the temporary ends in .yaml so YAML it is.
    with atomic_path(output, temp_suffix=".yaml") as temp:
        compiler.Compiler().compile(sam2_finetune, str(temp))
    return Path(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the SAM 2 fine-tuning pipeline to YAML.")
    parser.add_argument("--output", default=str(COMPILED))
    args = parser.parse_args(argv)
    print(f"compiled {compile_pipeline(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
