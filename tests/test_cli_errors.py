"""One rule at every entry point: bad input is one `error:` line naming the file or setting, exit 2; a
service unreachable for the retry budget exits 201 (retryable); a traceback only with --debug/SAM2_DEBUG=1
(sam2/utils/cli_errors.py, docs/errors-and-exit-codes.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_loop_support import (
    MICRO_MODEL_OVERRIDES,
    MODEL_CONFIG,
    RESOLUTION,
    TRAIN_CONFIG,
    make_clips,
    training_overrides,
)

from sam2.storage import StorageUnreachableError
from sam2.utils.cli_errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_UNREACHABLE, cli_entry

REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def one_error_line(stderr: str) -> str:
    """The single `error:` line of a refusal; fails on a traceback or on several error lines."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    "exc, code",
    [
        (ValueError("setting x=abc is not a number"), EXIT_BAD_INPUT),
        (FileNotFoundError("list.txt does not exist"), EXIT_BAD_INPUT),
        (KeyError("no key 'model' in ckpt.pt"), EXIT_BAD_INPUT),
        (StorageUnreachableError("S3 endpoint http://h:1 did not answer"), EXIT_UNREACHABLE),
        (ConnectionRefusedError("mlflow"), EXIT_UNREACHABLE),
        (RuntimeError("a bug"), EXIT_FAILED),
    ],
)
def test_cli_entry_maps_each_kind_of_failure_to_its_exit_code(exc, code, capsys, monkeypatch) -> None:
    monkeypatch.delenv("SAM2_DEBUG", raising=False)

    @cli_entry
    def main(argv: list[str]) -> int:
        assert "--debug" not in argv
        raise exc

    assert main(["--x"]) == code
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert line.startswith("error: ") and str(exc.args[0]) in line
    if code == EXIT_FAILED:
        assert "unexpected RuntimeError" in line and "--debug" in line
    assert main(["--debug"]) == code
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("SAM2_DEBUG", "1")
    assert main([]) == code
    assert "Traceback" in capsys.readouterr().err


def test_a_multi_line_message_stays_one_line(capsys) -> None:
    @cli_entry
    def main(argv: list[str]) -> int:
        raise ValueError("first\n  second\n")

    assert main([]) == 2
    assert one_error_line(capsys.readouterr().err) == "error: first second"


