"""`make services-up` (sam2.tools.s3_server up): a taken port is one line naming it and S3_PORT, exit 2,
and nothing is written; S3_PORT picks another port, keeping the key pair of .local/s3.env."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from sam2.tools.s3_server import main, service_down

REPO = Path(__file__).resolve().parents[1]


def test_a_taken_port_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    local = tmp_path / ".local"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", _free_low_port(21500)))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["up", "--local_dir", str(local), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and f"port {port} is taken" in lines[0] and "S3_PORT" in lines[0]
    assert "Traceback" not in err
    assert not (local / "s3.env").exists()
    assert main(["up", "--local_dir", str(local), "--port", "60000"]) == 2
    assert "outside 1024..54533" in capsys.readouterr().err
    assert not (local / "s3.env").exists()


def _free_low_port(start: int) -> int:
    """A free port below MAX_S3_PORT (the server's gRPC ports are the S3 port + 10000 and more)."""
    for port in range(start, start + 2000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


def test_s3_port_serves_on_another_port_with_the_same_keys(tmp_path: Path) -> None:
    local = tmp_path / ".local"
    first, second = _free_low_port(23100), _free_low_port(27300)
    up = [sys.executable, "-m", "sam2.tools.s3_server", "up", "--local_dir", str(local)]
    try:
        done = subprocess.run(
            [*up, "--port", str(first)], cwd=REPO, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr
        keys = (local / "s3.env").read_text()
        assert f"S3_ENDPOINT_URL=http://127.0.0.1:{first}" in keys
        service_down(local)
        done = subprocess.run(
            [*up, "--port", str(second)], cwd=REPO, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr
        again = (local / "s3.env").read_text()
        assert f"S3_ENDPOINT_URL=http://127.0.0.1:{second}" in again
        key_lines = [line for line in keys.splitlines() if "AWS_" in line]
        assert key_lines and all(line in again for line in key_lines)
        with socket.create_connection(("127.0.0.1", second), timeout=5):
            pass
    finally:
        service_down(local)
