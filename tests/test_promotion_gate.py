"""The gate against the starting point (sam2.promotion.gate): each rule decides a case of its own, and the
registry, the MLflow run and the decision record every check."""

import pytest
from kfp import dsl
from kfp.dsl import Dataset, Model, Output

from components.promote import promote_model
from sam2.promotion.gate import (
    FAIL,
    NOT_APPLICABLE,
    PASS,
    GateSettings,
    RegressionScores,
    apply_gate,
    baseline_check,
    gate_tags,
    regression_check,
)
from sam2.promotion.rules import (
    CHALLENGER,
    CHAMPION,
    RULE_FIRST,
    RULE_HEAD_TO_HEAD,
    Candidate,
    ChampionInfo,
    Decision,
    HeadToHead,
    choose,
)

VIDEOS = ("bike", "cows")


def h2h(new: float, baseline: float | None, champion: float | None = None) -> HeadToHead:
    return HeadToHead(
        dataset_version="v1",
        new_score=new,
        champion_version="1" if champion is not None else None,
        champion_score=champion,
        baseline_score=baseline,
        num_videos=len(VIDEOS),
    )


def candidate(scores: HeadToHead) -> Candidate:
    return Candidate(
        dataset_name="demo",
        checkpoint_uri="s3://runs/r/checkpoints/checkpoint.pt",
        metrics={"J&F": scores.new_score},
        dataset_version="v1",
        config="",
        pipeline_run="r",
        code_version="test",
        head_to_head=scores,
    )


CHAMP = ChampionInfo("sam2-demo", "1", 40.0, "s3://runs/a/checkpoints/checkpoint.pt", "", "v1", None)


def test_baseline_rule_passes_a_version_that_beats_zero_shot_by_the_margin():
    check = baseline_check(h2h(52.0, 50.0), margin=1.0, videos=VIDEOS)
    assert check.outcome == PASS and check.videos == VIDEOS
    assert "52.00" in check.reason and "50.00" in check.reason and "+2.00" in check.reason
    decided = apply_gate(choose(candidate(h2h(52.0, 50.0, 45.0)), CHAMP, margin=1.0), [check])
    assert decided.decision == CHAMPION and decided.rule == RULE_HEAD_TO_HEAD


def test_baseline_rule_keeps_a_version_below_zero_shot_from_champion_even_the_first():
    scores = h2h(49.0, 50.0)
    first = choose(candidate(scores), None, margin=1.0)
    assert first.decision == CHAMPION and first.rule == RULE_FIRST  # the promotion rule alone: champion
    check = baseline_check(scores, margin=0.0, videos=VIDEOS)
    decided = apply_gate(first, [check])
    assert check.outcome == FAIL and decided.decision == CHALLENGER and decided.rule == "gate-baseline"
    assert "baseline gate failed" in decided.reason and "first" in decided.reason


def test_baseline_rule_needs_more_than_the_margin_not_equal():
    assert baseline_check(h2h(51.0, 50.0), margin=1.0).outcome == FAIL
    assert baseline_check(h2h(51.01, 50.0), margin=1.0).outcome == PASS
    assert baseline_check(h2h(50.0, 50.0), margin=0.0).outcome == FAIL, "a tie is not better than zero-shot"


def test_baseline_rule_fails_closed_when_the_baseline_was_not_scored():
    check = baseline_check(h2h(60.0, None), margin=0.0, unscored_reason="init checkpoint gone")
    assert check.outcome == FAIL and "init checkpoint gone" in check.reason
    assert apply_gate(Decision(CHAMPION, RULE_FIRST, "first", None), [check]).decision == CHALLENGER


def test_baseline_rule_does_not_apply_without_a_starting_point():
    check = baseline_check(h2h(5.0, None), margin=0.0, no_starting_point="trained from random weights")
    assert check.outcome == NOT_APPLICABLE
    assert apply_gate(Decision(CHAMPION, RULE_FIRST, "first", None), [check]).decision == CHAMPION


