"""Pipeline step: the inference shards to run (the ParallelFor's items), from the val set's size."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def plan_infer_shards(splits: Input[Dataset], infer_shards: int = 1) -> list[int]:
    """The indices of the shards to run: `infer_shards` of them (one GPU each), at most one per val video
    (sam2.eval.inference_shards.plan_shards, which each shard applies too, to know the count).

    A single output on purpose: kfp.local 2.17.0 cannot iterate over one key of a NamedTuple output
    ("Parent pipeline input argument 'pipelinechannel--...' not found"); `.output` works there and on KFP.

    Args:
        splits: split_dataset's output, for the number of val videos.
        infer_shards: The requested number of inference shards.

    Returns:
        The shard indices 0..n-1, the ParallelFor's items.
    """
    from sam2.contracts import DataSplits
    from sam2.eval.inference_shards import plan_shards

    return list(range(plan_shards(infer_shards, DataSplits.from_metadata(splits.metadata).num_val)))
