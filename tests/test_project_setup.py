"""The project installs as a package: configs resolve from anywhere, wheels carry them, markers work."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = [f"configs/sam2.1/sam2.1_hiera_{size}.yaml" for size in ("t", "s", "b+", "l")]


def test_config_names_resolve_from_any_working_directory(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import importlib.resources
        root = importlib.resources.files("sam2")
        for name in {MODEL_CONFIGS!r}:
            assert root.joinpath(name).is_file(), name
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_wheel_carries_packages_and_configs(tmp_path: Path) -> None:
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    src = tmp_path / "src"
    for rel in filter(None, tracked):
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        source = REPO / rel
        if source.is_symlink():
            target.symlink_to(source.readlink())
        elif source.is_file():
            shutil.copy2(source, target)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", "."],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (wheel,) = (src / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in ("sam2/__init__.py", "components/__init__.py", "pipelines/__init__.py"):
        assert pkg in names
    for cfg in MODEL_CONFIGS:
        assert f"sam2/{cfg}" in names, f"{cfg} missing from the wheel"


def test_gpu_marker_skips_with_a_reason_without_cuda(pytester: pytest.Pytester) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present; the skip rule does not apply")
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpu
        def test_needs_cuda():
            raise AssertionError("must not run without CUDA")
        """
    )
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*CUDA is not available*"])
