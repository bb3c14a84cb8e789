"""Data set wrappers that carry per-sample repeat factors (how often a video is seen per epoch)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.utils.data import ConcatDataset as TorchConcatDataset
from torch.utils.data import Dataset
from torch.utils.data import Subset as TorchSubset


def set_dataset_epoch(dataset, epoch: int) -> None:
    """Tell a data set (and what it wraps) the epoch, for epoch-dependent sampling or repeats."""
    if hasattr(dataset, "epoch"):
        dataset.epoch = epoch
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


class ConcatDataset(TorchConcatDataset):
    """Concatenation that keeps the members' repeat factors, in the same order."""

    def __init__(self, datasets: Iterable[Dataset]) -> None:
        super().__init__(datasets)
        self.repeat_factors = torch.cat([d.repeat_factors for d in self.datasets])

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            set_dataset_epoch(dataset, epoch)


class Subset(TorchSubset):
    """Subset that keeps the repeat factors of the chosen indices."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, indices)
        self.repeat_factors = dataset.repeat_factors[torch.as_tensor(indices, dtype=torch.long)]


class RepeatFactorWrapper(Dataset):
    """Repeat each sample floor(r) times plus once more with probability frac(r) per epoch.

    The fractional part is rounded stochastically with a generator seeded by seed + epoch, so every rank
    builds the same epoch list. The length changes per epoch: call `set_epoch` before `len`.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self._seed = seed
        self.epoch_ids: torch.Tensor | None = None
        factors = dataset.repeat_factors
        self._whole = torch.floor(factors)
        self._fraction = factors - self._whole

    def _epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        extra = (torch.rand(len(self._fraction), generator=generator) < self._fraction).float()
        counts = (self._whole + extra).to(torch.long)
        return torch.repeat_interleave(torch.arange(len(counts)), counts)

    def set_epoch(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed(self._seed + epoch)
        self.epoch_ids = self._epoch_indices(generator)
        set_dataset_epoch(self.dataset, epoch)

    def __len__(self) -> int:
        if self.epoch_ids is None:
            raise RuntimeError("RepeatFactorWrapper: call set_epoch(epoch) before len() or indexing")
        return len(self.epoch_ids)

    def __getitem__(self, idx: int):
        if self.epoch_ids is None:
            raise RuntimeError("RepeatFactorWrapper: call set_epoch(epoch) before len() or indexing")
        return self.dataset[int(self.epoch_ids[idx])]
