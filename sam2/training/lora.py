"""LoRA fine-tuning: low-rank adapters on SAM 2's attention and MLP projections, the base weights frozen.

Why: full fine-tuning keeps gradients and two AdamW moments for every weight; with adapters only the
low-rank matrices A (r x in) and B (out x r) of each targeted `nn.Linear` train, so a b+ or l model fits
one consumer GPU (upstream sam2 issue #358). The adapter layers come from Hugging Face `peft` (a
maintained implementation with the usual initialisation, scaling alpha / r and merge rule), injected in
place into the plain torch model with `peft.inject_adapter_in_model`: the trainer keeps training the same
`SAM2Train` module, and only the adapted layers' parameter names change (`<layer>.base_layer.weight`,
`<layer>.lora_A.default.weight`, `<layer>.lora_B.default.weight`).

What is written:
- training checkpoints hold the adapter tensors alone (`adapter_state_dict`) and the settings under
  "lora"; the frozen base comes from the initial checkpoint each time training (re)starts;
- `merged_state_dict` folds every adapter into its base weight (W + alpha / r * B @ A) under the official
  parameter names, a plain checkpoint that `build_sam2` loads strictly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"
# Module-name suffixes (peft's matching: the name equals the entry or ends with "." + entry): the
# attention projections of the Hiera trunk (qkv, attn.proj), of memory attention and of the mask
# decoder's two-way transformer (q/k/v/out_proj), and the MLP projections of all three (mlp.layers.0/1,
# memory attention's linear1/linear2). Heads (IoU, object score, hypernetworks) are left as they are.
DEFAULT_TARGET_MODULES = (
    "qkv",
    "attn.proj",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "mlp.layers.0",
    "mlp.layers.1",
    "linear1",
    "linear2",
)
_LORA_MARKERS = (".lora_A.", ".lora_B.")
_BASE_MARKER = ".base_layer."


@dataclass(frozen=True)
class LoRASettings:
    """The `trainer.lora` block of a training config.

    rank: the adapters' rank r (0 in the recipes: LoRA off, full fine-tuning).
    alpha: the scale numerator; an adapter adds alpha / r * B @ A to its layer's weight.
    dropout: dropout on the adapters' input (0: deterministic, as the tests need).
    target_modules: module-name suffixes of the nn.Linear layers to adapt (see DEFAULT_TARGET_MODULES).
    """

    rank: int
    alpha: float
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    @classmethod
    def from_config(cls, conf: Mapping[str, Any] | None) -> LoRASettings | None:
        """Settings from a `trainer.lora` mapping; None when it is absent or its rank is 0 (LoRA off).

        Raises ValueError naming the key for a negative rank, a non-positive alpha, a dropout outside
        [0, 1) or an empty target list.
        """
        if conf is None or not int(conf.get("rank", 0) or 0):
            return None
        rank = int(conf["rank"])
        alpha = float(rank if conf.get("alpha") is None else conf["alpha"])
        dropout = float(conf.get("dropout", 0.0) or 0.0)
        targets = conf.get("target_modules") or DEFAULT_TARGET_MODULES
        if isinstance(targets, str):
            targets = [targets]
        if rank < 0:
            raise ValueError(f"trainer.lora.rank must be >= 0 (0: LoRA off), got {rank}")
        if alpha <= 0:
            raise ValueError(f"trainer.lora.alpha must be > 0, got {alpha}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"trainer.lora.dropout must lie in [0, 1), got {dropout}")
        if not targets:
            raise ValueError("trainer.lora.target_modules is empty; list module-name suffixes such as qkv")
        return cls(rank=rank, alpha=alpha, dropout=dropout, target_modules=tuple(str(t) for t in targets))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data


def is_adapter_key(name: str) -> bool:
    """Whether a parameter / state-dict name belongs to a LoRA adapter (not to the frozen base)."""
    return any(marker in name for marker in _LORA_MARKERS)


def add_lora_adapters(model: nn.Module, settings: LoRASettings) -> list[str]:
    """Inject LoRA adapters (peft) into the targeted `nn.Linear` layers of `model`, in place, and freeze
    every other parameter; returns the adapted layers' names.

    Call it after the base weights are loaded (the adapters wrap the layers, which renames their
    weights). Raises ValueError naming trainer.lora.target_modules when an entry matches no layer.
    """
    from peft import LoraConfig, inject_adapter_in_model

    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]

    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    unmatched = [t for t in settings.target_modules if not any(matches(n, t) for n in linear_names)]
    if unmatched:
        raise ValueError(
            f"trainer.lora.target_modules: {unmatched} match no nn.Linear layer of the model (e.g. "
            f"{linear_names[:3]}); list module-name suffixes such as {list(DEFAULT_TARGET_MODULES[:3])}"
        )
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        # The full names of the matched nn.Linear layers: a suffix such as out_proj also names 1x1
        # convolutions (the memory encoder's), which peft would adapt too.
        target_modules=[n for n in linear_names if any(matches(n, t) for t in settings.target_modules)],
        bias="none",
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter_key(name))
    adapted = [name for name, module in model.named_modules() if _is_lora_layer(module)]
    logger.info(
        "LoRA rank %d, alpha %g on %d layers: %d trainable of %d parameters",
        settings.rank,
        settings.alpha,
        len(adapted),
        trainable_parameter_count(model),
        sum(p.numel() for p in model.parameters()),
    )
    return adapted


def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors alone (detached references, names as in `model.state_dict()`)."""
    return {name: value for name, value in model.state_dict().items() if is_adapter_key(name)}


