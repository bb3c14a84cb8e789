"""The training loader over several data sets (e.g. video clips and SA-1B images).

Each data set gets its own DataLoader (own batch size, DistributedSampler share of the samples); each
step draws which loader to read from. The draw uses a generator seeded by the epoch alone, so every rank
picks the same data set at the same step and DDP ranks never wait on batches of different kinds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, Subset
from torch.utils.data.distributed import DistributedSampler

from sam2.training.dataset.errors import DatasetError
from sam2.training.dataset.utils import set_dataset_epoch

logger = logging.getLogger(__name__)

# Offset of the data-set choice seed, so it does not replay the shuffling generators (seeded by epoch).
_MIX_SEED = 7919


def _world() -> tuple[int, int]:
    """(world size, rank) of the default process group, (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class MixedDataLoader:
    """Iterates several loaders, picking the next one by `mixing_prob`; an exhausted loader drops out."""

    def __init__(self, dataloaders: Sequence[DataLoader], mixing_prob: torch.Tensor, seed: int):
        if len(dataloaders) != len(mixing_prob):
            raise ValueError(f"{len(dataloaders)} loaders but {len(mixing_prob)} mixing probabilities")
        self.dataloaders = list(dataloaders)
        self.mixing_prob = mixing_prob
        self.seed = seed

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.dataloaders)

    def __iter__(self) -> Iterator:
        generator = torch.Generator().manual_seed(self.seed)
        iterators = [iter(loader) for loader in self.dataloaders]
        prob = self.mixing_prob.clone().double()
        while prob.any():
            choice = int(torch.multinomial(prob, 1, generator=generator).item())
            try:
                yield next(iterators[choice])
            except StopIteration:
                prob[choice] = 0.0


class TorchTrainMixedDataset:
    """Builds, per epoch, one loader that mixes `datasets` with per-data-set `batch_sizes`.

    dataset_prob: probability of drawing each data set at a step (summing to 1); by default proportional
        to its number of batches, so an epoch visits every batch once.
    phases_per_epoch: split each data set's epoch into this many phases (a "trainer epoch" is one
        phase); the split is a permutation seeded by the data epoch, identical on every rank.
    Raises DatasetError when a data set is too small to form a single batch on every rank.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        batch_sizes: Sequence[int],
        num_workers: int,
        shuffle: bool,
        pin_memory: bool,
        drop_last: bool,
        collate_fn: Callable | None = None,
        worker_init_fn: Callable | None = None,
        phases_per_epoch: int = 1,
        dataset_prob: Sequence[float] | None = None,
    ) -> None:
        if not datasets:
            raise ValueError("TorchTrainMixedDataset needs at least one data set")
        if len(batch_sizes) != len(datasets):
            raise ValueError(f"{len(datasets)} data sets but {len(batch_sizes)} batch_sizes; give one each")
        if phases_per_epoch < 1:
            raise ValueError(f"phases_per_epoch must be >= 1, got {phases_per_epoch}")
        self.datasets = list(datasets)
        self.batch_sizes = [int(b) for b in batch_sizes]
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.collate_fn = collate_fn
        self.worker_init_fn = worker_init_fn
        self.phases_per_epoch = phases_per_epoch
        self._chunks: list[tuple[int, tuple[torch.Tensor, ...]] | None] = [None] * len(self.datasets)
        for dataset in self.datasets:
            if isinstance(dataset, IterableDataset):
                raise TypeError(
                    f"{type(dataset).__name__} is iterable-style; the mixed loader needs map-style"
                )
            set_dataset_epoch(dataset, 0)  # RepeatFactorWrapper needs an epoch before len()

        if dataset_prob is None:
            round_fn = math.floor if drop_last else math.ceil
            batches = [round_fn(len(d) / b) for d, b in zip(self.datasets, self.batch_sizes, strict=True)]
            if sum(batches) == 0:
                raise DatasetError(
                    f"no data set holds a full batch (sizes {[len(d) for d in self.datasets]})"
                )
            prob = torch.tensor([n / sum(batches) for n in batches], dtype=torch.float64)
        else:
            prob = torch.tensor(list(dataset_prob), dtype=torch.float64)
            if len(prob) != len(self.datasets):
                raise ValueError(f"{len(self.datasets)} data sets but {len(prob)} dataset_prob values")
            if (prob < 0).any() or not math.isclose(prob.sum().item(), 1.0, abs_tol=1e-6):
                raise ValueError(f"dataset_prob must be non-negative and sum to 1, got {prob.tolist()}")
        self.dataset_prob = prob
        logger.info("data set mixing probabilities: %s", [round(p, 4) for p in prob.tolist()])

    def _phase_dataset(self, d_idx: int, epoch: int) -> Dataset:
        """The data set, or this phase's share of it when an epoch is split into phases."""
        dataset = self.datasets[d_idx]
        if self.phases_per_epoch == 1:
            set_dataset_epoch(dataset, epoch)
            return dataset
        data_epoch, phase = divmod(epoch, self.phases_per_epoch)
        cached = self._chunks[d_idx]
        if cached is None or cached[0] != data_epoch:
            set_dataset_epoch(dataset, data_epoch)
            generator = torch.Generator().manual_seed(data_epoch)
            order = torch.randperm(len(dataset), generator=generator)
            self._chunks[d_idx] = (data_epoch, torch.chunk(order, self.phases_per_epoch))
        return Subset(dataset, self._chunks[d_idx][1][phase].tolist())

    def get_loader(self, epoch: int) -> MixedDataLoader:
        """The loader for trainer epoch `epoch`; the same epoch gives the same order on a restart."""
        world_size, rank = _world()
        loaders = []
        for d_idx, batch_size in enumerate(self.batch_sizes):
            dataset = self._phase_dataset(d_idx, epoch)
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=self.shuffle)
            sampler.set_epoch(epoch)
            batch_sampler = BatchSampler(sampler, batch_size, drop_last=self.drop_last)
            if len(batch_sampler) == 0 and self.dataset_prob[d_idx] > 0:
                raise DatasetError(
                    f"data set {d_idx} ({type(self.datasets[d_idx]).__name__}) gives {len(dataset)} samples "
                    f"this epoch, {len(sampler)} per rank on {world_size} rank(s): not one batch of "
                    f"{batch_size}; lower its batch size or phases_per_epoch, or add data"
                )
            loaders.append(
                DataLoader(
                    dataset,
                    batch_sampler=batch_sampler,
                    num_workers=self.num_workers,
                    pin_memory=self.pin_memory,
                    collate_fn=self.collate_fn,
                    worker_init_fn=self.worker_init_fn,
                    persistent_workers=False,
                )
            )
        return MixedDataLoader(loaders, self.dataset_prob, seed=_MIX_SEED + epoch)
