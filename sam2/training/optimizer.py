"""Optimizer construction for SAM 2 fine-tuning: per-parameter schedules, layer-wise lr decay, clipping.

Each optimizer option (`lr`, `weight_decay`, ...) has a list of rules: one default rule and rules that
claim parameters by name pattern (fnmatch on the full parameter name) or by the class of the module that
owns them. Parameters sharing the same rule for every option and the same lr multiplier form one param
group; schedulers are evaluated at `where`, the fraction of training done, in [0, 1].
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn

logger = logging.getLogger(__name__)

LrScaleModifier = Callable[..., Mapping[str, float]]


class ConstantParamScheduler:
    """The same value for the whole run."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def __call__(self, where: float) -> float:
        return self.value


class CosineParamScheduler:
    """Half a cosine from `start_value` (where=0) down to `end_value` (where=1)."""

    def __init__(self, start_value: float, end_value: float) -> None:
        self.start_value = float(start_value)
        self.end_value = float(end_value)

    def __call__(self, where: float) -> float:
        where = min(max(where, 0.0), 1.0)
        return self.end_value + 0.5 * (self.start_value - self.end_value) * (1 + math.cos(math.pi * where))


@dataclass
class OptionRule:
    """A scheduler for one option and the parameters it claims (none named: the default rule)."""

    scheduler: Callable[[float], float]
    param_names: list[str] = field(default_factory=list)
    module_cls_names: list[str] = field(default_factory=list)

    @property
    def is_default(self) -> bool:
        return not self.param_names and not self.module_cls_names


class GradientClipper:
    """Clips the global gradient norm of a model's parameters; returns the norm before clipping."""

    def __init__(self, max_norm: float | None = 1.0, norm_type: float = 2.0) -> None:
        self.max_norm = None if max_norm is None else float(max_norm)
        self.norm_type = float(norm_type)

    def __call__(self, model: nn.Module) -> torch.Tensor | None:
        if self.max_norm is None:
            return None
        params = [p for p in model.parameters() if p.grad is not None]
        return nn.utils.clip_grad_norm_(params, max_norm=self.max_norm, norm_type=self.norm_type)


def _block_index(name: str) -> int | None:
    match = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def layer_decay_param_modifier(
    model: nn.Module,
    layer_decay_value: float,
    apply_to: str = "image_encoder.trunk",
    overrides: Sequence[Mapping] = (),
) -> dict[str, float]:
    """lr multipliers that shrink geometrically towards the input of a ViT-like trunk (Hiera).

    With L blocks, block i gets `layer_decay_value ** (L - i)`, the patch embedding
    `layer_decay_value ** (L + 1)`, other trunk parameters and everything outside `apply_to` 1.0.
    `overrides` ({pattern, value}) pin the multiplier of matching trunk parameters (e.g. `*pos_embed*`).
    """
    try:
        trunk = model.get_submodule(apply_to)
    except AttributeError as err:
        raise ValueError(
            f"layer_decay_param_modifier: model has no submodule {apply_to!r} (apply_to)"
        ) from err
    blocks = getattr(trunk, "blocks", None)
    if blocks is None:
        raise ValueError(f"layer_decay_param_modifier: {apply_to!r} has no `blocks` to decay over")
    num_blocks = len(blocks)
    scales: dict[str, float] = {}
    prefix = apply_to + "."
    for name, _ in model.named_parameters():
        if not name.startswith(prefix):
            continue
        local = name[len(prefix) :]
        scale = 1.0
        block = _block_index(local)
        if block is not None and local.startswith("blocks."):
            scale = layer_decay_value ** (num_blocks - block)
        elif local.startswith("patch_embed"):
            scale = layer_decay_value ** (num_blocks + 1)
        for override in overrides:
            if fnmatch.fnmatchcase(name, override["pattern"]):
                scale = float(override["value"])
                break
        scales[name] = scale
    return scales