def base_weights_checksum(model: nn.Module) -> float:
    """The float64 sum of every non-adapter tensor: tells which frozen base a set of adapters was
    trained on."""
    return sum(
        float(v.detach().double().sum()) for k, v in model.state_dict().items() if not is_adapter_key(k)
    )


def check_same_base(saved: Mapping[str, Any] | None, current: float, source: str) -> None:
    """Raise ValueError when a LoRA checkpoint's recorded base checksum is not the current base's:
    adapters on other base weights compute something else (the initial checkpoint was changed)."""
    recorded = (saved or {}).get("base_checksum")
    # A tolerance, not equality: a float64 reduction may round differently with another thread count.
    if recorded is not None and not math.isclose(float(recorded), current, rel_tol=1e-9, abs_tol=1e-6):
        raise ValueError(
            f"the LoRA adapters in {source} were trained on other base weights than the initial checkpoint "
            "gives now (trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path; base "
            f"checksum {float(recorded)!r} vs {current!r}): resume with the initial checkpoint the run "
            "started from, or start a new run in another launcher.experiment_log_dir"
        )


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Load adapter tensors into a model that carries the same adapters; every adapter must be given
    and nothing else. Raises KeyError naming missing / unexpected keys (and `source`)."""
    expected = set(adapter_state_dict(model))
    given = set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        where = f" in {source}" if source else ""
        raise KeyError(
            f"LoRA adapter state{where} does not match the model's adapters: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}); was it trained with the "
            "same trainer.lora settings (rank, target_modules) and model size?"
        )
    result = model.load_state_dict(dict(state), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict (official parameter names, no adapters) whose weights are the base weights
    plus each adapter's delta, computed by peft (`get_delta_weight`, the rule its own merge applies).
    The model is left unchanged."""
    deltas: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if _is_lora_layer(module):
            base = module.get_base_layer()
            delta = module.get_delta_weight(ADAPTER_NAME)
            deltas[f"{name}.weight"] = (base.weight.detach() + delta.to(base.weight.dtype)).clone()
    merged: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if is_adapter_key(key):
            continue
        plain = key.replace(_BASE_MARKER, ".")
        merged[plain] = deltas.get(plain, value.detach().clone())
    missing = set(deltas) - set(merged)
    assert not missing, f"merged weights without a base entry: {sorted(missing)[:5]}"
    return merged


def lora_settings_of_checkpoint(checkpoint: Mapping[str, Any]) -> LoRASettings | None:
    """The LoRA settings a training checkpoint was written with (its "lora" entry), or None."""
    return LoRASettings.from_config(checkpoint.get("lora"))


def merge_adapter_checkpoint(
    base_model: nn.Module, adapter_checkpoint: Mapping[str, Any], source: str = ""
) -> dict[str, torch.Tensor]:
    """Merge a LoRA training checkpoint (adapters + settings) into `base_model` (a plain SAM 2 model with
    its base weights loaded); returns the merged plain state dict. `base_model` gets the adapters.
    Raises ValueError when the checkpoint holds no LoRA settings."""
    settings = lora_settings_of_checkpoint(adapter_checkpoint)
    if settings is None:
        raise ValueError(
            f"checkpoint {source or '(given)'} has no 'lora' settings: it is not a LoRA adapter checkpoint"
        )
    add_lora_adapters(base_model, settings)
    load_adapter_state_dict(base_model, adapter_checkpoint["model"], source=source)
    return merged_state_dict(base_model)
