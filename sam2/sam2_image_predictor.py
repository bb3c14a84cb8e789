"""Promptable segmentation of still images: embed an image once, then predict masks for any number of
click / box / mask prompts. Same API as the official `SAM2ImagePredictor`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch
from PIL.Image import Image

from sam2.modeling.sam2_base import SAM2Base
from sam2.utils.transforms import SAM2Transforms

logger = logging.getLogger(__name__)

ImageLike = np.ndarray | Image
# Low-resolution logits returned to callers are clamped to this range (they may be fed back as mask input).
_LOW_RES_LOGIT_LIMIT = 32.0


class SAM2ImagePredictor:
    """Wraps a `SAM2Base` for interactive image segmentation.

    On a CUDA device the image encoder and decoder run under bf16 autocast (`use_bf16`, default on where the
    GPU supports bf16); on the CPU everything stays fp32. Outputs are always fp32 numpy arrays.
    """

    def __init__(
        self,
        sam_model: SAM2Base,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        use_bf16: bool | None = None,
        **kwargs,
    ) -> None:
        """`mask_threshold`: logit above which a pixel is foreground. `max_hole_area` / `max_sprinkle_area`:
        fill background holes / remove foreground specks up to this many low-resolution pixels.
        `use_bf16`: autocast to bf16 on CUDA (None: when the GPU supports it; ignored on the CPU).
        Other keyword arguments are accepted and ignored, as by the official predictor."""
        if kwargs:
            logger.debug("SAM2ImagePredictor: ignoring keyword arguments %s", sorted(kwargs))
        self.model = sam_model
        self._transforms = SAM2Transforms(
            resolution=self.model.image_size,
            mask_threshold=mask_threshold,
            max_hole_area=max_hole_area,
            max_sprinkle_area=max_sprinkle_area,
        )
        self.mask_threshold = mask_threshold
        self.use_bf16 = use_bf16
        self._is_image_set = False
        self._is_batch = False
        self._features: dict[str, torch.Tensor | list[torch.Tensor]] | None = None
        self._orig_hw: list[tuple[int, int]] | None = None

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs) -> SAM2ImagePredictor:
        """A predictor over an official release from the Hugging Face hub (e.g. "facebook/sam2.1-hiera-large",
        see `sam2.build_sam.build_sam2_hf`; HF_HUB_OFFLINE=1 uses the local cache). Keyword arguments of
        `build_sam2` (device, mode, ...) build the model, the others set up the predictor."""
        from sam2.build_sam import build_sam2, build_sam2_hf, split_builder_kwargs

        builder_kwargs, predictor_kwargs = split_builder_kwargs(build_sam2, kwargs)
        return cls(build_sam2_hf(model_id, **builder_kwargs), **predictor_kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        device = self.device
        wanted = self.use_bf16
        if wanted is None:
            wanted = device.type == "cuda" and torch.cuda.is_bf16_supported()
        if device.type == "cuda" and wanted:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield

    # ---- image embedding ----------------------------------------------------------------------------

    @staticmethod
    def _image_hw(image: ImageLike) -> tuple[int, int]:
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"image must be an RGB array shaped [H, W, 3] (HWC), got shape {image.shape}"
                )
            return int(image.shape[0]), int(image.shape[1])
        if isinstance(image, Image):
            width, height = image.size
            return height, width
        raise TypeError(f"image must be a numpy array [H, W, 3] or a PIL image, got {type(image).__name__}")

    @torch.no_grad()
    def _embed(self, images: torch.Tensor) -> None:
        """Run the image encoder on [B, 3, S, S] and keep the decoder's inputs."""
        with self._autocast():
            backbone_out = self.model.forward_image(images.to(self.device))
            _, vision_feats, _, feat_sizes = self.model._prepare_backbone_features(backbone_out)
            if self.model.directly_add_no_mem_embed:
                # In training on images the coarsest level gets the "no memory" embedding; do the same.
                vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        batch = images.shape[0]
        maps = [
            feat.permute(1, 2, 0).reshape(batch, -1, *size)
            for feat, size in zip(vision_feats, feat_sizes, strict=True)
        ]
        self._features = {"image_embed": maps[-1], "high_res_feats": maps[:-1]}
        self._is_image_set = True

    def set_image(self, image: ImageLike) -> None:
        """Embed one RGB image (uint8 numpy [H, W, 3] or PIL) for later `predict` calls."""
        self.reset_predictor()
        hw = self._image_hw(image)
        self._orig_hw = [hw]
        logger.debug("embedding an image of size %s", hw)
        self._embed(self._transforms(image)[None])

    def set_image_batch(self, image_list: list[np.ndarray]) -> None:
        """Embed several RGB images (uint8 numpy [H, W, 3], sizes may differ) for `predict_batch`."""
        self.reset_predictor()
        if not isinstance(image_list, list) or not image_list:
            raise ValueError("set_image_batch expects a non-empty list of RGB numpy arrays [H, W, 3]")
        self._orig_hw = [self._image_hw(image) for image in image_list]
        self._embed(self._transforms.forward_batch(image_list))
        self._is_batch = True

    def get_image_embedding(self) -> torch.Tensor:
        """The embedding of the image(s) set, [B, C, h, w] (C=256, h=w=image_size/16)."""
        if not self._is_image_set or self._features is None:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return self._features["image_embed"]

    def reset_predictor(self) -> None:
        """Forget the image(s) set."""
        self._is_image_set = False
        self._is_batch = False
        self._features = None
        self._orig_hw = None

    # ---- prediction ---------------------------------------------------------------------------------

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the image set with `set_image`.

        point_coords [N, 2] or [B, N, 2] (x, y) with point_labels [N] / [B, N] (1 foreground, 0 background);
        box [4] or [B, 4] XYXY; mask_input [1, 256, 256] or [B, 1, 256, 256] low-resolution logits from an
        earlier call. Coordinates are pixels of the original image when `normalize_coords`, otherwise
        already in [0, 1]. Returns (masks [(B,) M, H, W] bool, or logits with `return_logits`;
        IoU scores [(B,) M]; low-resolution logits [(B,) M, 256, 256]), M = 3 with `multimask_output`.
        """
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        prompts = self._prep_prompts(point_coords, point_labels, box, mask_input, normalize_coords, img_idx=0)
        masks, scores, low_res = self._predict(
            *prompts, multimask_output, return_logits=return_logits, img_idx=0
        )
        return self._to_numpy(masks), self._to_numpy(scores), self._to_numpy(low_res)

    def predict_batch(
        self,
        point_coords_batch: list[np.ndarray] | None = None,
        point_labels_batch: list[np.ndarray] | None = None,
        box_batch: list[np.ndarray] | None = None,
        mask_input_batch: list[np.ndarray] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """`predict` for each image set with `set_image_batch`; the i-th entry of each prompt list belongs
        to the i-th image. Returns lists (one entry per image) of masks, IoU scores and low-res logits."""
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image_batch(...) before mask prediction.")
        if not self._is_batch:
            raise RuntimeError(
                "predict_batch needs images set with .set_image_batch(...); use predict instead"
            )
        num_images = len(self._orig_hw or [])
        for name, values in (
            ("point_coords_batch", point_coords_batch),
            ("point_labels_batch", point_labels_batch),
            ("box_batch", box_batch),
            ("mask_input_batch", mask_input_batch),
        ):
            if values is not None and len(values) != num_images:
                raise ValueError(f"{name} has {len(values)} entries for {num_images} images")

        def pick(values: list[np.ndarray] | None, idx: int) -> np.ndarray | None:
            return None if values is None else values[idx]

        all_masks, all_scores, all_low_res = [], [], []
        for idx in range(num_images):
            prompts = self._prep_prompts(
                pick(point_coords_batch, idx),
                pick(point_labels_batch, idx),
                pick(box_batch, idx),
                pick(mask_input_batch, idx),
                normalize_coords,
                img_idx=idx,
            )
            masks, scores, low_res = self._predict(
                *prompts, multimask_output, return_logits=return_logits, img_idx=idx
            )
            all_masks.append(self._to_numpy(masks))
            all_scores.append(self._to_numpy(scores))
            all_low_res.append(self._to_numpy(low_res))
        return all_masks, all_scores, all_low_res

    @staticmethod
    def _to_numpy(x: torch.Tensor) -> np.ndarray:
        return x.squeeze(0).float().detach().cpu().numpy()

    def _prep_prompts(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_logits: np.ndarray | None,
        normalize_coords: bool,
        img_idx: int = -1,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """User prompts -> (points [B, N, 2], labels [B, N], boxes [B, 2, 2], mask input [B, 1, h, w]) as
        tensors in the model's input frame."""
        orig_hw = self._orig_hw[img_idx]
        coords = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            coords = torch.as_tensor(point_coords, dtype=torch.float, device=self.device)
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)
            if coords.shape[-1] != 2 or coords.shape[:-1] != labels.shape or coords.ndim not in (2, 3):
                raise ValueError(
                    f"point_coords must be [N, 2] or [B, N, 2] with point_labels [N] or [B, N]; got "
                    f"{tuple(coords.shape)} and {tuple(labels.shape)}"
                )
            coords = self._transforms.transform_coords(coords, normalize=normalize_coords, orig_hw=orig_hw)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        elif point_labels is not None:
            raise ValueError("point_labels were given without point_coords")
        if box is not None:
            box_t = torch.as_tensor(box, dtype=torch.float, device=self.device)
            if box_t.shape[-1] != 4 or box_t.ndim not in (1, 2):
                raise ValueError(f"box must be [4] or [B, 4] in XYXY format, got shape {tuple(box_t.shape)}")
            boxes = self._transforms.transform_boxes(box_t, normalize=normalize_coords, orig_hw=orig_hw)
        if mask_logits is not None:
            masks = torch.as_tensor(mask_logits, dtype=torch.float, device=self.device)
            if masks.ndim == 3:
                masks = masks[None]
            expected = tuple(self.model.sam_prompt_encoder.mask_input_size)
            if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[-2:]) != expected:
                raise ValueError(
                    f"mask_input must be low-resolution logits shaped [1, {expected[0]}, {expected[1]}] or "
                    f"[B, 1, {expected[0]}, {expected[1]}] (e.g. the third output of an earlier predict), "
                    f"got {tuple(np.shape(mask_logits))}"
                )
        return coords, labels, boxes, masks

    @torch.no_grad()
    def _predict(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        img_idx: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for prompts already in the model's input frame (see `_prep_prompts`).

        Returns (masks [B, M, H, W], IoU scores [B, M], clamped low-res logits [B, M, h, w]).
        """
        if not self._is_image_set or self._features is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        points = None if point_coords is None else (point_coords, point_labels)
        if boxes is not None:
            # A box is two labelled corner points placed before any clicks.
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(
                corners.shape[0], 1
            )
            if points is not None:
                if points[0].shape[0] != corners.shape[0]:
                    raise ValueError(
                        f"{corners.shape[0]} boxes but {points[0].shape[0]} sets of points; give one box per "
                        "point set"
                    )
                points = (
                    torch.cat([corners, points[0]], dim=1),
                    torch.cat([corner_labels, points[1]], dim=1),
                )
            else:
                points = (corners, corner_labels)

        image_embed = self._features["image_embed"][img_idx].unsqueeze(0)
        high_res = [level[img_idx].unsqueeze(0) for level in self._features["high_res_feats"]]
        with self._autocast():
            sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
            low_res_masks, iou_predictions, _, _ = self.model.sam_mask_decoder(
                image_embeddings=image_embed,
                image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
                repeat_image=sparse.shape[0] > 1,
                high_res_features=high_res,
            )
        masks = self._transforms.postprocess_masks(low_res_masks, self._orig_hw[img_idx])
        low_res_masks = torch.clamp(low_res_masks.float(), -_LOW_RES_LOGIT_LIMIT, _LOW_RES_LOGIT_LIMIT)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou_predictions.float(), low_res_masks
