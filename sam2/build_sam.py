"""Build SAM 2 models from the packaged Hydra configs and load `{"model": state_dict}` checkpoints.

Same entry points and arguments as the official package (`build_sam2`, `build_sam2_video_predictor`,
and `build_sam2_hf` / `build_sam2_video_predictor_hf` for the official releases on the Hugging Face hub),
so scripts written for it run unchanged. Config names such as "configs/sam2.1/sam2.1_hiera_t.yaml"
resolve inside the installed `sam2` package from any working directory. Hydra's global state is left as
the caller had it (initialised or not), so these functions can be called any number of times and from an
application that uses Hydra itself.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import inspect
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

logger = logging.getLogger(__name__)

# Hydra overrides that the official release applies at inference time.
_IMAGE_POSTPROCESSING = [
    # Fall back to the best of the three masks when the single mask output is unstable.
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]
_VIDEO_POSTPROCESSING = [
    *_IMAGE_POSTPROCESSING,
    # Masks from clicks enter the memory binarised, exactly as the user saw them.
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    # Fill holes of up to 8 pixels in the low-resolution masks.
    "++model.fill_hole_area=8",
]

MODEL_SIZES = ("t", "s", "b+", "l")
"""The released Hiera trunk sizes (tiny, small, base plus, large): the suffix of every config name."""


def model_configs(model_size: str) -> tuple[str, str]:
    """(model config, fine-tuning recipe) names of a SAM 2.1 model size: t, s, b+ or l.

    Raises ValueError naming the sizes there are.
    """
    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size must be one of {', '.join(MODEL_SIZES)}, got {model_size!r}")
    return (
        f"configs/sam2.1/sam2.1_hiera_{model_size}.yaml",
        f"configs/sam2.1_training/sam2.1_hiera_{model_size}_MOSE_finetune.yaml",
    )


# Parameters that SAM 2.1 added to SAM 2.0; their presence tells the two releases apart.
_SAM21_ONLY_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias")
# (trunk embed dim, number of trunk blocks) -> size suffix of the config names.
_TRUNK_SIZES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}


# Hugging Face model ids of the official releases -> (config name, checkpoint file name).
HF_MODEL_ID_TO_FILENAMES = {
    **{
        f"facebook/sam2-hiera-{name}": (f"configs/sam2/sam2_hiera_{size}.yaml", f"sam2_hiera_{file}.pt")
        for name, size, file in (
            ("tiny", "t", "tiny"),
            ("small", "s", "small"),
            ("base-plus", "b+", "base_plus"),
            ("large", "l", "large"),
        )
    },
    **{
        f"facebook/sam2.1-hiera-{name}": (
            f"configs/sam2.1/sam2.1_hiera_{size}.yaml",
            f"sam2.1_hiera_{file}.pt",
        )
        for name, size, file in (
            ("tiny", "t", "tiny"),
            ("small", "s", "small"),
            ("base-plus", "b+", "base_plus"),
            ("large", "l", "large"),
        )
    },
}


class UnknownModelIdError(KeyError):
    """A model id that is not one of the official releases (a KeyError, as the official lookup raises)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _hf_download(model_id: str) -> tuple[str, str]:
    """(config name, local checkpoint path) for an official model id, through huggingface_hub's cache.

    Downloads the checkpoint when the hub is reachable and it is not cached yet; with HF_HUB_OFFLINE=1 or
    without network a cached copy is used. Raises UnknownModelIdError for an id that is not an official
    release, FileNotFoundError when the checkpoint is neither cached nor downloadable.
    """
    if model_id not in HF_MODEL_ID_TO_FILENAMES:
        raise UnknownModelIdError(
            f"{model_id!r} is not an official SAM 2 model id; known ids: {', '.join(HF_MODEL_ID_TO_FILENAMES)}. "
            "For other weights call build_sam2(<config>, <checkpoint path>)"
        )
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    config_name, checkpoint_name = HF_MODEL_ID_TO_FILENAMES[model_id]
    try:
        ckpt_path = hf_hub_download(repo_id=model_id, filename=checkpoint_name)
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"{checkpoint_name} of {model_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and could not be downloaded (HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)}): {err}. Download it "
            f"where the hub is reachable (`hf download {model_id} {checkpoint_name}`) and copy the cache, "
            "or set HF_HUB_CACHE to a cache that holds it"
        ) from err
    logger.info("%s: checkpoint %s", model_id, ckpt_path)
    return config_name, ckpt_path


def build_sam2_hf(model_id: str, **kwargs) -> nn.Module:
    """`build_sam2` for an official release on the Hugging Face hub (e.g. "facebook/sam2.1-hiera-large"):
    the config and checkpoint come from `HF_MODEL_ID_TO_FILENAMES`, the weights through huggingface_hub's
    cache. Keyword arguments go to `build_sam2`. Raises as `_hf_download` and `build_sam2`."""
    config_name, ckpt_path = _hf_download(model_id)
    return build_sam2(config_file=config_name, ckpt_path=ckpt_path, **kwargs)


