"""The promotion rule: which registered version holds the `champion` alias. Pure: no MLflow, no I/O.

One registered model per data set (`sam2-<dataset>`). The `champion` alias moves to a new version only
when its J&F beats the current champion's by the promotion margin; otherwise the version gets the
`challenger` alias.

Like is compared with like: the pipeline scores the current champion on this run's val videos with this
run's settings (see sam2.promotion.references), and the rule compares the two scores of this run
(`head-to-head`). Only when the champion could not be scored here (its checkpoint is gone, or the alias
moved to a version this run did not score) does the rule fall back to the J&F the champion got in its
own run (`fallback`), and the decision says so. A version trained from random weights is registered but
never made champion unless the run allows it (`random-init`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sam2.utils.code_version import code_version

CHAMPION = "champion"
CHALLENGER = "challenger"
PRIMARY_METRIC = "J&F"
METRIC_TAG_PREFIX = "metric."


RULE_FIRST = "first"
RULE_HEAD_TO_HEAD = "head-to-head"
RULE_FALLBACK = "fallback"
RULE_RANDOM_INIT = "random-init"


@dataclass(frozen=True)
class HeadToHead:
    """The new model and the champion scored in this run, on the same val videos with the same settings.

    `champion_version` / `champion_score` are None when the champion was not scored; `unscored_reason`
    then says why (no champion, checkpoint gone, inference failed).
    """

    dataset_version: str
    new_score: float
    champion_version: str | None = None
    champion_score: float | None = None
    unscored_reason: str | None = None
    baseline_score: float | None = None
    num_videos: int = 0


@dataclass(frozen=True)
class Candidate:
    """A trained checkpoint with its evaluation and where it came from.

    `source_uri`: what the registered version points at (the loadable MLflow model folder); defaults to
    the checkpoint. `run_id`: the MLflow run the version links to.
    """

    dataset_name: str
    checkpoint_uri: str
    metrics: dict[str, float]
    dataset_version: str
    config: str
    pipeline_run: str
    code_version: str = field(default_factory=lambda: code_version())
    extra_tags: dict[str, str] = field(default_factory=dict)
    model_config: str = ""
    random_init: bool = False
    head_to_head: HeadToHead | None = None
    source_uri: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class ChampionInfo:
    """The current champion: its version, registered J&F (from its own run) and what it was built from."""

    model_name: str
    version: str
    score: float
    checkpoint_uri: str
    model_config: str
    dataset_version: str
    run_id: str | None


@dataclass(frozen=True)
class Decision:
    """The promotion rule's outcome: CHAMPION or CHALLENGER, which rule decided, and why in words."""

    decision: str
    rule: str
    reason: str
    compared_score: float | None  # the champion score the new one was held against


@dataclass(frozen=True)
class PromotionResult:
    """What the registry decided for one candidate."""

    model_name: str
    version: str
    decision: str  # CHAMPION or CHALLENGER
    score: float
    previous_champion_version: str | None
    previous_champion_score: float | None
    margin: float
    rule: str = RULE_FIRST
    reason: str = ""

    @property
    def is_champion(self) -> bool:
        return self.decision == CHAMPION


def model_name_for(dataset_name: str) -> str:
    """The registered model that holds every fine-tune of one data set."""
    return f"sam2-{dataset_name}"


def metric_tag(metric: str) -> str:
    """The tag key of a metric ("J&F" -> "metric.J_and_F"; MLflow keys may not hold '&')."""
    return METRIC_TAG_PREFIX + metric.replace("&", "_and_")


def decide(score: float, champion_score: float | None, margin: float) -> str:
    """CHAMPION when there is no champion or `score` beats it by more than `margin`, else CHALLENGER."""
    if champion_score is None:
        return CHAMPION
    return CHAMPION if score > champion_score + margin else CHALLENGER


def choose(
    candidate: Candidate, champion: ChampionInfo | None, margin: float, allow_random_init: bool = False
) -> Decision:
    """Apply the promotion rule to `candidate` against the current `champion` (see the module docstring).

    Head-to-head when this run scored exactly the version that is champion now; otherwise the fallback
    to the champion's registered J&F, labelled with the reason.
    """
    score = float(candidate.metrics[PRIMARY_METRIC])
    if candidate.random_init and not allow_random_init:
        return Decision(
            CHALLENGER,
            RULE_RANDOM_INIT,
            "trained from random weights (no init_checkpoint_uri): registered, never champion unless the "
            "run sets allow_random_init",
            champion.score if champion else None,
        )
    if champion is None:
        return Decision(CHAMPION, RULE_FIRST, "no champion yet: the first version takes the alias", None)
    h2h = candidate.head_to_head
    if h2h is not None and h2h.champion_version == champion.version and h2h.champion_score is not None:
        decision = decide(h2h.new_score, h2h.champion_score, margin)
        reason = (
            f"head-to-head in this run on the same {h2h.num_videos} val videos of data set version "
            f"{h2h.dataset_version}: new J&F {h2h.new_score:.2f} vs champion v{champion.version} "
            f"{h2h.champion_score:.2f} (difference {h2h.new_score - h2h.champion_score:+.2f}, margin {margin:.2f})"
        )
        return Decision(decision, RULE_HEAD_TO_HEAD, reason, h2h.champion_score)
    if h2h is None:
        why = "this run did not score the champion"
    elif h2h.champion_version is not None and h2h.champion_version != champion.version:
        why = f"the champion moved to v{champion.version} after this run scored v{h2h.champion_version}"
    else:
        why = h2h.unscored_reason or "the champion was not scored in this run"
    decision = decide(score, champion.score, margin)
    reason = (
        f"FALLBACK to the champion's registered J&F ({why}): new J&F {score:.2f} (data set version "
        f"{candidate.dataset_version}) vs champion v{champion.version} {champion.score:.2f} measured in its own "
        f"run (data set version {champion.dataset_version}), margin {margin:.2f}"
    )
    return Decision(decision, RULE_FALLBACK, reason, champion.score)
