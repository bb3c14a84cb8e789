"""Compile the pipeline to `pipelines/sam2_finetune.yaml` (committed; a test checks it is current).

`python -m pipelines.compile [--output PATH]`. The components' image is `$SAM2_PIPELINE_IMAGE` when set
(your registry's build of docker/Dockerfile), else the default; the committed file uses the default.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from kfp import compiler

from pipelines.sam2_finetune import sam2_finetune

COMPILED = Path(__file__).resolve().with_name("sam2_finetune.yaml")


def compile_pipeline(output: str | os.PathLike[str] = COMPILED) -> Path:
    """Write the compiled pipeline atomically; returns its path."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".yaml", dir=out.parent)
    os.close(fd)
    try:
        compiler.Compiler().compile(sam2_finetune, tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the SAM 2 fine-tuning pipeline to YAML.")
    parser.add_argument("--output", default=str(COMPILED))
    args = parser.parse_args(argv)
    print(f"compiled {compile_pipeline(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
