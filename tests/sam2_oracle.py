"""The official `sam2==1.1.0` package as a reference oracle for tests.

Our package is also called `sam2`, so the official one can never be imported in the test process. It is
installed once (no compiled extension, no dependencies beyond the few it imports that our venv lacks) into
`<repo>/.cache/sam2_ref` and every use happens in a subprocess whose cwd lies outside the repository and
whose `PYTHONPATH` starts with that directory. Tensors travel both ways through `torch.save` files.

Usage in a test module::

    from sam2_oracle import oracle_checkpoint, require_oracle, run_oracle

    @pytest.fixture(scope="session")
    def oracle_dir():
        return require_oracle()          # skips the test when pip cannot reach the registry
                                         # (fails instead under SAM2_REQUIRE_ORACLE=1, as in CI)

    def test_x(oracle_dir, tmp_path):
        out = run_oracle('outputs["y"] = inputs["x"] * 2', {"x": torch.ones(3)})

Inside an oracle script the names `inputs` (the dict given to `run_oracle`), `outputs` (a dict to fill;
it is saved and returned) and `torch` are defined.

Tests that do not compare against the official numbers (bad input, later passes not failing, error
messages) take their weights from `own_checkpoint` instead, which our own package writes, so they run
whether or not the oracle can be installed.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
ORACLE_VERSION = "1.1.0"
ORACLE_DIR = Path(os.environ.get("SAM2_ORACLE_DIR", REPO_ROOT / ".cache" / "sam2_ref"))
CHECKPOINT_CACHE = REPO_ROOT / ".cache" / "sam2_ref_checkpoints"
# Imported by the official package (iopath by the Hiera module) but not dependencies of ours.
_EXTRA_RUNTIME_PACKAGES = {"iopath": "iopath", "portalocker": "portalocker"}
# The whole install (one or two pip calls) gets well under pytest's 600 s per-test timeout (pyproject),
# so a hung registry becomes an OracleUnavailable with pip's command line, not a pytest-timeout traceback.
_PIP_TIMEOUT_S = 240
# SAM2_REQUIRE_ORACLE=1 (set by .ci/run) turns "oracle unavailable" from a skip into a failure, so a run
# that could not install the oracle cannot go green without the comparisons.
REQUIRE_ENV = "SAM2_REQUIRE_ORACLE"


class OracleUnavailable(RuntimeError):
    """The official package could not be installed (usually: the package registry is unreachable)."""


# The first failed install of this process; later callers get the same error without running pip again.
_install_error: OracleUnavailable | None = None


def _marker(target: Path) -> Path:
    return target / f".installed-sam2-{ORACLE_VERSION}"


def _pip(args: list[str], env: dict[str, str], deadline: float) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=max(deadline - time.monotonic(), 1.0)
        )
    except subprocess.TimeoutExpired as err:
        raise OracleUnavailable(
            f"`{' '.join(cmd)}` did not finish within the install's {_PIP_TIMEOUT_S} s"
        ) from err
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise OracleUnavailable(f"`{' '.join(cmd)}` failed: " + " | ".join(tail))


def _missing_runtime_packages() -> list[str]:
    """The oracle's import-time dependencies that the running interpreter cannot import."""
    missing = []
    for module, dist in _EXTRA_RUNTIME_PACKAGES.items():
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, cwd="/")
        if probe.returncode != 0:
            missing.append(dist)
    return missing


def _install(target: Path) -> None:
    """Installs the oracle into a fresh temporary directory and moves it to `target` when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sam2_ref-", dir=target.parent))
    env = {**os.environ, "SAM2_BUILD_CUDA": "0", "SAM2_BUILD_ALLOW_ERRORS": "1"}
    deadline = time.monotonic() + _PIP_TIMEOUT_S
    try:
        # The sdist's setup.py imports torch, hence no build isolation: it builds against the venv's torch.
        _pip(
            ["--no-deps", "--no-build-isolation", "--target", str(staging), f"sam2=={ORACLE_VERSION}"],
            env,
            deadline,
        )
        extras = _missing_runtime_packages()
        if extras:
            _pip(["--no-deps", "--target", str(staging), *extras], env, deadline)
        _marker(staging).write_text(f"sam2=={ORACLE_VERSION} {' '.join(extras)}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def ensure_oracle() -> Path:
    """Returns the directory holding the official package, installing it on first use.

    Safe when several test processes call it at once (a file lock serialises the install).
    Raises OracleUnavailable when pip cannot install it; a failure is remembered for the rest of the
    process, so pip runs (and may time out) at most once per test session.
    """
    global _install_error
    if _marker(ORACLE_DIR).exists():
        return ORACLE_DIR
    if _install_error is not None:
        raise _install_error
    ORACLE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(ORACLE_DIR.parent / ".sam2_ref.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _marker(ORACLE_DIR).exists():
            try:
                _install(ORACLE_DIR)
            except OracleUnavailable as err:
                _install_error = err
                raise
    return ORACLE_DIR


def oracle_required() -> bool:
    """Whether an unavailable oracle must fail the tests that need it (SAM2_REQUIRE_ORACLE=1) instead of
    skipping them."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes"}


