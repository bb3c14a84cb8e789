"""Promotion rules on a real MLflow registry (SQLite in tmp_path), including two runs finishing at once."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading

import pytest

from sam2.promotion.registry import MlflowModelRegistry
from sam2.promotion.rules import CHALLENGER, CHAMPION, Candidate, decide, model_name_for
from sam2.utils.code_version import code_version


def _candidate(jf: float, run: str = "run-1", dataset: str = "demo") -> Candidate:
    return Candidate(
        dataset_name=dataset,
        checkpoint_uri=f"s3://sam2-runs/{run}/checkpoints/checkpoint.pt",
        metrics={"J&F": jf, "J": jf - 1.0, "F": jf + 1.0},
        dataset_version="abc123",
        config="configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
        pipeline_run=run,
    )


@pytest.fixture()
def registry_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_decide_rule():
    assert decide(50.0, None, 1.0) == CHAMPION
    assert decide(51.5, 50.0, 1.0) == CHAMPION
    assert decide(51.0, 50.0, 1.0) == CHALLENGER  # must beat by more than the margin
    assert decide(49.0, 50.0, 0.0) == CHALLENGER
    assert decide(50.0, 50.0, 0.0) == CHALLENGER  # an unchanged model stays challenger


def test_first_version_is_champion_and_carries_source_metrics_and_lineage(registry_uri):
    reg = MlflowModelRegistry(registry_uri)
    result = reg.register_and_promote(_candidate(42.0), margin=0.5)
    assert result.is_champion and result.version == "1" and result.previous_champion_version is None

    mv = reg.client.get_model_version_by_alias(model_name_for("demo"), "champion")
    assert str(mv.version) == "1"
    assert mv.source == "s3://sam2-runs/run-1/checkpoints/checkpoint.pt"
    assert mv.tags["metric.J_and_F"] == "42.000000"
    assert mv.tags["dataset_version"] == "abc123"
    assert mv.tags["pipeline_run"] == "run-1"
    assert mv.tags["config"].endswith("_MOSE_finetune.yaml")
    assert mv.tags["code_version"] == code_version() and mv.tags["code_version"] != "unknown"
    assert mv.tags["promotion"] == "champion"


def test_champion_moves_only_beyond_the_margin(registry_uri):
    reg = MlflowModelRegistry(registry_uri)
    assert reg.register_and_promote(_candidate(40.0, "r1"), margin=2.0).decision == CHAMPION
    second = reg.register_and_promote(_candidate(41.5, "r2"), margin=2.0)
    assert second.decision == CHALLENGER
    assert second.previous_champion_version == "1" and second.previous_champion_score == 40.0
    assert reg.champion("demo") == ("1", 40.0)
    name = model_name_for("demo")
    assert str(reg.client.get_model_version_by_alias(name, "challenger").version) == "2"

    third = reg.register_and_promote(_candidate(42.5, "r3"), margin=2.0)
    assert third.decision == CHAMPION
    assert reg.champion("demo") == ("3", 42.5)
    assert reg.client.get_model_version(name, "2").tags["promotion"] == "challenger"


def test_an_unchanged_model_stays_challenger(registry_uri):
    reg = MlflowModelRegistry(registry_uri)
    reg.register_and_promote(_candidate(30.0, "r1"), margin=0.0)
    assert reg.register_and_promote(_candidate(30.0, "r2"), margin=0.0).decision == CHALLENGER


def test_data_sets_have_separate_models(registry_uri):
    reg = MlflowModelRegistry(registry_uri)
    reg.register_and_promote(_candidate(80.0, dataset="demo"), margin=0.0)
    assert reg.register_and_promote(_candidate(10.0, dataset="mose"), margin=0.0).is_champion


@pytest.mark.parametrize(
    "change, message",
    [
        ({"metrics": {"J": 1.0}}, "J&F"),
        ({"checkpoint_uri": "/tmp/ckpt.pt"}, "s3://"),
    ],
)
def test_bad_candidates_are_rejected_before_anything_is_written(registry_uri, change, message):
    reg = MlflowModelRegistry(registry_uri)
    with pytest.raises(ValueError, match=message):
        reg.register_and_promote(dataclasses.replace(_candidate(1.0), **change), margin=0.0)
    assert reg.client.search_model_versions() == []


def _promote_in_process(registry_uri: str, run: str, barrier, results) -> None:
    reg = MlflowModelRegistry(registry_uri)
    barrier.wait()
    results.put(reg.register_and_promote(_candidate(60.0, run), margin=1.0).decision)


def test_two_processes_finishing_at_once_cannot_both_become_champion(registry_uri):
    # Both beat the existing champion by the margin; whichever goes second sees the first as champion.
    MlflowModelRegistry(registry_uri).register_and_promote(_candidate(50.0, "base"), margin=1.0)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_promote_in_process, args=(registry_uri, f"p{i}", barrier, results))
        for i in (1, 2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    decisions = sorted(results.get(timeout=5) for _ in procs)
    assert decisions == [CHALLENGER, CHAMPION]
    champion = MlflowModelRegistry(registry_uri).champion("demo")
    assert champion is not None and champion[0] in {"2", "3"}


def test_server_style_lease_serialises_concurrent_promotions(registry_uri, tmp_path):
    """The tag lease used against a tracking server (forced here on SQLite) also lets only one win."""
    base = MlflowModelRegistry(registry_uri)
    base.register_and_promote(_candidate(50.0, "base"), margin=1.0)
    decisions: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def promote(run: str) -> None:
        reg = MlflowModelRegistry(registry_uri, settle_s=0.2)
        reg._lock_file = None  # use the registry-level lease, as against a remote server
        start.wait()
        try:
            decisions.append(reg.register_and_promote(_candidate(60.0, run), margin=1.0).decision)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(decisions) == [CHALLENGER, CHALLENGER, CHAMPION]
    assert "promotion_lock" not in base.client.get_registered_model(model_name_for("demo")).tags


# -- head-to-head: the champion is scored again in this run, on this run's val videos -----------------


def _scored(
    jf: float, run: str, version: str | None, champion_jf: float | None, data: str, **kw
) -> Candidate:
    """A candidate whose run scored itself (`jf`) and champion `version` (`champion_jf`) on data `data`."""
    from sam2.promotion.rules import HeadToHead

    h2h = HeadToHead(data, jf, version, champion_jf, kw.pop("unscored", None), num_videos=5)
    return dataclasses.replace(_candidate(jf, run), dataset_version=data, head_to_head=h2h, **kw)


def test_a_champion_better_on_its_old_val_set_but_worse_on_the_new_one_loses(registry_uri):
    # v1 scored 70 on the old, easy val set. The data grew; on the new, harder val set v1 scores 40 and
    # the new model 55. The registered 70 must not decide: the new model wins the head-to-head.
    reg = MlflowModelRegistry(registry_uri)
    reg.register_and_promote(dataclasses.replace(_candidate(70.0, "old"), dataset_version="easy"), margin=1.0)
    result = reg.register_and_promote(_scored(55.0, "new", "1", 40.0, "hard"), margin=1.0)
    assert result.decision == CHAMPION and result.rule == "head-to-head"
    assert result.previous_champion_version == "1" and result.previous_champion_score == 40.0
    assert "new J&F 55.00 vs champion v1 40.00" in result.reason and "hard" in result.reason
    tags = reg.client.get_model_version(model_name_for("demo"), "2").tags
    assert tags["h2h.champion_version"] == "1" and tags["h2h.champion_J_and_F"] == "40.000000"
    assert tags["h2h.new_J_and_F"] == "55.000000" and tags["h2h.dataset_version"] == "hard"
    assert tags["promotion_rule"] == "head-to-head"


def test_a_champion_worse_on_its_old_val_set_but_better_on_the_new_one_stays(registry_uri):
    # The reverse: v1 scored 30 on a hard old val set; on this run's videos it scores 60, the new one 50.
    reg = MlflowModelRegistry(registry_uri)
    reg.register_and_promote(dataclasses.replace(_candidate(30.0, "old"), dataset_version="hard"), margin=1.0)
    result = reg.register_and_promote(_scored(50.0, "new", "1", 60.0, "easy"), margin=1.0)
    assert result.decision == CHALLENGER and result.rule == "head-to-head"
    assert reg.champion("demo") == ("1", 30.0)


def test_an_unscorable_champion_falls_back_to_its_registered_score_and_says_so(registry_uri):
    reg = MlflowModelRegistry(registry_uri)
    reg.register_and_promote(_candidate(40.0, "old"), margin=1.0)
    gone = "champion version 1's checkpoint s3://sam2-runs/old/checkpoints/checkpoint.pt is gone"
    result = reg.register_and_promote(_scored(45.0, "new", None, None, "v2", unscored=gone), margin=1.0)
    assert result.decision == CHAMPION and result.rule == "fallback"
    assert result.reason.startswith("FALLBACK") and gone in result.reason
    assert result.previous_champion_score == 40.0
    tags = reg.client.get_model_version(model_name_for("demo"), "2").tags
    assert tags["promotion_rule"] == "fallback" and gone in tags["promotion_reason"]
    assert tags["h2h.champion_unscored"] == gone


def test_a_champion_that_moved_after_it_was_scored_is_not_compared_head_to_head(registry_uri):
    reg = MlflowModelRegistry(registry_uri)
    reg.register_and_promote(_candidate(40.0, "a"), margin=0.0)
    reg.register_and_promote(_candidate(50.0, "b"), margin=0.0)  # v2 took the alias meanwhile
    result = reg.register_and_promote(_scored(60.0, "c", "1", 10.0, "v3"), margin=0.0)
    assert result.rule == "fallback" and "moved to v2 after this run scored v1" in result.reason
    assert result.previous_champion_score == 50.0 and result.decision == CHAMPION


def test_a_random_init_version_is_registered_but_champion_only_when_allowed(registry_uri):
    reg = MlflowModelRegistry(registry_uri)
    first = reg.register_and_promote(
        dataclasses.replace(_candidate(10.0, "r1"), random_init=True), margin=0.0
    )
    assert first.decision == CHALLENGER and first.rule == "random-init" and reg.champion("demo") is None
    assert "allow_random_init" in first.reason
    allowed = reg.register_and_promote(
        dataclasses.replace(_candidate(10.0, "r2"), random_init=True), margin=0.0, allow_random_init=True
    )
    assert allowed.decision == CHAMPION and allowed.rule == "first"
    tags = reg.client.get_model_version(model_name_for("demo"), "1").tags
    assert tags["random_init"] == "true" and tags["promotion"] == "challenger"
