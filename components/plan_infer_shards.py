"""Pipeline step: how many inference shards to run (the ParallelFor's items), from the val set's size."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.images import component_image


class ShardPlan(NamedTuple):
    indices: list[int]
    count: int


@dsl.component(base_image=component_image(), install_kfp_package=False)
def plan_infer_shards(splits: Input[Dataset], infer_shards: int = 1) -> ShardPlan:
    """Run `infer_shards` shards (one GPU each), at most one per val video; returns their indices (the
    ParallelFor's items) and how many there are (every shard's `num_shards`)."""
    from components.plan_infer_shards import ShardPlan
    from sam2.eval.inference_shards import plan_shards

    count = plan_shards(infer_shards, int(splits.metadata["num_val"]))
    return ShardPlan(list(range(count)), count)
