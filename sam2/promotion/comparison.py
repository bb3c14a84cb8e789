"""Which checkpoints a pipeline run scores side by side: the new one, the current champion, the baseline.

Promotion compares like with like: the new checkpoint and the data set's current champion are both run
on this run's val videos with this run's inference settings, and the initial checkpoint the new one was
trained from is scored too (the zero-shot baseline), so the report says whether fine-tuning helped. A
model that cannot be scored (no champion yet, its checkpoint is gone, random initial weights) is left
out with the reason, which the report and the promotion decision repeat.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sam2.registry import MlflowModelRegistry
    from sam2.storage import ObjectStore

logger = logging.getLogger(__name__)

NEW = "new"
CHAMPION = "champion"
BASELINE = "baseline"
KEYS = (NEW, CHAMPION, BASELINE)


@dataclass(frozen=True)
class ComparedModel:
    """One checkpoint to run and score on the val videos; `key` is NEW, CHAMPION or BASELINE."""

    key: str
    checkpoint_uri: str
    model_config: str
    label: str
    version: str | None = None  # the registered version (the champion's)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComparedModel:
        return cls(**{k: data.get(k) for k in ("key", "checkpoint_uri", "model_config", "label", "version")})


def resolve_references(
    registry: MlflowModelRegistry | None,
    store: ObjectStore,
    dataset_name: str,
    init_checkpoint_uri: str,
    model_config: str,
) -> tuple[list[ComparedModel], dict[str, str]]:
    """The champion and baseline to score beside the new model, and why any of them is left out.

    `registry` None means no registry is configured (no champion to compare with). The champion's model
    config is the one registered with it (tag `model_config`), else `model_config` (older versions).
    Returns (models, skipped) where skipped maps CHAMPION / BASELINE to a sentence for people.
    """
    models: list[ComparedModel] = []
    skipped: dict[str, str] = {}
    champion = registry.champion_details(dataset_name) if registry is not None else None
    if champion is None:
        skipped[CHAMPION] = "no champion registered yet"
    else:
        checkpoint = champion.checkpoint_uri
        if not checkpoint:
            skipped[CHAMPION] = (
                f"champion version {champion.version} names no checkpoint (tag checkpoint_uri)"
            )
        elif not store.exists(checkpoint):
            skipped[CHAMPION] = f"champion version {champion.version}'s checkpoint {checkpoint} is gone"
        else:
            models.append(
                ComparedModel(
                    CHAMPION,
                    checkpoint,
                    champion.model_config or model_config,
                    f"champion {champion.model_name} v{champion.version}",
                    champion.version,
                )
            )
    if not init_checkpoint_uri:
        skipped[BASELINE] = "training started from random weights, so there is no zero-shot baseline"
    elif not store.exists(init_checkpoint_uri):
        skipped[BASELINE] = f"initial checkpoint {init_checkpoint_uri} is gone"
    else:
        models.append(ComparedModel(BASELINE, init_checkpoint_uri, model_config, "baseline (zero-shot)"))
    for key, why in skipped.items():
        logger.info("not scoring the %s: %s", key, why)
    return models, skipped


def comparison_summary(
    scores: Mapping[str, Mapping[str, Any]],
    entries: Mapping[str, Mapping[str, Any]],
    skipped: Mapping[str, str],
    dataset_version: str,
    val_list_uri: str,
    videos: list[str],
    protocol: str,
    curves: Mapping[str, list[tuple[int, float]]] | None = None,
) -> dict[str, Any]:
    """The JSON promotion decides on: per model (key) its checkpoint, version, J&F/J/F and per-video J&F,
    all measured on `videos` of data set version `dataset_version`; plus why others were not scored.

    `scores`: key -> `EvaluationResult.to_dict()` (percent); `entries`: key -> ComparedModel dict.
    """
    if NEW not in scores:
        raise ValueError(f"no scores of the new model among {sorted(scores)}")
    models = {}
    for key, result in scores.items():
        entry = entries[key]
        models[key] = {
            "label": entry.get("label", key),
            "checkpoint_uri": entry["checkpoint_uri"],
            "version": entry.get("version"),
            **{k: float(result[k]) for k in ("J&F", "J", "F")},
            "per_video": {v: r["J&F"] for v, r in result["per_video"].items()},
        }
    return {
        "dataset_version": dataset_version,
        "val_list_uri": val_list_uri,
        "videos": list(videos),
        "protocol": protocol,
        "models": models,
        "skipped": {k: v for k, v in skipped.items() if k not in models},
        "curves": {k: [list(p) for p in v] for k, v in (curves or {}).items()},
    }
