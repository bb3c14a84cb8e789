"""A training node refuses in-training validation, which it has no val videos for, before any download."""

from __future__ import annotations

import pytest

from sam2.launch.training_node import main, refuse_in_training_validation


@pytest.mark.parametrize("override", ["trainer.mode=train", "++trainer.mode=train"])
def test_validation_during_training_is_refused_naming_the_override(override):
    with pytest.raises(ValueError, match=r"trainer\.mode=train.*train split"):
        refuse_in_training_validation(["scratch.num_epochs=1", override])


def test_train_only_and_other_overrides_pass():
    refuse_in_training_validation(["trainer.mode=train_only", "scratch.resolution=128"])


def test_cli_exits_2_before_touching_the_data(tmp_path, caplog):
    # The data set folder does not exist: the refusal must come first, not a missing-data error.
    code = main(
        [
            "--config",
            "configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml",
            "--dataset-uri",
            str(tmp_path / "absent"),
            "--run-uri",
            str(tmp_path / "run"),
            "--scratch-dir",
            str(tmp_path / "scratch"),
            "--train-list",
            str(tmp_path / "train.txt"),
            "trainer.mode=train",
        ]
    )
    assert code == 2
    assert "cannot validate during training" in caplog.text
