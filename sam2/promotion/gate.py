"""The promotion gate against the starting point: a version never takes `champion` below zero-shot.

A fine-tune can end worse than the model it started from (fewer J&F points than the initial checkpoint on
the same videos), and the first version of a data set has no champion to lose to. So on top of the
promotion rule (sam2.promotion.rules.choose), a version that would become champion must also pass:

- `baseline`: its J&F on this run's val videos beats the run's zero-shot baseline (the initial
  checkpoint, scored in the same run on the same videos with the same settings) by more than
  `baseline_margin` (default 0). Not applicable to a model trained from random weights or without an
  initial checkpoint (there is no zero-shot model; the random-init rule governs those). A baseline that should have been scored and was
  not fails the gate: the step cannot show the version is no worse than where it started.
- `regression` (only with `regression_dataset_uri`, a second DAVIS-style set the team keeps, e.g. a slice
  of a public benchmark): its J&F there is at most `max_regression` points below the baseline's on the
  same videos, which catches forgetting. Unscored there, it fails.

Pure: no MLflow, no I/O. Each check says what it compared, on which videos, and why it passed or failed;
`gate_tags` is what the registry, the MLflow run and the report record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sam2.promotion.rules import CHALLENGER, CHAMPION, Decision, HeadToHead

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "not-applicable"
BASELINE_GATE, REGRESSION_GATE = "baseline", "regression"
RULE_PREFIX = "gate-"  # the decision's rule when a gate turned a champion into a challenger


@dataclass(frozen=True)
class GateSettings:
    """How strict the gate is: J&F points the new model must beat the baseline by on the val videos, and
    (with a regression set) the most it may lose against the baseline there."""

    baseline_margin: float = 0.0
    regression_dataset_uri: str = ""
    max_regression: float = 0.0

    def __post_init__(self) -> None:
        if self.baseline_margin < 0:
            raise ValueError(f"baseline_margin must be >= 0, got {self.baseline_margin}")
        if self.max_regression < 0:
            raise ValueError(f"max_regression must be >= 0 J&F points, got {self.max_regression}")


@dataclass(frozen=True)
class RegressionScores:
    """The new model and the baseline scored in this run on the regression set (None: not scored)."""

    dataset_uri: str
    videos: tuple[str, ...] = ()
    new_score: float | None = None
    baseline_score: float | None = None
    unscored_reason: str | None = None


@dataclass(frozen=True)
class GateCheck:
    """One gate's verdict with the scores and videos it was measured on."""

    gate: str
    outcome: str  # PASS, FAIL or NOT_APPLICABLE
    reason: str
    new_score: float | None = None
    baseline_score: float | None = None
    threshold: float | None = None
    dataset: str = ""
    videos: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> bool:
        return self.outcome == FAIL


def baseline_check(
    h2h: HeadToHead | None,
    margin: float,
    videos: Sequence[str] = (),
    unscored_reason: str | None = None,
    no_starting_point: str | None = None,
) -> GateCheck:
    """The new model against the zero-shot baseline on this run's val videos (see the module docstring).

    `no_starting_point`: why there is no zero-shot model to compare with (trained from random weights,
    no initial checkpoint); the gate then does not apply. `unscored_reason`: why the baseline that exists
    was not scored (then the gate fails).
    """
    videos = tuple(videos)
    dataset = f"val split of data set version {h2h.dataset_version}" if h2h else "val split"
    if no_starting_point:
        return GateCheck(
            BASELINE_GATE,
            NOT_APPLICABLE,
            f"no zero-shot baseline: {no_starting_point}",
            dataset=dataset,
            videos=videos,
        )
    if h2h is None or h2h.baseline_score is None:
        why = unscored_reason or "it was not scored in this run"
        return GateCheck(
            BASELINE_GATE,
            FAIL,
            f"the zero-shot baseline (the initial checkpoint) has no score on this run's val videos ({why}); "
            "a version takes champion only when it is shown to beat its starting point",
            new_score=h2h.new_score if h2h else None,
            threshold=margin,
            dataset=dataset,
            videos=videos,
        )
    difference = h2h.new_score - h2h.baseline_score
    passed = h2h.new_score > h2h.baseline_score + margin
    return GateCheck(
        BASELINE_GATE,
        PASS if passed else FAIL,
        f"new J&F {h2h.new_score:.2f} vs zero-shot baseline {h2h.baseline_score:.2f} on the same "
        f"{len(videos) or h2h.num_videos} val videos (difference {difference:+.2f}, must exceed "
        f"baseline_margin {margin:.2f})",
        new_score=h2h.new_score,
        baseline_score=h2h.baseline_score,
        threshold=margin,
        dataset=dataset,
        videos=videos,
    )