class ScheduledOptimizer:
    """A torch optimizer whose param groups follow their own schedulers (see `step_schedulers`)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, group_schedulers: list[dict[str, Callable[[float], float]]]
    ) -> None:
        self.optimizer = optimizer
        self.group_schedulers = group_schedulers
        self.step_schedulers(0.0)

    def step_schedulers(self, where: float) -> None:
        """Set every group's options to their schedules' values at `where` (fraction of training done)."""
        for group, schedulers in zip(self.optimizer.param_groups, self.group_schedulers, strict=True):
            for option, scheduler in schedulers.items():
                value = scheduler(where)
                group[option] = value * group["lr_scale"] if option == "lr" else value

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def _parse_rules(option: str, rules: Iterable[Mapping | OptionRule]) -> list[OptionRule]:
    parsed = [
        r
        if isinstance(r, OptionRule)
        else OptionRule(
            scheduler=r["scheduler"],
            param_names=list(r.get("param_names") or []),
            module_cls_names=list(r.get("module_cls_names") or []),
        )
        for r in rules
    ]
    defaults = [r for r in parsed if r.is_default]
    if len(defaults) != 1:
        raise ValueError(
            f"optim.options.{option} needs exactly one rule without param_names/module_cls_names "
            f"(the default), found {len(defaults)}"
        )
    return parsed


def _params_of_rule(rule: OptionRule, model: nn.Module, names: Sequence[str]) -> set[str]:
    claimed = {n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in rule.param_names)}
    if rule.module_cls_names:
        classes = tuple(get_class(c) for c in rule.module_cls_names)
        wanted = set(names)
        for module_name, module in model.named_modules():
            if isinstance(module, classes):
                for param_name, _ in module.named_parameters(recurse=False):
                    full = f"{module_name}.{param_name}" if module_name else param_name
                    if full in wanted:
                        claimed.add(full)
    return claimed


def construct_optimizer(
    model: nn.Module,
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    options: Mapping[str, Sequence[Mapping | OptionRule]],
    param_group_modifiers: Sequence[LrScaleModifier] = (),
) -> ScheduledOptimizer:
    """Build the optimizer over the trainable parameters of `model`.

    optimizer_factory: e.g. `functools.partial(torch.optim.AdamW)`; called with the param groups.
    options: option name -> rules (dicts with `scheduler` and optional `param_names`/`module_cls_names`).
    param_group_modifiers: callables `f(model=...) -> {param name: lr multiplier}` (layer-wise decay).

    Raises ValueError for a rule set without a single default or with overlapping rules, and AssertionError
    if the groups do not hold every trainable parameter exactly once.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    parsed_options = {opt: _parse_rules(opt, rules) for opt, rules in options.items()}
    rule_of: dict[str, dict[str, int]] = {n: {} for n in names}
    for option, rules in parsed_options.items():
        owner: dict[str, int] = {}
        for idx, rule in enumerate(rules):
            if rule.is_default:
                continue
            for n in _params_of_rule(rule, model, names):
                if n in owner:
                    raise ValueError(
                        f"optim.options.{option}: parameter {n} is claimed by two rules "
                        f"(#{owner[n]} and #{idx}); make their param_names/module_cls_names disjoint"
                    )
                owner[n] = idx
        default_idx = next(i for i, r in enumerate(rules) if r.is_default)
        for n in names:
            rule_of[n][option] = owner.get(n, default_idx)

    lr_scale = {n: 1.0 for n in names}
    for modifier in param_group_modifiers:
        for n, scale in modifier(model=model).items():
            if n in lr_scale:
                lr_scale[n] *= scale

    groups: dict[tuple, list[str]] = {}
    for n in names:
        key = (tuple(sorted(rule_of[n].items())), lr_scale[n])
        groups.setdefault(key, []).append(n)

    params_by_name = dict(named)
    param_groups, group_schedulers = [], []
    for (rule_key, scale), group_names in groups.items():
        param_groups.append({"params": [params_by_name[n] for n in group_names], "lr_scale": scale})
        group_schedulers.append({opt: parsed_options[opt][idx].scheduler for opt, idx in rule_key})

    grouped = [id(p) for g in param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)), "a parameter landed in two optimizer param groups"
    assert set(grouped) == {id(p) for _, p in named}, "a trainable parameter is in no optimizer param group"
    logger.info("optimizer: %d trainable tensors in %d param groups", len(names), len(param_groups))
    return ScheduledOptimizer(optimizer_factory(param_groups), group_schedulers)


def build_optimizer_from_config(model: nn.Module, optim_conf: Mapping) -> ScheduledOptimizer:
    """The optimizer a training config's `trainer.optim` block describes (`optimizer`, `options`,
    `param_group_modifiers`), built with Hydra; AdamW with its defaults when `optimizer` is absent."""
    from hydra.utils import instantiate

    optimizer_conf = optim_conf.get("optimizer") or {"_target_": "torch.optim.AdamW"}
    options = {
        option: [instantiate(rule, _convert_="all") for rule in rules]
        for option, rules in (optim_conf.get("options") or {}).items()
    }
    modifiers = [instantiate(m) for m in optim_conf.get("param_group_modifiers") or []]
    return construct_optimizer(model, instantiate(optimizer_conf, _partial_=True), options, modifiers)


# ----------------------------------------------------------------------------------------------------------
# Upstream's param-group layout, to read the optimizer state of a checkpoint upstream's trainer wrote
# ----------------------------------------------------------------------------------------------------------


def _config_get(conf: Any, key: str, default: Any = None) -> Any:
    getter = getattr(conf, "get", None)
    return getter(key, default) if getter is not None else default


