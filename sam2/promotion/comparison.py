"""The models a pipeline run scores side by side (the new one, the current champion, the baseline) and
the comparison of their scores that promotion decides on.

Promotion compares like with like: the new checkpoint and the data set's current champion are both run
on this run's val videos with this run's inference settings (sam2.promotion.references picks them), and
the initial checkpoint is scored too (the zero-shot baseline), so the report says whether fine-tuning
helped. `comparison_summary` is the JSON evaluate writes; `head_to_head` and `comparison_lines` read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sam2.promotion.rules import HeadToHead

NEW = "new"
CHAMPION = "champion"
BASELINE = "baseline"
KEYS = (NEW, CHAMPION, BASELINE)
SCORES = ("J&F", "J", "F")


@dataclass(frozen=True)
class ComparedModel:
    """One checkpoint to run and score on the val videos; `key` is NEW, CHAMPION or BASELINE."""

    key: str
    checkpoint_uri: str
    model_config: str
    label: str
    version: str | None = None  # the registered version (the champion's)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComparedModel:
        return cls(**{k: data.get(k) for k in ("key", "checkpoint_uri", "model_config", "label", "version")})


def comparison_summary(
    scores: Mapping[str, Mapping[str, Any]],
    entries: Mapping[str, Mapping[str, Any]],
    skipped: Mapping[str, str],
    dataset_version: str,
    val_list_uri: str,
    videos: list[str],
    protocol: str,
    curves: Mapping[str, list[tuple[int, float]]] | None = None,
) -> dict[str, Any]:
    """The JSON promotion decides on: per model (key) its checkpoint, version, J&F/J/F and per-video J&F,
    all measured on `videos` of data set version `dataset_version`; plus why others were not scored.

    `scores`: key -> `EvaluationResult.to_dict()` (percent); `entries`: key -> ComparedModel dict.
    """
    if NEW not in scores:
        raise ValueError(f"no scores of the new model among {sorted(scores)}")
    models = {}
    for key, result in scores.items():
        entry = entries[key]
        models[key] = {
            "label": entry.get("label", key),
            "checkpoint_uri": entry["checkpoint_uri"],
            "version": entry.get("version"),
            **{k: float(result[k]) for k in SCORES},
            "per_video": {v: r["J&F"] for v, r in result["per_video"].items()},
        }
    return {
        "dataset_version": dataset_version,
        "val_list_uri": val_list_uri,
        "videos": list(videos),
        "protocol": protocol,
        "models": models,
        "skipped": {k: v for k, v in skipped.items() if k not in models},
        "curves": {k: [list(p) for p in v] for k, v in (curves or {}).items()},
    }


def head_to_head(comparison: Mapping[str, Any]) -> HeadToHead:
    """The scores of this run (from evaluate's comparison JSON) the promotion rule compares."""
    models = comparison["models"]
    champion = models.get(CHAMPION)
    baseline = models.get(BASELINE)
    return HeadToHead(
        dataset_version=str(comparison.get("dataset_version", "")),
        new_score=float(models[NEW]["J&F"]),
        champion_version=str(champion["version"]) if champion else None,
        champion_score=float(champion["J&F"]) if champion else None,
        unscored_reason=None if champion else comparison.get("skipped", {}).get(CHAMPION),
        baseline_score=float(baseline["J&F"]) if baseline else None,
        num_videos=len(comparison.get("videos", [])),
    )


def comparison_lines(comparison: Mapping[str, Any]) -> list[str]:
    """One line per model for logs and the decision report: its J&F, J, F on this run's val videos."""
    models, skipped = comparison["models"], comparison.get("skipped", {})
    lines = []
    for key in (BASELINE, CHAMPION, NEW):
        if key in models:
            m = models[key]
            change = "" if key == NEW else f" (new minus {key}: {models[NEW]['J&F'] - m['J&F']:+.2f})"
            lines.append(
                f"{key:<8} J&F {m['J&F']:6.2f}  J {m['J']:6.2f}  F {m['F']:6.2f}  {m['label']}{change}"
            )
        else:
            lines.append(f"{key:<8} not scored: {skipped.get(key, 'not requested')}")
    return lines
