"""The infer and evaluate steps' library parts, without KFP (the components' own runs are in
test_components.py and test_inference_shards.py, through kfp.local)."""

import sys
from pathlib import Path

from sam2.eval.run_evaluation import RunEvaluation
from sam2.eval.shard_inference import vos_inference_command
from sam2.promotion.comparison import ComparedModel


def test_inference_command_uses_the_upstream_flags_of_the_tool():
    model = ComparedModel("champion", "s3://m/c.pt", "configs/sam2.1/sam2.1_hiera_t.yaml", "champion v1", "1")
    data = Path("/work/data")
    cmd = vos_inference_command(
        model, Path("/work/c.pt"), data, Path("/work/val.txt"), Path("/work/out"), ["--device", "cpu"]
    )
    assert cmd[:3] == [sys.executable, "-m", "sam2.tools.vos_inference"]
    flags = dict(zip(cmd[3:-2:2], cmd[4:-2:2], strict=True))
    assert flags == {
        "--sam2_cfg": "configs/sam2.1/sam2.1_hiera_t.yaml",
        "--sam2_checkpoint": "/work/c.pt",
        "--base_video_dir": "/work/data/JPEGImages",
        "--input_mask_dir": "/work/data/Annotations",
        "--video_list_file": "/work/val.txt",
        "--output_mask_dir": "/work/out",
    }
    assert cmd[-2:] == ["--device", "cpu"]


def test_metrics_name_every_scored_model_and_the_comparison_contract():
    scores = {"J&F": 61.234567, "J": 60.0, "F": 62.5}
    summary = {
        "dataset_version": "v1",
        "val_list_uri": "s3://d/val.txt",
        "skipped": {"baseline": "random weights"},
        "models": {"new": dict(scores), "champion": {"J&F": 59.0, "J": 58.0, "F": 60.0}},
    }
    evaluation = RunEvaluation(summary, {**scores, "per_video": {"a": 1.0, "b": 2.0}}, "# report")
    assert evaluation.metrics() == {
        "J&F": 61.2346,
        "champion_J&F": 59.0,
        "J": 60.0,
        "champion_J": 58.0,
        "F": 62.5,
        "champion_F": 60.0,
        "num_videos": 2,
    }
    assert list(evaluation.metrics()) == [
        "J&F",
        "champion_J&F",
        "J",
        "champion_J",
        "F",
        "champion_F",
        "num_videos",
    ]
    contract = evaluation.comparison
    assert (contract.dataset_version, contract.val_list_uri) == ("v1", "s3://d/val.txt")
    assert contract.skipped == {"baseline": "random weights"}
