"""Shared fixtures. Real datasets come from MPFL_DATA_DIR; under MPFL_REQUIRE_DATA=1 a
missing dataset fails the test instead of skipping it, so CI cannot pass without data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Shared, noisy machines: judge properties, never the wall clock of one example.
settings.register_profile("mpfl", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mpfl")

_FILES = {
    "mnist": "mnist/train-images-idx3-ubyte.gz",
    "fashion-mnist": "fashion-mnist/train-images-idx3-ubyte.gz",
    "cifar10": "cifar-10/cifar-10-batches-py/test_batch",
}


def require_dataset(name: str) -> Path:
    """The data directory holding ``name``; skip, or fail under MPFL_REQUIRE_DATA=1."""
    root = os.environ.get("MPFL_DATA_DIR")
    if root and (Path(root) / _FILES[name]).is_file():
        return Path(root)
    message = f"dataset {name} not found under MPFL_DATA_DIR={root!r}"
    if os.environ.get("MPFL_REQUIRE_DATA") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def mnist_dir() -> Path:
    return require_dataset("mnist")


@pytest.fixture
def fashion_dir() -> Path:
    return require_dataset("fashion-mnist")


@pytest.fixture
def cifar_dir() -> Path:
    return require_dataset("cifar10")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny models: on a shared 2-core machine torch's
    spinning worker threads make them 10x slower. The previous setting comes back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