def test_merge_lora_with_a_config_that_does_not_exist(tmp_path: Path) -> None:
    proc = run_module(
        "sam2.tools.merge_lora",
        "--sam2_cfg",
        "configs/sam2.1/sam2.1_hiera_nosuch.yaml",
        "--base_checkpoint",
        str(tmp_path / "base.pt"),
        "--adapter_checkpoint",
        str(tmp_path / "adapters.pt"),
        "--output",
        str(tmp_path / "merged.pt"),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "sam2.1_hiera_nosuch" in one_error_line(proc.stderr)
    assert not (tmp_path / "merged.pt").exists()


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    overrides = [*MICRO_MODEL_OVERRIDES, f"model.image_size={RESOLUTION}"]
    model = build_sam2(MODEL_CONFIG, None, device="cpu", hydra_overrides_extra=overrides)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def test_merge_lora_with_a_config_that_does_not_fit_the_checkpoint(tmp_path: Path, micro_base: Path) -> None:
    """The micro checkpoint against the full tiny config (no overrides): named, exit 2."""
    proc = run_module(
        "sam2.tools.merge_lora",
        "--sam2_cfg",
        MODEL_CONFIG,
        "--base_checkpoint",
        str(micro_base),
        "--adapter_checkpoint",
        str(micro_base),
        "--output",
        str(tmp_path / "merged.pt"),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert str(micro_base) in line or MODEL_CONFIG in line, line
    assert not (tmp_path / "merged.pt").exists()


def test_merge_lora_with_a_corrupt_adapter_checkpoint_names_the_file(
    tmp_path: Path, micro_base: Path
) -> None:
    corrupt = tmp_path / "checkpoint.pt"
    corrupt.write_bytes(micro_base.read_bytes()[:5000])
    micro = [f"--override={o}" for o in [*MICRO_MODEL_OVERRIDES, f"model.image_size={RESOLUTION}"]]
    proc = run_module(
        "sam2.tools.merge_lora",
        "--sam2_cfg",
        MODEL_CONFIG,
        "--base_checkpoint",
        str(micro_base),
        "--adapter_checkpoint",
        str(corrupt),
        "--output",
        str(tmp_path / "merged.pt"),
        *micro,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert f"checkpoint {corrupt} cannot be read" in line
    assert not (tmp_path / "merged.pt").exists()


def test_training_resume_from_a_corrupt_checkpoint_names_the_file(tmp_path: Path) -> None:
    """A damaged checkpoint.pt in the experiment folder: one line naming it, exit 2, and the file is left
    as it was (nothing is overwritten or marked done)."""
    img, gt = make_clips(tmp_path / "data", {"a": 3, "b": 3})
    log_dir = tmp_path / "exp"
    corrupt = log_dir / "checkpoints" / "checkpoint.pt"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"PK\x03\x04 a torch zip cut short")
    proc = run_module(
        "sam2.training.train",
        "-c",
        TRAIN_CONFIG,
        "--use-cluster",
        "0",
        "--num-gpus",
        "1",
        *training_overrides(img, gt, log_dir),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert f"checkpoint {corrupt} cannot be read" in line, line
    assert corrupt.read_bytes() == b"PK\x03\x04 a torch zip cut short"
    debug = run_module(
        "sam2.training.train",
        "-c",
        TRAIN_CONFIG,
        "--use-cluster",
        "0",
        "--num-gpus",
        "1",
        *training_overrides(img, gt, log_dir),
        env={"SAM2_DEBUG": "1"},
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def _node(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_module("sam2.launch.training_node", *args, env=env)


@pytest.fixture
def node_dataset(tmp_path, s3_store, s3_bucket) -> str:
    data = tmp_path / "data"
    make_clips(data, {"a": 3, "b": 3})
    uri = f"s3://{s3_bucket}/datasets/tiny/v1"
    s3_store.upload_folder(data, uri)  # no splits/train.txt in it
    return uri


@pytest.mark.parametrize("case", ["missing_train_list", "wrong_credentials"])
def test_training_node_refuses_in_one_line_with_a_permanent_code(
    case: str, node_dataset: str, s3_server, s3_bucket, tmp_path
) -> None:
    """Exit 2 (permanent under restartPolicy ExitCode: a replaced pod would fail the same way), one logged
    error line naming the list or the credentials, no traceback, and nothing published in the run folder."""
    env = {**s3_server.env(), "SAM2_RETRY_BUDGET_S": "5"}
    if case == "wrong_credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "definitely-wrong"
    run_uri = f"s3://{s3_bucket}/runs/refused"
    args = [
        "--config",
        TRAIN_CONFIG,
        "--dataset-uri",
        node_dataset,
        "--run-uri",
        run_uri,
        "--scratch-dir",
        str(tmp_path / "scratch"),
    ]
    proc = _node(args, env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR training_node: error: " in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    if case == "missing_train_list":
        assert f"training video list {node_dataset}/splits/train.txt does not exist" in errors[0]
    else:
        assert "rejected the credentials" in errors[0] and "AWS_SECRET_ACCESS_KEY" in errors[0]
        assert "definitely-wrong" not in proc.stderr
    from s3_server import store_for

    assert not store_for(s3_server).list_objects(run_uri)


def test_training_own_data_with_the_recipe_mose_list_says_what_to_pass(tmp_path: Path) -> None:
    """README's 'Train without the pipeline' on one's own data: the recipe's MOSE sample list names videos
    the folder does not hold; one line says to pass dataset.file_list_txt=null (docs/errors-and-exit-codes.md)."""
    img, gt = make_clips(tmp_path / "data", {"cat": 3, "dog": 3})
    overrides = [
        o
        for o in training_overrides(img, gt, tmp_path / "exp")
        if not o.startswith(("dataset.file_list_txt", "dataset.val_file_list_txt"))
    ]
    proc = run_module(
        "sam2.training.train", "-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1", *overrides
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert "dataset.file_list_txt=null" in line and "'002b4dce'" in line and str(img) in line
    assert not (tmp_path / "exp" / "checkpoints").exists()


@pytest.mark.parametrize(
    "raised, code, named",
    [
        ("ValueError('on_bad must be exclude or fail')", 2, "on_bad must be exclude or fail"),
        (
            "__import__('sam2.storage').storage.StorageUnreachableError('S3 endpoint http://minio:9000 did not answer')",
            201,
            "http://minio:9000",
        ),
    ],
)
def test_a_pipeline_step_ends_in_one_line_with_the_exit_code(raised: str, code: int, named: str) -> None:
    """A component's function runs under KFP's executor, which leaves an exception to Python (traceback,
    exit 1); components.runtime.configure installs the same rule."""
    script = f"from components.runtime import configure\nconfigure()\nraise {raised}\n"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "SAM2_DEBUG"},
    )
    assert proc.returncode == code, proc.stderr
    assert named in one_error_line(proc.stderr) and proc.stderr.count("step: error: ") == 1
    debug = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SAM2_DEBUG": "1"},
    )
    assert debug.returncode == code and "Traceback" in debug.stderr
