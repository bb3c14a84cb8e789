"""The registered model as an MLflow pyfunc: `mlflow.pyfunc.load_model("models:/sam2-<data>@champion")`.

The MLflow model folder holds no weights: its `model_config` names the checkpoint's `s3://` URI (the one
training published), the model config and the inference overrides, and `load_context` fetches the
checkpoint through MLflow's artifact client (`MLFLOW_S3_ENDPOINT_URL`, `AWS_*`), as it fetched the folder.
So a registered version costs a few kB, not another copy of the weights.

`predict` tracks objects through a video with this package's video predictor. Its input is one request
(a dict) or several (a list of dicts, or a DataFrame with these columns):

- ``video``: a folder of JPEG frames (``00000.jpg`` ...) or a video file (.mp4, ...);
- ``mask``: the first-frame masks, an id map (2-D array, or a path to a PNG: palette index = object id,
  0 background), or
- ``points`` ([[x, y], ...] in pixels) with ``labels`` (1 foreground, 0 background) for one object
  ``obj_id`` (default 1); ``frame_idx`` is the prompted frame (default 0).

For each request it returns ``{"object_ids": [...], "masks": uint8 array (frames, H, W)}``: an id map per
frame at the video's resolution (where objects overlap, the one with the larger logit wins). One request
gives one dict, several give a list.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

logger = logging.getLogger(__name__)

# What the wrapper imports at load time; logged with every version as its pip requirements.
REQUIREMENTS = (
    "torch",
    "torchvision",
    "hydra-core",
    "omegaconf",
    "numpy",
    "pillow",
    "av",
    "mlflow-skinny",
    "pandas",
    "boto3",
)


def pip_requirements() -> list[str]:
    """This package and the wrapper's dependencies, pinned to the versions installed here."""
    pins = []
    for name in ("sam2-kubeflow", *REQUIREMENTS):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


class SAM2VideoModel(mlflow.pyfunc.PythonModel):
    """Semi-supervised VOS with a registered SAM 2 checkpoint (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        import torch

        from sam2.eval.vos_inference import build_vos_predictor

        config = dict(context.model_config or {})
        checkpoint = str(config["checkpoint_uri"])
        if "://" in checkpoint and not checkpoint.startswith("file://"):
            import mlflow.artifacts

            checkpoint = mlflow.artifacts.download_artifacts(artifact_uri=checkpoint)
        device = config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        # Built as the pipeline's infer step (vos_inference) builds it, without upstream's optional mask
        # post-processing: the version's registered J&F was measured that way, and serving must match it.
        self.predictor = build_vos_predictor(
            config["model_config"],
            checkpoint,
            device=device,
            hydra_overrides_extra=list(config.get("hydra_overrides") or []),
        )
        logger.info("loaded %s from %s on %s", config["model_config"], config["checkpoint_uri"], device)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        requests, single = _requests(model_input)
        outputs = [self.track(request) for request in requests]
        return outputs[0] if single else outputs

    def track(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Masks of every prompted object on every frame of one video."""
        import torch

        if "video" not in request:
            raise ValueError(
                f"a request needs 'video' (a frame folder or a video file), got {sorted(request)}"
            )
        video = Path(str(request["video"]))
        if not video.exists():
            raise FileNotFoundError(f"video {video} does not exist")
        predictor = self.predictor
        with torch.inference_mode():
            state = predictor.init_state(str(video))
            frame_idx = int(request.get("frame_idx") or 0)
            if request.get("mask") is not None:
                ids = _id_map(request["mask"])
                objects = [int(i) for i in np.unique(ids) if i != 0]
                if not objects:
                    raise ValueError("the first-frame mask holds no object (every pixel is 0)")
                for obj in objects:
                    predictor.add_new_mask(state, frame_idx, obj, torch.from_numpy(ids == obj))
            elif request.get("points") is not None:
                points = np.asarray(request["points"], dtype=np.float32).reshape(-1, 2)
                labels = np.asarray(request.get("labels", [1] * len(points)), dtype=np.int32)
                predictor.add_new_points_or_box(
                    state, frame_idx, int(request.get("obj_id") or 1), points=points, labels=labels
                )
            else:
                raise ValueError("a request needs 'mask' (first-frame id map) or 'points' with 'labels'")
            num_frames = state["num_frames"]
            height, width = state["video_height"], state["video_width"]
            masks = np.zeros((num_frames, height, width), np.uint8)
            object_ids: list[int] = []
            for reverse in (False, True) if frame_idx > 0 else (False,):
                for idx, obj_ids, logits in predictor.propagate_in_video(
                    state, start_frame_idx=frame_idx, reverse=reverse
                ):
                    object_ids = [int(o) for o in obj_ids]
                    scores = logits[:, 0].float().cpu().numpy()
                    best = scores.argmax(axis=0)
                    inside = scores.max(axis=0) > 0
                    masks[idx] = np.where(inside, np.asarray(object_ids, np.uint8)[best], 0)
            predictor.reset_state(state)
        return {"object_ids": object_ids, "masks": masks}


def _id_map(mask: Any) -> np.ndarray:
    if isinstance(mask, (str, os.PathLike)):
        from PIL import Image

        with Image.open(mask) as image:
            if image.mode not in ("P", "L"):
                raise ValueError(f"mask {mask} is mode {image.mode}; give a palette or grayscale id map PNG")
            return np.asarray(image).astype(np.int64)
    ids = np.asarray(mask)
    if ids.ndim != 2:
        raise ValueError(f"a first-frame mask is a 2-D id map, got shape {ids.shape}")
    return ids.astype(np.int64)


def _requests(model_input: Any) -> tuple[list[Mapping[str, Any]], bool]:
    """Normalise the pyfunc input: a dict, a list of dicts or a DataFrame of requests."""
    if isinstance(model_input, Mapping):
        return [model_input], True
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        return list(model_input.to_dict(orient="records")), False
    if isinstance(model_input, list) and all(isinstance(r, Mapping) for r in model_input):
        return list(model_input), False
    raise TypeError(
        f"predict takes a dict, a list of dicts or a DataFrame of requests, got {type(model_input)}"
    )


def save_model_folder(
    path: str | os.PathLike,
    checkpoint_uri: str,
    model_config: str,
    hydra_overrides: list[str] | None = None,
    metadata_tags: dict[str, str] | None = None,
) -> Path:
    """Write the MLflow model folder (MLmodel, requirements, the pickled wrapper) to `path`."""
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=SAM2VideoModel(),
        model_config={
            "checkpoint_uri": checkpoint_uri,
            "model_config": model_config,
            "hydra_overrides": list(hydra_overrides or []),
        },
        pip_requirements=pip_requirements(),
        metadata=dict(metadata_tags or {}),
    )
    return Path(path)