def regression_check(settings: GateSettings, scores: RegressionScores | None) -> GateCheck:
    """The new model against the baseline on the regression set: at most `max_regression` points lost."""
    uri = settings.regression_dataset_uri
    if not uri:
        return GateCheck(REGRESSION_GATE, NOT_APPLICABLE, "no regression_dataset_uri set")
    videos = tuple(scores.videos) if scores else ()
    if scores is None or scores.new_score is None or scores.baseline_score is None:
        why = (scores.unscored_reason if scores else None) or "it was not scored in this run"
        return GateCheck(
            REGRESSION_GATE,
            FAIL,
            f"the regression set {uri} has no score for the new model and the baseline ({why})",
            threshold=settings.max_regression,
            dataset=uri,
            videos=videos,
        )
    loss = scores.baseline_score - scores.new_score
    passed = loss <= settings.max_regression
    return GateCheck(
        REGRESSION_GATE,
        PASS if passed else FAIL,
        f"on the regression set {uri} ({len(videos)} videos) new J&F {scores.new_score:.2f} vs zero-shot "
        f"baseline {scores.baseline_score:.2f} (loss {loss:+.2f}, at most max_regression "
        f"{settings.max_regression:.2f})",
        new_score=scores.new_score,
        baseline_score=scores.baseline_score,
        threshold=settings.max_regression,
        dataset=uri,
        videos=videos,
    )


def apply_gate(decision: Decision, checks: Sequence[GateCheck]) -> Decision:
    """`decision` unless it made the version champion and a gate failed: then CHALLENGER, by that gate."""
    failed = [c for c in checks if c.failed]
    if decision.decision != CHAMPION or not failed:
        return decision
    first = failed[0]
    reason = "; ".join(f"{c.gate} gate failed: {c.reason}" for c in failed)
    return Decision(
        CHALLENGER,
        RULE_PREFIX + first.gate,
        f"{reason} (the promotion rule alone, {decision.rule}: {decision.reason})",
        decision.compared_score,
    )


def gate_tags(checks: Sequence[GateCheck], settings: GateSettings) -> dict[str, str]:
    """Tags (version and run) recording every gate: outcome, reason, both scores, threshold, videos."""
    tags = {
        "gate.baseline_margin": f"{settings.baseline_margin:.6f}",
        "gate.max_regression": f"{settings.max_regression:.6f}",
    }
    if settings.regression_dataset_uri:
        tags["gate.regression_dataset_uri"] = settings.regression_dataset_uri
    for check in checks:
        prefix = f"gate.{check.gate}"
        tags[prefix] = check.outcome
        tags[f"{prefix}.reason"] = check.reason[:4900]
        if check.new_score is not None:
            tags[f"{prefix}.new_J_and_F"] = f"{check.new_score:.6f}"
        if check.baseline_score is not None:
            tags[f"{prefix}.baseline_J_and_F"] = f"{check.baseline_score:.6f}"
        if check.dataset:
            tags[f"{prefix}.dataset"] = check.dataset
        if check.videos:
            tags[f"{prefix}.videos"] = ",".join(check.videos)[:4900]
    return tags


def gate_lines(checks: Sequence[GateCheck]) -> list[str]:
    """One line per gate for the decision report and the log."""
    return [f"{c.gate} gate: {c.outcome.upper()}: {c.reason}" for c in checks]
