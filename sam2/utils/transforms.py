"""Input and output transforms of the image predictor: image -> normalised model input, prompt
coordinates -> model input frame, low-resolution mask logits -> original-size masks (with optional
removal of small holes and specks, done in pure torch so no compiled extension is needed)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL.Image import Image
from torch import nn

from sam2.utils.misc import get_connected_components

# ImageNet statistics the Hiera trunk was trained with.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
# Score given to pixels whose class the hole/speck clean-up flips (a margin of 10 around the threshold).
_FLIP_MARGIN = 10.0


class SAM2Transforms(nn.Module):
    """Transforms between user space (images, pixel coordinates, original sizes) and the model's square
    `resolution` x `resolution` input space."""

    def __init__(
        self,
        resolution: int,
        mask_threshold: float,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
    ) -> None:
        """`max_hole_area` / `max_sprinkle_area`: background holes / foreground specks of at most this many
        low-resolution pixels are flipped in `postprocess_masks` (0 disables)."""
        super().__init__()
        self.resolution = resolution
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self.mean = list(IMAGE_MEAN)
        self.std = list(IMAGE_STD)

    def _to_model_input(self, image: np.ndarray | Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            pixels = image.float()
        else:
            if isinstance(image, np.ndarray) and (image.ndim != 3 or image.shape[2] != 3):
                raise ValueError(f"image must be an RGB array shaped [H, W, 3], got shape {image.shape}")
            pixels = TF.to_tensor(image)  # [3, H, W] in [0, 1]
        if pixels.ndim != 3 or pixels.shape[0] != 3:
            raise ValueError(
                f"image tensor must be [3, H, W] with values in [0, 1], got {tuple(pixels.shape)}"
            )
        resized = TF.resize(pixels, [self.resolution, self.resolution], antialias=True)
        return TF.normalize(resized, self.mean, self.std)

    def __call__(self, image: np.ndarray | Image | torch.Tensor) -> torch.Tensor:
        """One RGB image (uint8 [H, W, 3] array, PIL image, or float [3, H, W] in [0, 1]) -> [3, S, S]."""
        return self._to_model_input(image)

    def forward_batch(self, img_list: list[np.ndarray | Image | torch.Tensor]) -> torch.Tensor:
        """A list of images (any sizes) -> [B, 3, S, S]."""
        return torch.stack([self._to_model_input(img) for img in img_list], dim=0)

    def transform_coords(
        self, coords: torch.Tensor, normalize: bool = False, orig_hw: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """[..., 2] (x, y) coordinates -> model input pixels. With `normalize`, `coords` are pixels of an
        image of size `orig_hw` (h, w); otherwise they are already normalised to [0, 1]."""
        if normalize:
            if orig_hw is None:
                raise ValueError("transform_coords(normalize=True) needs the original image size orig_hw")
            height, width = orig_hw
            coords = coords.clone()
            coords[..., 0] = coords[..., 0] / width
            coords[..., 1] = coords[..., 1] / height
        return coords * self.resolution

    def transform_boxes(
        self, boxes: torch.Tensor, normalize: bool = False, orig_hw: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """[B, 4] XYXY boxes -> [B, 2, 2] corner points in model input pixels (see `transform_coords`)."""
        return self.transform_coords(boxes.reshape(-1, 2, 2), normalize, orig_hw)

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-resolution logits [B, M, h, w] -> logits [B, M, H, W] at the original size, after filling
        small holes and removing small specks when enabled."""
        masks = masks.float()
        if self.max_hole_area > 0 or self.max_sprinkle_area > 0:
            as_images = masks.flatten(0, 1).unsqueeze(1)
            if self.max_hole_area > 0:
                labels, areas = get_connected_components(as_images <= self.mask_threshold)
                holes = ((labels > 0) & (areas <= self.max_hole_area)).reshape_as(masks)
                masks = torch.where(holes, self.mask_threshold + _FLIP_MARGIN, masks)
            if self.max_sprinkle_area > 0:
                # Components are found on the original logits (as the official post-processing does).
                labels, areas = get_connected_components(as_images > self.mask_threshold)
                specks = ((labels > 0) & (areas <= self.max_sprinkle_area)).reshape_as(masks)
                masks = torch.where(specks, self.mask_threshold - _FLIP_MARGIN, masks)
        return F.interpolate(masks, orig_hw, mode="bilinear", align_corners=False)
