"""Automatic ("segment everything") mask generation: prompt SAM 2 with a grid of single clicks over the
image (and, optionally, over overlapping crops of it), keep the confident and stable masks, and remove
duplicates by box non-maximum suppression.

Same constructor arguments, defaults and output records as the official `SAM2AutomaticMaskGenerator`,
and the same masks on the same weights (tests/test_automatic_mask_generator.py compares the two).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms, box_area

from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.utils.amg import (
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)

logger = logging.getLogger(__name__)

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept by box NMS over all boxes as one category, best score first."""
    categories = torch.zeros_like(boxes[:, 0])
    return batched_nms(boxes.float(), scores, categories, iou_threshold=iou_threshold)


class SAM2AutomaticMaskGenerator:
    """Masks for everything in an image from a SAM 2 model, without prompts.

    Each record of `generate` holds `segmentation` (bool [H, W], or an RLE dict per `output_mode`),
    `area`, `bbox` (XYWH), `predicted_iou`, `point_coords` (the click that made it), `stability_score`
    and `crop_box` (XYWH). The defaults are the official ones, tuned for the Hiera-L model.
    """

    def __init__(
        self,
        model: SAM2Base,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        **kwargs: Any,
    ) -> None:
        """Settings (official names and meanings):

        - points_per_side: clicks per image side (points_per_side**2 in all) on layer 0; exactly one of it
          and `point_grids` (explicit [N, 2] grids in [0, 1], one per crop layer) must be given.
        - points_per_batch: clicks decoded at once (memory vs speed).
        - pred_iou_thresh / stability_score_thresh: drop masks whose predicted IoU is not above / whose
          stability score (IoU of the mask at mask_threshold +- stability_score_offset) is below these.
        - mask_threshold: logit cutoff of the masks.
        - box_nms_thresh: box IoU above which a lower-scoring mask of the same crop is a duplicate.
        - crop_n_layers: extra layers of crops (layer i has 2**i x 2**i crops) run after the whole image;
          crop_overlap_ratio sets their overlap, crop_n_points_downscale_factor thins their grids
          (points_per_side / factor**i), crop_nms_thresh removes duplicates across crops (smaller crops win).
        - min_mask_region_area: holes and specks up to this many low-resolution pixels are removed from
          the masks (the image predictor's max_hole_area / max_sprinkle_area).
        - output_mode: "binary_mask", "uncompressed_rle" or "coco_rle" (pycocotools' compressed RLE).
        - use_m2m: refine each kept mask once, feeding its low-resolution logits back with its click.
        - multimask_output: three masks per click (else one).

        Raises ValueError for a bad combination or an unknown `output_mode`; other keyword arguments are
        accepted and ignored, as in the official generator.
        """
        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "give exactly one of points_per_side and point_grids "
                f"(got points_per_side={points_per_side!r}, point_grids "
                f"{'given' if point_grids is not None else 'None'})"
            )
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {output_mode!r}")
        if points_per_side is not None:
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = list(point_grids)
        if len(self.point_grids) < crop_n_layers + 1:
            raise ValueError(
                f"point_grids holds {len(self.point_grids)} grids but crop_n_layers={crop_n_layers} needs "
                f"{crop_n_layers + 1} (one per layer, the whole image first)"
            )
        if kwargs:
            logger.debug("SAM2AutomaticMaskGenerator: ignoring keyword arguments %s", sorted(kwargs))

        self.predictor = SAM2ImagePredictor(
            model, max_hole_area=min_mask_region_area, max_sprinkle_area=min_mask_region_area
        )
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.mask_threshold = mask_threshold
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.use_m2m = use_m2m
        self.multimask_output = multimask_output

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs: Any) -> SAM2AutomaticMaskGenerator:
        """A generator over an official release from the Hugging Face hub (e.g. "facebook/sam2.1-hiera-large",
        see `sam2.build_sam.build_sam2_hf`). Keyword arguments of `build_sam2` (device, mode, ...) build
        the model; the others set up the generator."""
        from sam2.build_sam import build_sam2, build_sam2_hf, split_builder_kwargs

        builder_kwargs, generator_kwargs = split_builder_kwargs(build_sam2, kwargs)
        return cls(build_sam2_hf(model_id, **builder_kwargs), **generator_kwargs)

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Mask records (see the class docstring) for an RGB uint8 image [H, W, 3]."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = image.shape if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image must be an RGB numpy array shaped [H, W, 3] (HWC), got {shape}")
        data = self._generate_masks(image)
        if self.output_mode == "coco_rle":
            segmentations = [coco_encode_rle(rle) for rle in data["rles"]]
        elif self.output_mode == "binary_mask":
            segmentations = [rle_to_mask(rle) for rle in data["rles"]]
        else:
            segmentations = data["rles"]
        records = []
        for idx, segmentation in enumerate(segmentations):
            records.append(
                {
                    "segmentation": segmentation,
                    "area": area_from_rle(data["rles"][idx]),
                    "bbox": box_xyxy_to_xywh(data["boxes"][idx]).tolist(),
                    "predicted_iou": data["iou_preds"][idx].item(),
                    "point_coords": [data["points"][idx].tolist()],
                    "stability_score": data["stability_score"][idx].item(),
                    "crop_box": box_xyxy_to_xywh(data["crop_boxes"][idx]).tolist(),
                }
            )
        return records

    def _generate_masks(self, image: np.ndarray) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData()
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs, strict=True):
            data.cat(self._process_crop(image, crop_box, layer_idx, orig_size))
        if len(crop_boxes) > 1 and len(data["rles"]) > 0:
            # The same object found in several crops: keep the mask from the smallest crop.
            crop_scores = 1 / box_area(data["crop_boxes"])
            data.filter(_nms(data["boxes"], crop_scores.to(data["boxes"].device), self.crop_nms_thresh))
        data.to_numpy()
        return data

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], crop_layer_idx: int, orig_size: tuple[int, ...]
    ) -> MaskData:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        self.predictor.set_image(crop)
        # Grid points are (x, y) in [0, 1]; scale them by the crop's (width, height).
        points = self.point_grids[crop_layer_idx] * np.array(crop_size)[None, ::-1]
        data = MaskData()
        for (batch_points,) in batch_iterator(self.points_per_batch, points):
            data.cat(self._process_batch(batch_points, crop_size, crop_box, orig_size, normalize=True))
        self.predictor.reset_predictor()

        if "rles" not in dict(data.items()):
            # No batches at all (an empty point grid).
            data = MaskData(
                rles=[],
                boxes=torch.zeros(0, 4, dtype=torch.int64),
                iou_preds=torch.zeros(0),
                points=torch.zeros(0, 2),
                stability_score=torch.zeros(0),
            )
        data.filter(_nms(data["boxes"], data["iou_preds"], self.box_nms_thresh))
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box] * len(data["rles"]), dtype=torch.int64).reshape(-1, 4)
        return data

    def _process_batch(
        self,
        points: np.ndarray,
        im_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
        normalize: bool = False,
    ) -> MaskData:
        orig_h, orig_w = orig_size
        points_t = torch.as_tensor(points, dtype=torch.float32, device=self.predictor.device)
        in_points = self.predictor._transforms.transform_coords(
            points_t, normalize=normalize, orig_hw=im_size
        )
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        masks, iou_preds, low_res_masks = self.predictor._predict(
            in_points[:, None, :],
            in_labels[:, None],
            multimask_output=self.multimask_output,
            return_logits=True,
        )
        masks_per_point = masks.shape[1]
        data = MaskData(
            masks=masks.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=points_t.repeat_interleave(masks_per_point, dim=0),
            low_res_masks=low_res_masks.flatten(0, 1),
        )
        del masks

        if self.use_m2m:
            # Feed each mask's low-resolution logits back with its click for one refinement step.
            refine_points = self.predictor._transforms.transform_coords(
                data["points"], normalize=normalize, orig_hw=im_size
            )
            refine_labels = torch.ones(refine_points.shape[0], dtype=torch.int, device=refine_points.device)
            refined, refined_ious = self.refine_with_m2m(
                refine_points, refine_labels, data["low_res_masks"], self.points_per_batch
            )
            data["masks"] = refined.squeeze(1)
            data["iou_preds"] = refined_ious.squeeze(1)

        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        data["stability_score"] = calculate_stability_score(
            data["masks"], self.mask_threshold, self.stability_score_offset
        )
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)

        data["masks"] = data["masks"] > self.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        # Masks cut by a crop's inner edge are left to the crops (or the whole image) that hold them.
        at_crop_edge = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if at_crop_edge.any():
            data.filter(~at_crop_edge)

        data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
        data["rles"] = mask_to_rle_pytorch(data["masks"])
        del data["masks"]
        del data["low_res_masks"]
        return data

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """Fill holes and drop islands smaller than `min_area` pixels in every mask of `mask_data` (with
        `rles` and `boxes` columns), then rerun box NMS preferring the masks that needed no change.
        Edits and returns `mask_data`. (Not called by `generate`, as in the official generator.)"""
        if len(mask_data["rles"]) == 0:
            return mask_data
        cleaned, untouched = [], []
        for rle in mask_data["rles"]:
            mask, holes_changed = remove_small_regions(rle_to_mask(rle), min_area, mode="holes")
            mask, islands_changed = remove_small_regions(mask, min_area, mode="islands")
            cleaned.append(torch.as_tensor(mask))
            untouched.append(float(not (holes_changed or islands_changed)))
        masks = torch.stack(cleaned)
        boxes = batched_mask_to_box(masks)
        keep = _nms(boxes, torch.as_tensor(untouched), nms_thresh)
        for idx in keep.tolist():
            if untouched[idx] == 0.0:
                mask_data["rles"][idx] = mask_to_rle_pytorch(masks[idx][None])[0]
                mask_data["boxes"][idx] = boxes[idx]
        mask_data.filter(keep)
        return mask_data

    def refine_with_m2m(
        self,
        points: torch.Tensor,
        point_labels: torch.Tensor,
        low_res_masks: torch.Tensor,
        points_per_batch: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask per click [N, 1, H, W] (logits) and its IoU score [N, 1], decoded from the click
        (model input frame) with its previous low-resolution logits [N, h, w] as the mask prompt."""
        masks, ious = [], []
        for batch_points, batch_labels, batch_low_res in batch_iterator(
            points_per_batch, points, point_labels, low_res_masks
        ):
            best, best_iou, _ = self.predictor._predict(
                batch_points[:, None, :],
                batch_labels[:, None],
                mask_input=batch_low_res[:, None, :],
                multimask_output=False,
                return_logits=True,
            )
            masks.append(best)
            ious.append(best_iou)
        return torch.cat(masks, dim=0), torch.cat(ious, dim=0)
