"""The memory guard: the training-memory estimate and the batch size it lets a board use."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware.catalog import Profile, get_profile
from hardware.memory import (
    DEFAULT_ACTIVATION_FACTOR,
    MIB,
    TORCH_TRAINING_OVERHEAD_MB,
    apply_threads,
    estimate_training_bytes,
    memory_guard,
)
from mpfl.errors import ConfigError, HardwareError

LENET_PARAMS = 61_706
MNIST_SAMPLE = (1, 28, 28)


def _profile(budget_mb: int, *, role: str = "train", ram_mb: int = 65536) -> Profile:
    return Profile(
        name="test",
        version=1,
        description="test board",
        arch="x86_64",
        cores=2,
        ram_mb=ram_mb,
        torch_threads=2,
        batch_size=64,
        train_memory_budget_mb=budget_mb,
        role=role,
        role_reason="for tests",
        link="wifi",
    )


def test_estimate_adds_documented_terms() -> None:
    base = estimate_training_bytes(0, (1,), 1, "sgd", activation_bytes_per_sample=0)
    assert base == TORCH_TRAINING_OVERHEAD_MB * MIB + 4  # runtime + one 1-float input
    params = 1000
    for optimizer, slots in [("sgd", 0), ("sgd-momentum", 1), ("adam", 2)]:
        got = estimate_training_bytes(params, (1,), 1, optimizer, activation_bytes_per_sample=0)
        assert got - base == params * 4 * (2 + slots)
    with_batch = estimate_training_bytes(0, (3, 32, 32), 8, "sgd", activation_bytes_per_sample=100)
    assert with_batch - TORCH_TRAINING_OVERHEAD_MB * MIB == 8 * (3 * 32 * 32 * 4 + 100)
    guessed = estimate_training_bytes(0, (3, 32, 32), 8, "sgd")
    assert guessed - with_batch == 8 * (DEFAULT_ACTIVATION_FACTOR * 3 * 32 * 32 * 4 - 100)
    with_data = estimate_training_bytes(
        0, (1,), 1, "sgd", activation_bytes_per_sample=0, dataset_bytes=12345
    )
    assert with_data - base == 12345


def test_guard_halves_batch_size_until_it_fits() -> None:
    # 85 MiB above the runtime overhead; 1 MiB per sample: 256 -> 128 -> 64 fits.
    profile = _profile(TORCH_TRAINING_OVERHEAD_MB + 85)
    chosen = memory_guard(profile, 0, (1,), 256, "sgd", activation_bytes_per_sample=MIB - 4)
    assert chosen == 64
    assert memory_guard(profile, 0, (1,), 50, "sgd", activation_bytes_per_sample=MIB - 4) == 50


@given(
    budget_extra=st.integers(min_value=1, max_value=2000),
    params=st.integers(min_value=0, max_value=50_000_000),
    batch=st.integers(min_value=1, max_value=1024),
    act=st.integers(min_value=0, max_value=20 * MIB),
)
def test_guard_returns_largest_halving_that_fits(
    budget_extra: int, params: int, batch: int, act: int
) -> None:
    profile = _profile(TORCH_TRAINING_OVERHEAD_MB + budget_extra)
    budget = profile.train_memory_budget_mb * MIB

    def need(b: int) -> int:
        return estimate_training_bytes(params, (3, 8, 8), b, activation_bytes_per_sample=act)

    try:
        chosen = memory_guard(profile, params, (3, 8, 8), batch, activation_bytes_per_sample=act)
    except HardwareError:
        assert need(1) > budget
        return
    halvings = [batch >> k for k in range(batch.bit_length())]
    assert chosen in halvings
    assert need(chosen) <= budget
    assert all(need(b) > budget for b in halvings if b > chosen)


def test_guard_refuses_infer_only_profile_with_one_line_message() -> None:
    zero = get_profile("rpi-zero2w")
    with pytest.raises(HardwareError) as info:
        memory_guard(zero, LENET_PARAMS, MNIST_SAMPLE, 8)
    assert "inference-only" in str(info.value) and "\n" not in str(info.value)


def test_zero2w_cannot_train_lenet_even_when_forced() -> None:
    with pytest.raises(HardwareError, match="even with batch size 1") as info:
        memory_guard(get_profile("rpi-zero2w"), LENET_PARAMS, MNIST_SAMPLE, 8, force=True)
    assert "\n" not in str(info.value)


def test_lenet_fits_on_a_pi4_at_the_default_batch() -> None:
    profile = get_profile("rpi4")
    dataset = 6000 * math.prod(MNIST_SAMPLE) * 4
    chosen = memory_guard(
        profile, LENET_PARAMS, MNIST_SAMPLE, profile.batch_size, dataset_bytes=dataset
    )
    assert chosen == profile.batch_size


def test_guard_refuses_a_model_larger_than_the_budget() -> None:
    profile = get_profile("rpi4-2gb")
    too_many = profile.train_memory_budget_mb * MIB // 4  # weights alone fill the budget
    with pytest.raises(HardwareError, match="even with batch size 1"):
        memory_guard(profile, too_many, MNIST_SAMPLE, 32, "adam")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"optimizer": "lion"},
        {"sample_shape": (0, 28)},
        {"sample_shape": ()},
        {"model_param_count": -1},
    ],
)
def test_guard_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "profile": get_profile("rpi4"),
        "model_param_count": LENET_PARAMS,
        "sample_shape": MNIST_SAMPLE,
        "batch_size": 32,
        "optimizer": "sgd",
    }
    args.update(kwargs)
    with pytest.raises(ConfigError):
        memory_guard(**args)


def test_apply_threads_sets_torch_threads() -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        profile = dataclasses.replace(_profile(1000), torch_threads=1)
        assert apply_threads(profile) == 1
        assert torch.get_num_threads() == 1
        many = dataclasses.replace(_profile(1000), cores=512, torch_threads=512)
        assert apply_threads(many) == min(512, os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)