def test_regression_rule_allows_at_most_max_regression_points_lost():
    settings = GateSettings(regression_dataset_uri="s3://data/davis-slice", max_regression=2.0)
    scores = RegressionScores("s3://data/davis-slice", ("a", "b", "c"), new_score=68.0, baseline_score=70.0)
    assert regression_check(settings, scores).outcome == PASS  # lost exactly 2.0
    worse = RegressionScores("s3://data/davis-slice", ("a", "b", "c"), new_score=67.9, baseline_score=70.0)
    check = regression_check(settings, worse)
    assert (
        check.outcome == FAIL and "s3://data/davis-slice" in check.reason and check.videos == ("a", "b", "c")
    )
    decided = apply_gate(Decision(CHAMPION, RULE_HEAD_TO_HEAD, "beat v1", 40.0), [check])
    assert decided.decision == CHALLENGER and decided.rule == "gate-regression"


def test_regression_rule_is_off_without_a_set_and_fails_closed_when_unscored():
    assert regression_check(GateSettings(), None).outcome == NOT_APPLICABLE
    settings = GateSettings(regression_dataset_uri="s3://data/davis-slice")
    unscored = RegressionScores("s3://data/davis-slice", unscored_reason="no frames")
    assert regression_check(settings, unscored).outcome == FAIL
    assert "no frames" in regression_check(settings, unscored).reason


def test_the_gate_never_promotes_a_challenger():
    passing = baseline_check(h2h(90.0, 10.0), margin=0.0)
    stays = Decision(CHALLENGER, RULE_HEAD_TO_HEAD, "did not beat v1", 95.0)
    assert apply_gate(stays, [passing]) is stays


def test_settings_reject_negative_margins():
    with pytest.raises(ValueError, match="baseline_margin"):
        GateSettings(baseline_margin=-1.0)
    with pytest.raises(ValueError, match="max_regression"):
        GateSettings(max_regression=-0.5)


def test_tags_hold_both_scores_the_videos_and_the_outcome():
    settings = GateSettings(baseline_margin=0.5, regression_dataset_uri="s3://d/r", max_regression=1.0)
    checks = [
        baseline_check(h2h(52.0, 50.0), margin=0.5, videos=VIDEOS),
        regression_check(settings, RegressionScores("s3://d/r", ("x",), 60.0, 59.0)),
    ]
    tags = gate_tags(checks, settings)
    assert tags["gate.baseline"] == PASS and tags["gate.regression"] == PASS
    assert (
        tags["gate.baseline.new_J_and_F"] == "52.000000"
        and tags["gate.baseline.baseline_J_and_F"] == "50.000000"
    )
    assert tags["gate.baseline.videos"] == "bike,cows" and tags["gate.regression.videos"] == "x"
    assert tags["gate.baseline_margin"] == "0.500000" and tags["gate.regression_dataset_uri"] == "s3://d/r"
    assert tags["gate.regression.dataset"] == "s3://d/r"


def test_promote_records_the_gate_on_the_version_and_the_run(tmp_path, s3_env, s3_bucket):
    """The promote step's own code on a SQLite registry: a fine-tune below its zero-shot baseline is
    registered as challenger even as the first version, and the version and the run say why."""
    from mlflow import MlflowClient

    from sam2.contracts import TrainedModel
    from sam2.promotion.pipeline_run import promote_pipeline_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run(name: str, new: float, baseline: float):
        model = TrainedModel(
            uri=f"s3://{s3_bucket}/{name}/checkpoints/checkpoint.pt",
            run_uri=f"s3://{s3_bucket}/{name}",
            model_config="configs/sam2.1/sam2.1_hiera_t.yaml",
            init_checkpoint="s3://models/sam2.1_hiera_tiny.pt",
            dataset_version="v1",
            dataset_uri="s3://data/datasets/demo/v1",
        )

        def scored(label: str, jf: float) -> dict:
            return {"label": label, "checkpoint_uri": "", "version": None, "J&F": jf, "J": jf, "F": jf}

        comparison = {
            "dataset_version": "v1",
            "videos": list(VIDEOS),
            "models": {"new": scored("new", new), "baseline": scored("baseline", baseline)},
            "skipped": {"champion": "no champion registered yet"},
        }
        return promote_pipeline_run(
            uri, "demo", name, model, comparison, None, None, 1.0, False, {}, gate=GateSettings(0.5)
        )

    below = run("run-a", new=40.0, baseline=45.0)
    assert below.result.decision == CHALLENGER and below.result.rule == "gate-baseline"
    client = MlflowClient(uri)
    tags = client.get_model_version("sam2-demo", below.result.version).tags
    assert tags["promotion_rule"] == "gate-baseline" and tags["gate.baseline"] == FAIL
    assert (
        tags["gate.baseline.baseline_J_and_F"] == "45.000000" and tags["gate.baseline.videos"] == "bike,cows"
    )
    run_tags = client.get_run(below.run_id).data.tags
    assert run_tags["gate.baseline"] == FAIL and run_tags["promotion"] == CHALLENGER
    assert run_tags["gate.regression"] == NOT_APPLICABLE

    above = run("run-b", new=46.0, baseline=45.0)
    assert above.result.decision == CHAMPION and above.result.rule == "first"
    assert client.get_model_version("sam2-demo", above.result.version).tags["gate.baseline"] == PASS


