"""Secrets never reach a log line, a printed command or a saved config."""

from __future__ import annotations

from sam2.utils.redaction import MASKED, mask_secrets, redact_command, redact_url


def test_config_values_of_secret_looking_keys_are_masked() -> None:
    cfg = {
        "storage": {"aws_secret_access_key": "s3cr3t", "endpoint": "http://x"},
        "list": [{"api_key": "k", "name": "n"}],
        "token": None,
    }
    masked = mask_secrets(cfg)
    assert masked["storage"] == {"aws_secret_access_key": MASKED, "endpoint": "http://x"}
    assert masked["list"] == [{"api_key": MASKED, "name": "n"}]
    assert masked["token"] is None
    assert cfg["storage"]["aws_secret_access_key"] == "s3cr3t"


def test_url_passwords_are_masked_and_other_urls_unchanged() -> None:
    assert (
        redact_url("https://bob:hunter2@mlflow.example:5000/x")
        == f"https://bob:{MASKED}@mlflow.example:5000/x"
    )
    assert redact_url("http://127.0.0.1:8333") == "http://127.0.0.1:8333"
    assert redact_url(None) is None


def test_commands_keep_their_shape_but_lose_secrets() -> None:
    cmd = [
        "torchrun",
        "--nnodes=2",
        "trainer.model.freeze_image_encoder=true",
        "++storage.secret_key=abc123",
        "trainer.checkpoint.resume_from=s3://bucket/run/checkpoints",
        "mlflow=https://u:pw@host/",
    ]
    text = redact_command(cmd)
    assert "abc123" not in text and "pw@" not in text
    assert "++storage.secret_key=***" in text
    assert "--nnodes=2 trainer.model.freeze_image_encoder=true" in text
    assert "s3://bucket/run/checkpoints" in text
