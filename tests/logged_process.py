"""A child process in a session of its own whose combined output is kept line by line and written to a log
file as it comes: the training nodes of the signal, outage and TrainJob tests."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path


class LoggedProcess:
    def __init__(self, command: list[str], env: dict[str, str], log: Path, cwd: str | None = None) -> None:
        self.log = log
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as out:
            for line in self.proc.stdout:
                self.lines.append(line)
                out.write(line)
                out.flush()

    def text(self) -> str:
        return "".join(self.lines)

    def wait(self, seconds: float = 180) -> int:
        code = self.proc.wait(seconds)
        self._pump.join(10)
        return code


def publish_tiny_dataset(data: Path, s3_store, bucket: str, num_frames: int, make_clips) -> str:
    """Two short clips ("a", "b") and their train list under `data`, uploaded to the local S3 server."""
    make_clips(data, {"a": num_frames, "b": num_frames})
    (data / "splits").mkdir()
    (data / "splits" / "train.txt").write_text("a\nb\n")
    uri = f"s3://{bucket}/datasets/tiny/v1"
    s3_store.upload_folder(data, uri)
    return uri
