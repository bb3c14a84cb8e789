"""The two connected-component labellings behind hole filling (scipy's on the CPU, the torch union-find
on CUDA) give identical labels and areas, so a mask is post-processed the same on either device."""

from __future__ import annotations

import pytest
import torch

from sam2.utils.misc import connected_components_torch, fill_holes_in_mask_scores, get_connected_components


def _serpentine(size: int) -> torch.Tensor:
    free = torch.zeros(size, size, dtype=torch.bool)
    free[::4, :] = True
    for row in range(0, size, 8):
        free[row : row + 4, -1] = True
        free[row + 4 : row + 8, 0] = True
    return free[None, None]


@pytest.mark.parametrize(
    "shape, density",
    [
        ((1, 1, 1, 1), 1.0),
        ((3, 1, 1, 17), 0.5),
        ((2, 1, 17, 1), 0.5),
        ((2, 1, 9, 9), 0.0),
        ((4, 1, 64, 48), 0.45),
        ((2, 1, 64, 64), 0.6),
        ((1, 1, 256, 256), 0.5),
    ],
)
def test_cpu_labelling_equals_the_torch_union_find(shape, density) -> None:
    gen = torch.Generator().manual_seed(int(density * 100) + shape[-1])
    masks = torch.rand(shape, generator=gen) < density
    labels, areas = get_connected_components(masks)
    ref_labels, ref_areas = connected_components_torch(masks)
    assert labels.dtype == areas.dtype == torch.int32 and labels.shape == masks.shape
    assert torch.equal(labels, ref_labels)
    assert torch.equal(areas, ref_areas)


def test_serpentine_is_one_component() -> None:
    mask = _serpentine(64)
    labels, areas = get_connected_components(mask)
    assert labels[mask].unique().tolist() == [1]  # its first pixel is (0, 0)
    assert (areas[mask] == int(mask.sum())).all()
    assert torch.equal(labels, connected_components_torch(mask)[0])


def test_hole_filling_is_the_same_through_either_labelling(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(5)
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    blob = 40.0 - ((yy - 64.0) ** 2 + (xx - 60.0) ** 2).sqrt()
    logits = (blob + 4.0 * torch.randn(2, 1, 128, 128, generator=gen)).contiguous()
    filled = fill_holes_in_mask_scores(logits, max_area=8)
    assert (filled != logits).any(), "the test mask has no small holes to fill"
    import sam2.utils.misc as misc

    monkeypatch.setattr(misc, "_connected_components_scipy", connected_components_torch)
    assert torch.equal(fill_holes_in_mask_scores(logits, max_area=8), filled)
