"""Which reference models a pipeline run scores beside the new one: the data set's champion and the
initial checkpoint (the zero-shot baseline). A model that cannot be scored (no champion yet, its
checkpoint is gone, random initial weights) is left out with the reason, which the report and the
promotion decision repeat.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sam2.promotion.comparison import BASELINE, CHAMPION, ComparedModel

if TYPE_CHECKING:
    from sam2.promotion.registry import ModelRegistry
    from sam2.storage import ObjectStore

logger = logging.getLogger(__name__)


def resolve_references(
    registry: ModelRegistry | None,
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
