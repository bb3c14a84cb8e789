"""Prompt encoder: turns clicks, boxes and mask prompts into the sparse tokens and dense map the mask
decoder reads."""

from __future__ import annotations

import torch
from torch import nn

from sam2.modeling.position_encoding import PositionEmbeddingRandom
from sam2.modeling.sam2_utils import LayerNorm2d

# Point labels understood by the encoder: -1 padding, 0 negative click, 1 positive click,
# 2 box top-left corner, 3 box bottom-right corner.
_PAD_LABEL = -1


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    Points and box corners become tokens [B, N, embed_dim] (random Fourier position features plus a learned
    embedding per label); a low-resolution mask prompt [B, 1, 4*h, 4*w] becomes a dense map
    [B, embed_dim, h, w] (a learned "no mask" embedding when absent).
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # negative, positive, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Position encoding of the image-embedding grid, [1, embed_dim, h, w]."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centres
        if pad:
            # Without a box, a padding token keeps the token count the model was trained with.
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels.unsqueeze(-1)
        embedding = torch.where(
            labels == _PAD_LABEL, torch.zeros_like(embedding) + self.not_a_point_embed.weight, embedding
        )
        for label, label_embed in enumerate(self.point_embeddings):
            embedding = torch.where(labels == label, embedding + label_embed.weight, embedding)
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embeds = torch.stack([self.point_embeddings[2].weight[0], self.point_embeddings[3].weight[0]])
        return embedding + corner_embeds

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        if tuple(masks.shape[-2:]) != self.mask_input_size:
            raise ValueError(
                f"mask prompt must be [B, 1, {self.mask_input_size[0]}, {self.mask_input_size[1]}] "
                f"(low-resolution logits, 4x the image embedding), got {tuple(masks.shape)}"
            )
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def _get_device(self) -> torch.device:
        return self.point_embeddings[0].weight.device

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points: (coords [B, N, 2] in input-image pixels, labels [B, N]); boxes [B, 4] XYXY;
        masks [B, 1, 4h, 4w]. Returns (sparse [B, N', embed_dim], dense [B, embed_dim, h, w])."""
        batch = self._batch_size(points, boxes, masks)
        tokens = [torch.empty((batch, 0, self.embed_dim), device=self._get_device())]
        if points is not None:
            coords, labels = points
            tokens.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        sparse = torch.cat(tokens, dim=1)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        return sparse, dense
