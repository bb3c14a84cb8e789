"""Inference split over N shards (one pod and GPU each) and merged back into one prediction set per model.

Each shard takes a round-robin share of the sorted val videos
(:func:`sam2.utils.sharding.round_robin_shard`), writes its masks into the run's ``predictions/<model>/`` folder without publishing it, and records what it wrote in a
:class:`ShardReport` (its videos, each model's file listing, the models it could not score). The merge
(:func:`merge_shard_reports`) accepts the reports only when they are one complete set (shards ``0..N-1``
of the same N, each once) and every val video was predicted exactly once, with files, by every scored
model; then each model's folder is published with one marker listing every shard's files. A lost or
duplicated video or shard fails the merge naming it, so evaluation never scores a partial set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

REPORTS_DIR = "_shards"
"""Folder under the run's predictions/ where each shard's report is stored."""


class ShardMergeError(ValueError):
    """The shard reports do not cover the val videos exactly once; the message names what is wrong."""


def plan_shards(requested: int, num_videos: int) -> int:
    """How many shards to run: `requested`, at most one per video, at least one."""
    if requested < 1:
        raise ValueError(f"infer_shards must be >= 1, got {requested}")
    return max(1, min(requested, num_videos))


def report_name(index: int, count: int) -> str:
    """File name of a shard's report under predictions/_shards/."""
    return f"{index:04d}-of-{count:04d}.json"


@dataclass
class ShardReport:
    """What one inference shard wrote. `models`: model key -> its entry (label, checkpoint, ...) and the
    listing of its files (`{rel: {"size", "sha256"}}`, relative to predictions/<key>/); `skipped`:
    model key -> why it was not scored in this shard."""

    index: int
    count: int
    videos: list[str]
    models: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "count": self.count,
            "videos": list(self.videos),
            "models": self.models,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ShardReport:
        return cls(
            int(data["index"]),
            int(data["count"]),
            list(data["videos"]),
            dict(data.get("models", {})),
            dict(data.get("skipped", {})),
        )


@dataclass
class MergedPredictions:
    """The merge's result: per scored model its entry and full listing, and the models skipped (why)."""

    entries: dict[str, dict]
    listings: dict[str, dict[str, dict]]
    skipped: dict[str, str]


def _names(items: Sequence[str], limit: int = 10) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f" … ({len(items) - limit} more)" if len(items) > limit else "")


def merge_shard_reports(val_videos: Sequence[str], reports: Sequence[ShardReport]) -> MergedPredictions:
    """Check that `reports` are one complete shard set that predicted every val video exactly once, and
    combine them.

    Raises:
        ShardMergeError: naming the shards missing or repeated, the val videos no shard predicted, those
            predicted twice (and by which shards), videos not in the val list, or a scored model with no
            files for a video its shard claims.
    """
    if not reports:
        raise ShardMergeError("no inference shard reported; nothing to merge")
    counts = sorted({r.count for r in reports})
    if len(counts) != 1:
        raise ShardMergeError(f"the shards disagree on how many there are: {counts}")
    count = counts[0]
    seen_index: dict[int, int] = {}
    for report in reports:
        seen_index[report.index] = seen_index.get(report.index, 0) + 1
    problems = []
    missing_shards = [i for i in range(count) if i not in seen_index]
    if missing_shards:
        problems.append(f"shard(s) {_names([str(i) for i in missing_shards])} of {count} did not report")
    repeated = sorted(i for i, n in seen_index.items() if n > 1)
    if repeated:
        problems.append(f"shard(s) {_names([str(i) for i in repeated])} reported more than once")

    where: dict[str, list[int]] = {}
    for report in reports:
        for video in report.videos:
            where.setdefault(video, []).append(report.index)
    val = sorted(set(val_videos))
    lost = [v for v in val if v not in where]
    if lost:
        problems.append(f"{len(lost)} val video(s) predicted by no shard: {_names(lost)}")
    twice = [
        f"{v} (shards {', '.join(map(str, sorted(where[v])))})" for v in val if len(where.get(v, [])) > 1
    ]
    if twice:
        problems.append(f"{len(twice)} val video(s) predicted more than once: {_names(twice)}")
    extra = sorted(set(where) - set(val))
    if extra:
        problems.append(f"{len(extra)} predicted video(s) are not in the val list: {_names(extra)}")

    skipped: dict[str, str] = {}
    for report in sorted(reports, key=lambda r: r.index):
        for key, why in report.skipped.items():
            skipped.setdefault(key, f"shard {report.index} of {count}: {why}")
    keys = sorted({key for report in reports for key in report.models} - set(skipped))
    entries: dict[str, dict] = {}
    listings: dict[str, dict[str, dict]] = {}
    for key in keys:
        listing: dict[str, dict] = {}
        for report in reports:
            model = report.models.get(key)
            if model is None:
                skipped[key] = f"shard {report.index} of {count} did not score it"
                break
            entries.setdefault(key, model["entry"])
            files = model["files"]
            with_files = {rel.split("/", 1)[0] for rel in files}
            empty = [v for v in report.videos if v not in with_files]
            if empty:
                problems.append(
                    f"model {key!r}: shard {report.index} lists video(s) it wrote no masks for: {_names(empty)}"
                )
            listing.update(files)
        else:
            listings[key] = listing
    for key in list(entries):
        if key not in listings:
            entries.pop(key)
    if problems:
        raise ShardMergeError("the inference shards are not one complete set: " + "; ".join(problems))
    return MergedPredictions(entries, listings, skipped)
