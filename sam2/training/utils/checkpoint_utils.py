"""Reading and writing training checkpoints: initial weights, atomic saves, resume sources.

A checkpoint is a dict with "model" (the official SAM 2 parameter names, so `build_sam2` loads it
strictly), and for resuming "optimizer", "scaler", "epoch", "steps" and "loss". Paths may be s3:// URIs;
they are fetched through `sam2.storage` into a local cache first.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sam2.utils.atomic_io import atomic_open

logger = logging.getLogger(__name__)


def local_copy(path_or_uri: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path for `path_or_uri`: the path itself, or an s3:// object downloaded into `cache_dir`.

    Raises FileNotFoundError for a missing local file; storage errors (credentials, missing object)
    propagate from `sam2.storage` with their own messages.
    """
    from sam2.storage import ObjectStore, is_s3_uri, parse_s3_uri

    if is_s3_uri(path_or_uri):
        loc = parse_s3_uri(path_or_uri)
        cache = Path(cache_dir or tempfile.gettempdir()) / "s3_cache" / loc.bucket
        dest = cache / loc.key
        ObjectStore().download_file(path_or_uri, dest)
        logger.info("fetched %s to %s", path_or_uri, dest)
        return dest
    path = Path(path_or_uri).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


class CheckpointReadError(ValueError):
    """A checkpoint file torch.load cannot read (truncated, damaged, or not a checkpoint); names the file."""


def read_checkpoint_file(path: str | os.PathLike, source: str | None = None) -> Any:
    """``torch.load`` of a local checkpoint (CPU, weights only), naming the file when it cannot be read.

    ``source``: what to name instead of ``path`` (e.g. the s3:// URI it was fetched from).

    Raises:
        CheckpointReadError: the file is damaged or not a torch checkpoint.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointReadError(
            f"checkpoint {source or path} cannot be read ({reason}): it is truncated, damaged or not a "
            "torch checkpoint; remove or replace it (a resume then uses the previous one)"
        ) from None


def load_checkpoint_state_dict(
    checkpoint_path: str | None, ckpt_state_dict_keys: Sequence[str] = ("model",)
) -> dict[str, torch.Tensor] | None:
    """The state dict stored under `ckpt_state_dict_keys` (nested keys) of a checkpoint; None without a
    path (training then starts from random weights)."""
    if checkpoint_path is None:
        return None
    try:
        local = local_copy(str(checkpoint_path))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"initial checkpoint {checkpoint_path} does not exist; set "
            "trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path to a SAM 2.1 checkpoint "
            "(a path or an s3:// URI), or to null to start from random weights"
        ) from err
    checkpoint = read_checkpoint_file(local, str(checkpoint_path))
    state = checkpoint
    for key in ckpt_state_dict_keys:
        if not isinstance(state, dict) or key not in state:
            raise KeyError(
                f"checkpoint {checkpoint_path} has no key {key!r} (looked up {list(ckpt_state_dict_keys)}); "
                f"top-level keys: {sorted(checkpoint)[:10]}"
            )
        state = state[key]
    return state


def load_state_dict_into_model(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor] | None,
    strict: bool = True,
    ignore_missing_keys: Sequence[str] | None = None,
    ignore_unexpected_keys: Sequence[str] | None = None,
) -> nn.Module:
    """Load initial weights; with `strict` every key must match except the listed (fnmatch) patterns.

    Raises KeyError naming the missing/unexpected keys.
    """
    import fnmatch

    if state_dict is None:
        logger.warning("no initial checkpoint given (model_weight_initializer): training from random weights")
        return model
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not any(fnmatch.fnmatch(k, p) for p in ignore_missing_keys or [])]
    unexpected = [
        k for k in unexpected if not any(fnmatch.fnmatch(k, p) for p in ignore_unexpected_keys or [])
    ]
    if strict and (missing or unexpected):
        raise KeyError(
            f"initial checkpoint does not match the model: missing {missing[:10]} ({len(missing)}), "
            f"unexpected {unexpected[:10]} ({len(unexpected)}); is the checkpoint for this model size?"
        )
    logger.info("loaded initial weights (%d tensors)", len(state_dict))
    return model


def save_checkpoint_atomic(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `checkpoint` to `path` so that readers only ever see a complete file (temp name + rename);
    the data is flushed to disk before the rename, so a crash right after it cannot leave an empty file."""
    with atomic_open(path, "wb") as handle:
        torch.save(checkpoint, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)