def build_sam2_video_predictor_hf(model_id: str, **kwargs) -> nn.Module:
    """`build_sam2_video_predictor` for an official release on the Hugging Face hub (see `build_sam2_hf`)."""
    config_name, ckpt_path = _hf_download(model_id)
    return build_sam2_video_predictor(config_file=config_name, ckpt_path=ckpt_path, **kwargs)


def split_builder_kwargs(builder: Callable[..., nn.Module], kwargs: dict) -> tuple[dict, dict]:
    """`kwargs` split into (the builder's own parameters, the rest): `from_pretrained` passes the first to
    the model builder and the second to the predictor or generator, so neither warns about the other's."""
    names = {
        name
        for name, param in inspect.signature(builder).parameters.items()
        if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)
    }
    return {k: v for k, v in kwargs.items() if k in names}, {
        k: v for k, v in kwargs.items() if k not in names
    }


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's parameters do not fit the model built from the given config."""


@contextlib.contextmanager
def _packaged_config_search() -> Iterator[None]:
    """Let Hydra's `compose` search the configs packaged in `sam2`, then restore the caller's Hydra state."""
    global_hydra = GlobalHydra.instance()
    callers_hydra = global_hydra.hydra if global_hydra.is_initialized() else None
    global_hydra.clear()
    try:
        with initialize_config_module("sam2", version_base="1.2"):
            yield
    finally:
        restored = GlobalHydra.instance()
        restored.clear()
        if callers_hydra is not None:
            restored.initialize(callers_hydra)


def available_model_configs() -> list[str]:
    """Names of the model configs shipped in the package (usable as `config_file`)."""
    root = importlib.resources.files("sam2") / "configs"
    names = []
    for release in ("sam2.1", "sam2"):
        folder = root / release
        if folder.is_dir():
            names += sorted(
                f"configs/{release}/{entry.name}"
                for entry in folder.iterdir()
                if entry.name.endswith(".yaml") and "_hiera_" in entry.name
            )
    return names


def compose_model_config(config_file: str, overrides: list[str] | None = None) -> DictConfig:
    """The resolved Hydra config for `config_file` (e.g. "configs/sam2.1/sam2.1_hiera_t.yaml") with
    `overrides` applied. Raises FileNotFoundError naming the available configs when it does not exist."""
    with _packaged_config_search():
        try:
            cfg = compose(config_name=config_file, overrides=list(overrides or []))
        except MissingConfigException as err:
            raise FileNotFoundError(
                f"model config {config_file!r} not found in the sam2 package; available: "
                f"{', '.join(available_model_configs())}"
            ) from err
    OmegaConf.resolve(cfg)
    return cfg


def _instantiate_model(
    config_file: str, overrides: list[str], ckpt_path: str | os.PathLike | None, device: str, mode: str
) -> nn.Module:
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r} was requested but CUDA is not available here; pass device='cpu'"
        )
    cfg = compose_model_config(config_file, overrides)
    model = instantiate(cfg.model, _recursive_=True)
    _load_checkpoint(model, ckpt_path, config_file)
    model = model.to(device)
    if mode == "eval":
        model.eval()
    else:
        model.train()
    return model


def _warn_ignored(kwargs: dict) -> None:
    if kwargs:
        logger.warning("build_sam: ignoring unsupported keyword arguments %s", sorted(kwargs))


def build_sam2(
    config_file: str,
    ckpt_path: str | os.PathLike | None = None,
    device: str = "cuda",
    mode: str = "eval",
    hydra_overrides_extra: list[str] = [],  # noqa: B006 - the official signature; never mutated
    apply_postprocessing: bool = True,
    **kwargs,
) -> nn.Module:
    """Build a `SAM2Base` (for `SAM2ImagePredictor`) from a packaged config and optional checkpoint.

    `apply_postprocessing` adds the official inference-time overrides (dynamic multimask fallback).
    Extra keyword arguments are accepted for compatibility and ignored, as in the official package.
    Raises FileNotFoundError for an unknown config or a missing checkpoint file, CheckpointMismatchError
    when the checkpoint does not fit the config (naming the keys and, when recognisable, the right config).
    """
    _warn_ignored(kwargs)
    overrides = list(hydra_overrides_extra)
    if apply_postprocessing:
        overrides += _IMAGE_POSTPROCESSING
    return _instantiate_model(config_file, overrides, ckpt_path, device, mode)