@dsl.component(base_image="unused", install_kfp_package=False)
def scored_run(
    run_uri: str,
    new: float,
    baseline: float,
    reg_new: float,
    model: Output[Model],
    comparison: Output[Dataset],
    regression: Output[Dataset],
):
    import json

    from sam2.contracts import TrainedModel

    trained = TrainedModel(
        uri=f"{run_uri}/checkpoints/checkpoint.pt",
        run_uri=run_uri,
        model_config="configs/sam2.1/sam2.1_hiera_t.yaml",
        init_checkpoint="s3://models/sam2.1_hiera_tiny.pt",
        dataset_version="v1",
        dataset_uri="s3://data/datasets/demo/v1",
    )
    model.metadata.update(trained.to_metadata())

    def scored(label: str, jf: float) -> dict:
        return {"label": label, "checkpoint_uri": "", "version": None, "J&F": jf, "J": jf, "F": jf}

    with open(comparison.path, "w") as handle:
        json.dump(
            {
                "dataset_version": "v1",
                "videos": ["bike", "cows"],
                "models": {"new": scored("new", new), "baseline": scored("baseline", baseline)},
                "skipped": {"champion": "none yet"},
            },
            handle,
        )
    with open(regression.path, "w") as handle:
        json.dump(
            {"dataset_uri": "s3://d/reg", "videos": ["x"], "new_score": reg_new, "baseline_score": 70.0},
            handle,
        )


@dsl.pipeline
def gated(run_uri: str, tracking_uri: str, new: float, baseline: float, reg_new: float) -> str:
    run = scored_run(run_uri=run_uri, new=new, baseline=baseline, reg_new=reg_new)
    promote = promote_model(
        model=run.outputs["model"],
        comparison=run.outputs["comparison"],
        regression=run.outputs["regression"],
        dataset_name="demo",
        pipeline_run=run_uri,
        mlflow_tracking_uri=tracking_uri,
        baseline_margin=0.5,
        regression_dataset_uri="s3://d/reg",
        max_regression=1.0,
    )
    return promote.outputs["decision"]


def test_the_promote_step_applies_the_gate_and_reports_it(tmp_path, s3_env, s3_bucket):
    """components/promote.py through kfp.local: the val-split gate and the regression gate decide inside
    the step, and the decision report lists every gate with its scores."""

    from pipelines.local_run import import_kfp_local

    local = import_kfp_local()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = f"s3://{s3_bucket}"
    below = gated(run_uri=f"{runs}/a", tracking_uri=uri, new=50.0, baseline=50.2, reg_new=70.0)
    assert below.output == "challenger"
    forgot = gated(run_uri=f"{runs}/b", tracking_uri=uri, new=55.0, baseline=50.0, reg_new=68.5)
    assert forgot.output == "challenger"
    good = gated(run_uri=f"{runs}/c", tracking_uri=uri, new=55.0, baseline=50.0, reg_new=69.5)
    assert good.output == "champion"
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    rules = [client.get_model_version("sam2-demo", v).tags["promotion_rule"] for v in ("1", "2", "3")]
    assert rules == ["gate-baseline", "gate-regression", "first"]
    reports = sorted((tmp_path / "kfp").rglob("decision_report"))
    texts = [p.read_text() for p in reports]
    assert any("regression gate: FAIL" in t and "68.50" in t for t in texts)
    assert any("baseline gate: PASS" in t and "regression gate: PASS" in t for t in texts)
