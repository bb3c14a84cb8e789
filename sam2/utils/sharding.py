"""Round-robin sharding: how parallel inference workers and pipeline shards split a list of videos so
that every video lands in exactly one shard and shards differ in size by at most one."""

from __future__ import annotations

from collections.abc import Iterable


def round_robin_shard(items: Iterable[str], index: int, count: int) -> list[str]:
    """Shard ``index`` of ``count``: every ``count``-th item of the sorted list, starting at ``index``.

    Sorting first makes the split independent of the order the caller listed the items in, so separate
    processes agree on it. Raises ``ValueError`` when ``index`` is not in ``0..count-1``."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in 0..{count - 1}")
    return sorted(items)[index::count]
