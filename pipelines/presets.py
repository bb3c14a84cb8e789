"""Data set presets (`configs/dataset/<name>.yaml`) turned into pipeline arguments."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# configs/ ships inside the sam2 package (sam2/configs is a link to it), so this works from a wheel too.
PRESET_DIR = Path(str(resources.files("sam2"))) / "configs" / "dataset"


class PresetError(ValueError):
    """A preset is unknown, malformed, or needs data that is not there; the message says what to do."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Pipeline arguments for preset `name`: dataset_name, source_uri and the preset's parameters.

    A preset with `source_env` takes its source from that environment variable, which must name an
    existing path or an s3:// URI; otherwise PresetError says how to provide the data.
    """
    env = os.environ if environ is None else environ
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PresetError(f"unknown data set preset {name!r}; choose one of {', '.join(available_presets())}")
    preset = yaml.safe_load(path.read_text()) or {}
    args: dict[str, Any] = {"dataset_name": preset.get("dataset_name", name)}
    args.update(preset.get("parameters") or {})
    if "source_uri" in preset:
        args["source_uri"] = preset["source_uri"]
    elif "source_env" in preset:
        var = preset["source_env"]
        source = env.get(var, "").strip()
        if not source:
            raise PresetError(
                f"data set {name!r} needs its data: set {var} to the extracted {name.upper()} train folder "
                f"(with JPEGImages/ and Annotations/), its .tar/.tar.gz/.zip archive, or an s3:// URI of either "
                f"(see {path}), e.g. `make pipeline-run DATASET={name} {var}=/data/{name}/train`"
            )
        if not source.startswith("s3://") and not Path(source).exists():
            raise PresetError(
                f"{var}={source} does not exist; point it at the {name.upper()} train folder or archive"
            )
        args["source_uri"] = source if source.startswith("s3://") else str(Path(source).resolve())
    else:
        raise PresetError(f"{path}: a preset needs source_uri or source_env")
    init_env = preset.get("init_checkpoint_env")
    if init_env and env.get(init_env):
        args["init_checkpoint_uri"] = env[init_env]
    return args
