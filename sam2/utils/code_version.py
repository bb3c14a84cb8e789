"""The version of the code that runs, in one format for every place that records it: MLflow's
``code_version`` param and tag, Kubeflow Pipelines version names and container image tags.

Format: ``<package version>-<12-hex git commit>`` in a git checkout (``-dirty`` appended when tracked
files differ from the commit), the installed package's version elsewhere (a wheel in site-packages), and
``unversioned`` when neither is known. Every form is a valid image tag (``[A-Za-z0-9_.-]``, at most 128
characters), so the same string names the image, the pipeline version and the MLflow run's code.

``python -m sam2.utils.code_version`` prints it (the Makefile tags images with it); the module uses the
standard library only, so it runs before the package's dependencies are installed.
"""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

DIST_NAME = "sam2-kubeflow"
REPO_ROOT = Path(__file__).resolve().parents[2]
UNVERSIONED = "unversioned"
_PROJECT_VERSION = re.compile(r'^version\s*=\s*"([^"]+)"', flags=re.MULTILINE)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def _checkout_version(root: Path) -> str:
    """``<pyproject version>-<commit>[-dirty]`` of the checkout at ``root``; raises ``OSError`` or
    ``subprocess.SubprocessError`` when ``root`` is no git checkout of this project."""
    if not (root / ".git").exists():  # a wheel in site-packages: a repository around it is not ours
        raise OSError(f"{root} is not a git checkout")
    found = _PROJECT_VERSION.search((root / "pyproject.toml").read_text())
    if found is None:
        raise OSError(f"{root / 'pyproject.toml'} states no version")
    commit = _git(root, "rev-parse", "--short=12", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    return f"{found.group(1)}-{commit}{'-dirty' if dirty else ''}"


def code_version(root: Path = REPO_ROOT) -> str:
    """The version of the code at ``root`` (this package's checkout by default), in the module's format."""
    try:
        return _checkout_version(root)
    except (OSError, subprocess.SubprocessError):
        try:
            return metadata.version(DIST_NAME)
        except metadata.PackageNotFoundError:
            return UNVERSIONED


if __name__ == "__main__":
    print(code_version())
