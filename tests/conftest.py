"""Shared pytest setup: markers and the skip rule for GPU tests."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester", "s3_server"]  # s3_server: private SeaweedFS fixtures (DATA-PREP)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "slow: longer than a few seconds; run with `make test-all`")


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
