"""The mixed training loader: per-data-set batches, probabilities, phases, identical choices on all ranks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from sam2.training.dataset.errors import DatasetError
from sam2.training.dataset.sam2_datasets import TorchTrainMixedDataset
from sam2.training.dataset.utils import ConcatDataset, RepeatFactorWrapper


class Tagged(Dataset):
    """Items are (tag, index) so a batch tells which data set and samples it holds."""

    def __init__(self, tag: str, size: int, repeat: float = 1.0):
        self.tag = tag
        self.size = size
        self.repeat_factors = torch.full((size,), repeat)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> tuple[str, int]:
        return self.tag, int(idx)


def keep_list(batch):
    return batch


def summarise(loader) -> list[tuple[str, list[int]]]:
    """Per step: the data set it came from and its sample indices."""
    steps = []
    for batch in loader:
        tags = {tag for tag, _ in batch}
        assert len(tags) == 1, "a batch mixes data sets"
        steps.append((tags.pop(), [i for _, i in batch]))
    return steps


def build(datasets, batch_sizes, **kwargs) -> TorchTrainMixedDataset:
    options = {"num_workers": 0, "shuffle": True, "pin_memory": False, "drop_last": True}
    options.update(kwargs)
    return TorchTrainMixedDataset(datasets, batch_sizes, collate_fn=keep_list, **options)


def _rank_main(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        mixed = build([Tagged("video", 40), Tagged("image", 30)], [2, 3], dataset_prob=[0.6, 0.4])
        record = {epoch: summarise(mixed.get_loader(epoch)) for epoch in (0, 1)}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_two_ranks_choose_the_same_data_set_each_step_and_split_samples(tmp_path):
    # fork: the ranks share the parent's imports (a spawn re-imports torch in each, seconds on a busy box)
    mp.start_processes(
        _rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        steps0, steps1 = ranks[0][epoch], ranks[1][epoch]
        assert [tag for tag, _ in steps0] == [tag for tag, _ in steps1]
        assert Counter(tag for tag, _ in steps0) == {"video": 10, "image": 5}  # whole epoch, 2 ranks
        for tag, size in (("video", 40), ("image", 30)):
            seen0 = [i for t, ids in steps0 if t == tag for i in ids]
            seen1 = [i for t, ids in steps1 if t == tag for i in ids]
            assert not set(seen0) & set(seen1)  # each rank its own share
            assert sorted(seen0 + seen1) == list(range(size))
    assert [t for t, _ in ranks[0]["0"]] != [t for t, _ in ranks[0]["1"]]  # the draw depends on the epoch


def test_dataset_prob_is_respected():
    mixed = build([Tagged("a", 3000), Tagged("b", 3000)], [1, 1], dataset_prob=[0.8, 0.2])
    loader = iter(mixed.get_loader(epoch=0))
    picks = Counter(next(loader)[0][0] for _ in range(500))
    assert 360 <= picks["a"] <= 440  # 400 expected, +-4.5 standard deviations


def test_default_probabilities_follow_batch_counts_and_cover_the_epoch():
    mixed = build([Tagged("a", 60), Tagged("b", 20)], [2, 2])
    assert torch.allclose(mixed.dataset_prob, torch.tensor([0.75, 0.25], dtype=torch.float64))
    loader = mixed.get_loader(epoch=3)
    steps = summarise(loader)
    assert len(steps) == len(loader) == 40
    for tag, size in (("a", 60), ("b", 20)):
        assert sorted(i for t, ids in steps if t == tag for i in ids) == list(range(size))
    assert steps == summarise(mixed.get_loader(epoch=3))  # a resumed epoch replays the same order


def test_phases_split_a_data_epoch_into_disjoint_parts():
    mixed = build([Tagged("a", 24)], [2], phases_per_epoch=2)
    phase0 = {i for _, ids in summarise(mixed.get_loader(0)) for i in ids}
    phase1 = {i for _, ids in summarise(mixed.get_loader(1)) for i in ids}
    assert len(phase0) == len(phase1) == 12 and phase0 | phase1 == set(range(24))
    next_epoch = {i for _, ids in summarise(mixed.get_loader(2)) for i in ids}
    assert next_epoch != phase0  # a new permutation for data epoch 1


def test_too_small_data_set_and_bad_probabilities_are_clear_errors():
    with pytest.raises(DatasetError, match="full batch"):
        build([Tagged("a", 3)], [4])
    mixed = build([Tagged("a", 3), Tagged("b", 40)], [4, 4], dataset_prob=[0.5, 0.5])
    with pytest.raises(DatasetError, match=r"data set 0 .* 3 samples .*not one batch of 4"):
        mixed.get_loader(0)
    with pytest.raises(ValueError, match="sum to 1"):
        build([Tagged("a", 8), Tagged("b", 8)], [1, 1], dataset_prob=[0.5, 0.6])
    with pytest.raises(ValueError, match="batch_sizes"):
        build([Tagged("a", 8), Tagged("b", 8)], [1])


def test_repeat_factor_wrapper_repeats_videos_by_multiplier():
    concat = ConcatDataset([Tagged("a", 3, repeat=2.0), Tagged("b", 2, repeat=1.0)])
    wrapped = RepeatFactorWrapper(concat)
    with pytest.raises(RuntimeError, match="set_epoch"):
        len(wrapped)
    wrapped.set_epoch(0)
    items = Counter(wrapped[i] for i in range(len(wrapped)))
    assert items == {("a", 0): 2, ("a", 1): 2, ("a", 2): 2, ("b", 0): 1, ("b", 1): 1}
    fractional = RepeatFactorWrapper(Tagged("c", 1000, repeat=1.5))
    fractional.set_epoch(0)
    assert 1400 <= len(fractional) <= 1600
    mixed = build([RepeatFactorWrapper(Tagged("a", 10, repeat=2.0))], [4])
    assert len(summarise(mixed.get_loader(0))) == 5