def require_oracle() -> Path:
    """`ensure_oracle` for tests: when the oracle is unavailable, skips the calling test with the reason,
    or fails it with the install error when SAM2_REQUIRE_ORACLE=1."""
    try:
        return ensure_oracle()
    except OracleUnavailable as err:
        reason = f"official sam2=={ORACLE_VERSION} oracle unavailable: {err}"
    if oracle_required():
        message = f"{reason} ({REQUIRE_ENV}=1: the comparisons with the official package must run)"
        pytest.fail(message, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sam2_oracle_dir() -> Path:
    """Session fixture form of `require_oracle` (import it into a test module to use it)."""
    return require_oracle()


_PRELUDE = """\
import sys
import torch
import sam2 as _oracle_pkg
if not _oracle_pkg.__file__.startswith({oracle!r}):
    raise SystemExit("oracle subprocess imported the wrong sam2 package: " + _oracle_pkg.__file__)
inputs = torch.load(sys.argv[1], weights_only=False)
outputs = {{}}
"""
_EPILOGUE = """
torch.save(outputs, sys.argv[2])
"""


def run_oracle(script: str, inputs: dict[str, Any] | None = None, timeout: float = 600) -> dict[str, Any]:
    """Runs `script` with the official package in a subprocess and returns the `outputs` dict it fills.

    `inputs` (anything torch.save can store) is visible to the script as `inputs`; scripts set their own
    seeds and thread counts.
    Raises RuntimeError with the subprocess's stderr when the script fails.
    """
    oracle = ensure_oracle()
    with tempfile.TemporaryDirectory(prefix="sam2_oracle_run-") as workdir:
        work = Path(workdir)
        script_path = work / "oracle_script.py"
        body = _PRELUDE.format(oracle=str(oracle)) + textwrap.dedent(script) + _EPILOGUE
        script_path.write_text(body)
        torch.save(inputs or {}, work / "inputs.pt")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(oracle)
        env["PYTHONNOUSERSITE"] = "1"
        proc = subprocess.run(
            [sys.executable, str(script_path), str(work / "inputs.pt"), str(work / "outputs.pt")],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"oracle script failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
        return torch.load(work / "outputs.pt", weights_only=False)


_CHECKPOINT_SCRIPT = """
import torch
from sam2.build_sam import build_sam2
torch.manual_seed(inputs["seed"])
model = build_sam2(inputs["config"], None, device="cpu", mode="eval", apply_postprocessing=False)
gen = torch.Generator().manual_seed(inputs["seed"] + 1)
state = model.state_dict()
for name, value in state.items():
    if value.is_floating_point():
        # Default init leaves some tensors at zero (position embeddings, "no object" embeddings); a small
        # random perturbation makes every parameter matter in comparisons.
        value.add_(inputs["noise"] * torch.randn(value.shape, generator=gen, dtype=value.dtype))
import os
partial = f"{inputs['out']}.{os.getpid()}.tmp"
torch.save({"model": state}, partial)
os.replace(partial, inputs["out"])
outputs["num_params"] = sum(p.numel() for p in model.parameters())
"""


def oracle_checkpoint(config: str, seed: int = 0, noise: float = 0.02, cache: bool = True) -> Path:
    """A random-weight `{"model": state_dict}` checkpoint written by the official package for `config`.

    `config` is an official config name such as "configs/sam2.1/sam2.1_hiera_t.yaml" (or the 2.0 name
    "configs/sam2/sam2_hiera_t.yaml"). Weights are the official default init with Gaussian noise of std
    `noise` added, seeded by `seed`. With `cache`, the file is kept under `.cache/sam2_ref_checkpoints`
    and reused; otherwise it lives in a temporary directory owned by the caller to delete.
    """
    stem = config.replace("/", "_").removesuffix(".yaml")
    if cache:
        CHECKPOINT_CACHE.mkdir(parents=True, exist_ok=True)
        out = CHECKPOINT_CACHE / f"{stem}-seed{seed}-noise{noise}.pt"
        if out.exists():
            return out
    else:
        out = Path(tempfile.mkdtemp(prefix="sam2_oracle_ckpt-")) / f"{stem}.pt"
    run_oracle(_CHECKPOINT_SCRIPT, {"config": config, "seed": seed, "noise": noise, "out": str(out)})
    return out


def own_checkpoint(config: str, out: Path, seed: int = 0, noise: float = 0.02) -> Path:
    """A random-weight `{"model": state_dict}` checkpoint for `config` written by our own package, with
    `oracle_checkpoint`'s recipe (default init plus Gaussian noise of std `noise`, seeded by `seed`).

    For tests that need realistic weights but no official numbers: it needs no oracle. Its layout is the
    official one (tests/test_model_checkpoints.py checks parameter names and shapes against the official
    package), its values are not the oracle's. Written atomically to `out`, which is returned.
    """
    from sam2.build_sam import build_sam2
    from sam2.utils.atomic_io import atomic_open

    torch.manual_seed(seed)
    model = build_sam2(config, None, device="cpu", mode="eval", apply_postprocessing=False)
    gen = torch.Generator().manual_seed(seed + 1)
    state = model.state_dict()
    for value in state.values():
        if value.is_floating_point():
            value.add_(noise * torch.randn(value.shape, generator=gen, dtype=value.dtype))
    with atomic_open(out) as stream:
        torch.save({"model": state}, stream)
    return Path(out)