def build_sam2_video_predictor(
    config_file: str,
    ckpt_path: str | os.PathLike | None = None,
    device: str = "cuda",
    mode: str = "eval",
    hydra_overrides_extra: list[str] = [],  # noqa: B006 - the official signature; never mutated
    apply_postprocessing: bool = True,
    vos_optimized: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a `SAM2VideoPredictor` from a packaged config and optional checkpoint.

    `apply_postprocessing` adds the official inference-time overrides (dynamic multimask fallback,
    binarised click masks in memory, hole filling of 8 pixels). `vos_optimized` compiles the image
    encoder (and uses the VOS-optimised predictor class where the package provides one).
    Raises as `build_sam2`.
    """
    _warn_ignored(kwargs)
    overrides = ["++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor"]
    if vos_optimized:
        overrides = [
            "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictorVOS",
            "++model.compile_image_encoder=true",
        ]
    overrides += list(hydra_overrides_extra)
    if apply_postprocessing:
        overrides += _VIDEO_POSTPROCESSING
    return _instantiate_model(config_file, overrides, ckpt_path, device, mode)


def _trunk_size(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Size suffix ("t", "s", "b+", "l") of the Hiera trunk a state dict holds, or None."""
    pos_embed = state_dict.get("image_encoder.trunk.pos_embed")
    if pos_embed is None:
        return None
    depth = len({key.split(".")[3] for key in state_dict if key.startswith("image_encoder.trunk.blocks.")})
    return _TRUNK_SIZES.get((pos_embed.shape[1], depth))


def _fitting_config(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The packaged config whose architecture a state dict matches, when recognisable."""
    size = _trunk_size(state_dict)
    if size is None:
        return None
    if any(key in state_dict for key in _SAM21_ONLY_KEYS):
        return f"configs/sam2.1/sam2.1_hiera_{size}.yaml"
    return f"configs/sam2/sam2_hiera_{size}.yaml"


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict_fits(
    model: nn.Module, state_dict: dict[str, torch.Tensor], config_file: str, ckpt_name: str
) -> None:
    """Raise CheckpointMismatchError, naming missing, unexpected and mis-shaped keys and the config the
    checkpoint does fit, unless `state_dict` matches `model` exactly."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    misshaped = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    if not (missing or unexpected or misshaped):
        return
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if misshaped:
        problems.append(f"shape mismatches (checkpoint vs model): {_preview(misshaped, 4)}")
    ckpt_has_21 = any(key in state_dict for key in _SAM21_ONLY_KEYS)
    model_has_21 = any(key in expected for key in _SAM21_ONLY_KEYS)
    hint = ""
    if model_has_21 and not ckpt_has_21:
        hint = "This is a SAM 2.0 checkpoint given to a SAM 2.1 config. "
    elif ckpt_has_21 and not model_has_21:
        hint = "This is a SAM 2.1 checkpoint given to a SAM 2.0 config. "
    if unexpected and all(key.startswith("module.") for key in state_dict):
        hint += (
            "Its keys carry the 'module.' prefix of DistributedDataParallel; save model.module's state dict. "
        )
    fitting = _fitting_config(state_dict)
    if fitting is not None and fitting != config_file:
        hint += f"Use config_file={fitting!r}."
    elif not hint:
        hint = "Check that the checkpoint was saved from a model built with this config."
    raise CheckpointMismatchError(
        f"checkpoint {ckpt_name} does not fit config {config_file!r}: {'; '.join(problems)}. {hint}"
    )


@contextlib.contextmanager
def _local_checkpoint(ckpt_path: str | os.PathLike) -> Iterator[Path]:
    """A local path for `ckpt_path`; s3:// URIs are downloaded to a temporary file first."""
    if str(ckpt_path).startswith("s3://"):
        from sam2.storage import ObjectStore

        with tempfile.TemporaryDirectory(prefix="sam2_ckpt-") as tmp:
            local = Path(tmp) / Path(str(ckpt_path)).name
            ObjectStore().download_file(str(ckpt_path), local)
            yield local
        return
    local = Path(ckpt_path).expanduser()
    if not local.is_file():
        raise FileNotFoundError(
            f"checkpoint file {str(ckpt_path)!r} does not exist; download the official SAM 2.1 "
            "checkpoint (sam2.1_hiera_*.pt) or pass the path of one saved by training"
        )
    yield local


def _load_checkpoint(model: nn.Module, ckpt_path: str | os.PathLike | None, config_file: str) -> None:
    if ckpt_path is None:
        return
    with _local_checkpoint(ckpt_path) as local:
        try:
            checkpoint = torch.load(local, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"checkpoint {str(ckpt_path)!r} could not be read by torch.load: {err}") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"checkpoint {str(ckpt_path)!r} is not a {{'model': state_dict}} SAM 2 checkpoint (found {found})"
        )
    state_dict = checkpoint["model"]
    check_state_dict_fits(model, state_dict, config_file, repr(str(ckpt_path)))
    model.load_state_dict(state_dict, strict=True)
    logger.info("loaded checkpoint %s", ckpt_path)