def upstream_param_groups(model: nn.Module, optim_conf: Mapping) -> list[list[str]]:
    """The parameter names of each param group, in the order upstream's `construct_optimizer` builds
    them for the same `trainer.optim` block (training/optimizer.py in the sam2==1.1.0 wheel): every
    option's rules in config order, each lr rule split by layer id by the layer-decay modifier (over
    sorted names, an override pattern being its own id), the groups the product of those rules (lr first)
    leaving out empty ones, and each group's parameters in `named_parameters` order, frozen ones
    included. Raises ValueError for a param_group_modifier other than layer_decay_param_modifier.
    """
    named = [n for n, _ in model.named_parameters()]
    all_names = set(named)
    per_option: list[list[set[str]]] = []
    for option, rules in (_config_get(optim_conf, "options") or {}).items():
        sets: list[set[str] | None] = []
        for rule in rules:
            param_names = list(_config_get(rule, "param_names") or [])
            cls_names = list(_config_get(rule, "module_cls_names") or [])
            if not param_names and not cls_names:
                sets.append(None)
                continue
            claimed = {n for n in named if any(fnmatch.fnmatchcase(n, pat) for pat in param_names)}
            classes = {get_class(c) for c in cls_names}
            for module_name, module in model.named_modules():
                if type(module) in classes:  # upstream keys modules by their exact class
                    for param_name, _ in module.named_parameters(recurse=False):
                        claimed.add(f"{module_name}.{param_name}" if module_name else param_name)
            sets.append(claimed)
        constrained = [s for s in sets if s is not None]
        default = all_names - set().union(*constrained) if constrained else set(all_names)
        resolved = [default if s is None else s for s in sets]
        if all(s is not None for s in sets):
            resolved.append(default)
        per_option.append((option, resolved))  # type: ignore[arg-type]
    for modifier in _config_get(optim_conf, "param_group_modifiers") or []:
        target = str(_config_get(modifier, "_target_", ""))
        if not target.endswith("layer_decay_param_modifier"):
            raise ValueError(f"optim.param_group_modifiers: no upstream layout known for {target!r}")
        apply_to = str(_config_get(modifier, "apply_to", ""))
        overrides = [str(o["pattern"]) for o in _config_get(modifier, "overrides") or []]
        trunk = model.get_submodule(apply_to)
        num_layers = trunk.get_num_layers() + 1
        expanded = []
        for option, sets in per_option:
            if option != "lr":
                expanded.append((option, sets))
                continue
            split: list[set[str]] = []
            for names in sets:
                by_layer: dict[Any, set[str]] = {}
                for name in sorted(names):
                    layer: Any = num_layers
                    if name.startswith(apply_to):
                        layer = trunk.get_layer_id(name)
                        layer = next((p for p in overrides if fnmatch.fnmatchcase(name, p)), layer)
                    by_layer.setdefault(layer, set()).add(name)
                split.extend(by_layer.values())
            expanded.append((option, split))
        per_option = expanded
    groups = []
    for combo in itertools.product(*(sets for _, sets in per_option)):
        members = set.intersection(*combo) if combo else set(all_names)
        names = [n for n in named if n in members]
        if names:
            groups.append(names)
    return groups


def optimizer_state_from_upstream(
    optim: ScheduledOptimizer, model: nn.Module, optim_conf: Mapping, upstream_state: Mapping
) -> dict:
    """`upstream_state` (an optimizer state dict upstream's trainer saved for this model and
    `trainer.optim` block) re-indexed for `optim`, parameter by parameter through their names.

    Raises ValueError when the saved groups are not those upstream builds for this model and block."""
    groups = upstream_param_groups(model, optim_conf)
    saved = upstream_state["param_groups"]
    if [len(g) for g in groups] != [len(g["params"]) for g in saved]:
        raise ValueError(
            f"the optimizer state has {len(saved)} param groups of sizes {[len(g['params']) for g in saved]}, "
            f"but upstream builds {len(groups)} of sizes {[len(g) for g in groups]} for this model and "
            "trainer.optim; was it written for another model or optimizer config?"
        )
    name_of_saved = {
        idx: name
        for names, g in zip(groups, saved, strict=True)
        for name, idx in zip(names, g["params"], strict=True)
    }
    name_of = {id(p): n for n, p in model.named_parameters()}
    ours = optim.optimizer.state_dict()
    index_of: dict[str, int] = {}
    for group, group_state in zip(optim.optimizer.param_groups, ours["param_groups"], strict=True):
        for param, idx in zip(group["params"], group_state["params"], strict=True):
            index_of[name_of[id(param)]] = idx
    state = {
        index_of[name_of_saved[idx]]: value
        for idx, value in upstream_state["state"].items()
        if name_of_saved.get(idx) in index_of
    }
    return {"state": state, "param_groups": ours["param_groups"]}
