"""A random-weight initial checkpoint, for runs given no official SAM 2.1 weights.

It stands in for the official weights where they cannot be downloaded (a smoke test of the pipeline, CI);
a model trained from it is no useful model, so the pipeline marks it (`TrainedModel.random_init`) and
never promotes it unless the run allows it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def random_init_checkpoint(model_config: str, target_uri: str, seed: int) -> str:
    """Build `model_config` with random weights (seeded, so reruns match) and store it as
    ``{"model": state_dict}`` at `target_uri` (s3://); an object already there is kept. Returns the URI."""
    import torch

    from sam2.build_sam import build_sam2
    from sam2.storage import ObjectStore

    store = ObjectStore()
    if store.exists(target_uri):
        return target_uri
    torch.manual_seed(seed)
    model = build_sam2(model_config, None, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random_init.pt"
        torch.save({"model": model.state_dict()}, path)
        store.upload_file(path, target_uri)
    logger.warning("made a RANDOM-WEIGHT initial checkpoint %s (not SAM 2.1 weights)", target_uri)
    return target_uri
