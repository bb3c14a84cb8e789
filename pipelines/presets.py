"""Data set presets (`configs/dataset/<name>.yaml`) turned into pipeline arguments."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sam2.data.layout import ANNOTATIONS_DIR, ARCHIVE_SUFFIXES, IMAGES_DIR, is_archive

# configs/ ships inside the sam2 package (sam2/configs is a link to it), so this works from a wheel too.
PRESET_DIR = Path(str(resources.files("sam2"))) / "configs" / "dataset"


class PresetError(ValueError):
    """A preset is unknown, malformed, or needs data that is not there; the message says what to do."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _local_source_problem(source: Path) -> str | None:
    """Why a local data set source cannot be extracted as a DAVIS/MOSE data set (None: it looks usable)."""
    if not source.exists():
        return "does not exist"
    if source.is_file():
        if is_archive(source):
            return None
        return f"is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)})"
    from sam2.data.frame_extraction import find_images_root  # the search extraction does (imports PyAV)

    found = find_images_root(source)
    if found is None:
        return f"holds no {IMAGES_DIR}/ folder (searched 3 levels deep)"
    if not (found / ANNOTATIONS_DIR).is_dir():
        return f"has {found / IMAGES_DIR} but no {ANNOTATIONS_DIR}/ next to it"
    return None


TARGETS = ("local", "cluster")


def load_preset(name: str, environ: dict[str, str] | None = None, target: str = "local") -> dict[str, Any]:
    """Pipeline arguments for preset `name`: dataset_name, source_uri and the preset's parameters.

    `target` "local" (this machine, kfp.local) adds the preset's `local:` block (node and GPU counts, the
    launcher of a laptop run); "cluster" leaves them out, so a cluster run takes the pipeline's defaults
    (or what the caller sets, e.g. NUM_NODES / GPUS_PER_NODE through the Makefile).
    A preset with `source_env` takes its source from that environment variable, which must be an s3:// URI,
    an archive, or a folder with JPEGImages/ and Annotations/ (up to 3 levels down); otherwise PresetError
    says how to provide the data.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    env = os.environ if environ is None else environ
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PresetError(f"unknown data set preset {name!r}; choose one of {', '.join(available_presets())}")
    preset = yaml.safe_load(path.read_text()) or {}
    args: dict[str, Any] = {"dataset_name": preset.get("dataset_name", name)}
    args.update(preset.get("parameters") or {})
    if target == "local":
        args.update(preset.get("local") or {})
    if "source_uri" in preset:
        args["source_uri"] = preset["source_uri"]
    elif "source_env" in preset:
        var = preset["source_env"]
        source = env.get(var, "").strip()
        how = (
            f"set {var} to the extracted {name.upper()} train folder (with {IMAGES_DIR}/ and "
            f"{ANNOTATIONS_DIR}/), its .tar/.tar.gz/.zip archive, or an s3:// URI of either (see {path}), "
            f"e.g. `make pipeline-run DATASET={name} {var}=/data/{name}/train`"
        )
        if not source:
            raise PresetError(f"data set {name!r} needs its data: {how}")
        if not source.startswith("s3://"):
            local = Path(source).expanduser()
            problem = _local_source_problem(local)
            if problem:
                raise PresetError(f"{var}={source} {problem}; {how}")
            source = str(local.resolve())
        args["source_uri"] = source
    else:
        raise PresetError(f"{path}: a preset needs source_uri or source_env")
    init_env = preset.get("init_checkpoint_env")
    if init_env and env.get(init_env):
        args["init_checkpoint_uri"] = env[init_env]
    return args
