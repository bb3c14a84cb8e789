"""Shared pytest setup: markers and the skip rule for GPU tests."""

from __future__ import annotations

import logging

import pytest

pytest_plugins = ["pytester", "s3_server"]  # s3_server: private SeaweedFS fixtures (DATA-PREP)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "slow: longer than a few seconds; run with `make test-all`")


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Undo root-logger handlers a test adds: a CLI ``main()`` called in-process runs ``logging.basicConfig``,
    whose handler holds that test's captured stderr; once pytest closes it, every later log record printed
    "--- Logging error --- ValueError: I/O operation on closed file" into other tests' output."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def one_thread():
    """One torch intra-op thread: on a shared 2-core box two threads are several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="CUDA is not available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
