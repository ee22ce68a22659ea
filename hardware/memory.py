"""The memory guard: whether local training fits a profile's budget, and at what batch size.

It works on counts passed in (parameters, sample shape, batch size), not on a model, so it
runs in the coordinator, in the simulator and in tests alike; only ``apply_threads``
imports torch, lazily.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from hardware.catalog import Profile
from mpfl.errors import ConfigError, HardwareError

MIB = 1024 * 1024
BYTES_PER_FLOAT = 4

# Peak RSS of a torch process that has run one SGD step on LeNet-5 (batch 1), measured on
# x86-64 with the torch 2.13 CPU wheel: ~315 MB (`import torch` alone: ~225 MB; the first
# backward pass loads the rest). Charged once per training process.
# benchmarks/bench_edge.py re-measures it on the target board.
TORCH_TRAINING_OVERHEAD_MB = 315

# Extra float tensors per parameter kept by each optimizer, on top of weight + gradient.
OPTIMIZER_SLOTS: Mapping[str, int] = {"sgd": 0, "sgd-momentum": 1, "adam": 2, "adamw": 2}

# Used only when the caller cannot give activation bytes per sample: activations kept for
# the backward pass plus their gradients, as a multiple of the input size. LeNet-5 on
# 28x28 inputs is ~30x; VGG-style CIFAR models are higher. A crude, deliberately large guess.
DEFAULT_ACTIVATION_FACTOR = 64


def estimate_training_bytes(
    model_param_count: int,
    sample_shape: Sequence[int],
    batch_size: int,
    optimizer: str = "sgd-momentum",
    *,
    activation_bytes_per_sample: int | None = None,
    dataset_bytes: int = 0,
) -> int:
    """Peak bytes of a training process, by a simple additive model (fp32 everywhere).

    runtime overhead (TORCH_TRAINING_OVERHEAD_MB)
    + params * 4 * (weight + gradient + optimizer slots)
    + batch * (input bytes + activation bytes per sample)
    + dataset_bytes (the local partition held in memory, if any)

    ``activation_bytes_per_sample`` is what the forward pass keeps for backward plus its
    gradients; without it, DEFAULT_ACTIVATION_FACTOR times the input size is assumed.
    """
    if optimizer not in OPTIMIZER_SLOTS:
        raise ConfigError(
            f"unknown optimizer; known: {', '.join(OPTIMIZER_SLOTS)}", optimizer=optimizer
        )
    if model_param_count < 0 or dataset_bytes < 0:
        raise ConfigError("parameter count and dataset bytes must not be negative")
    if batch_size < 1:
        raise ConfigError("batch size must be at least 1", batch_size=batch_size)
    if not sample_shape or any(int(d) < 1 for d in sample_shape):
        raise ConfigError("sample shape must be positive dimensions", shape=tuple(sample_shape))
    input_bytes = math.prod(int(d) for d in sample_shape) * BYTES_PER_FLOAT
    if activation_bytes_per_sample is None:
        activation_bytes_per_sample = DEFAULT_ACTIVATION_FACTOR * input_bytes
    elif activation_bytes_per_sample < 0:
        raise ConfigError("activation bytes per sample must not be negative")
    state = model_param_count * BYTES_PER_FLOAT * (2 + OPTIMIZER_SLOTS[optimizer])
    batch = batch_size * (input_bytes + activation_bytes_per_sample)
    return TORCH_TRAINING_OVERHEAD_MB * MIB + state + batch + dataset_bytes


def memory_guard(
    profile: Profile,
    model_param_count: int,
    sample_shape: Sequence[int],
    batch_size: int,
    optimizer: str = "sgd-momentum",
    *,
    activation_bytes_per_sample: int | None = None,
    dataset_bytes: int = 0,
    force: bool = False,
) -> int:
    """The largest batch size (``batch_size`` halved until it fits) within the budget.

    Raises HardwareError when the profile is infer-only (unless ``force``, for measuring
    whether the decision still holds) or when even batch size 1 does not fit.
    """
    if batch_size < 1:
        raise ConfigError("batch size must be at least 1", batch_size=batch_size)
    if not profile.trains and not force:
        raise HardwareError(
            f"profile {profile.name} is inference-only ({profile.role_reason}); export the "
            "model and run it with mpfl-infer, or choose another profile",
            profile=profile.label,
        )
    budget = profile.train_memory_budget_mb * MIB
    candidate = batch_size
    needed = 0
    while candidate >= 1:
        needed = estimate_training_bytes(
            model_param_count,
            sample_shape,
            candidate,
            optimizer,
            activation_bytes_per_sample=activation_bytes_per_sample,
            dataset_bytes=dataset_bytes,
        )
        if needed <= budget:
            return candidate
        candidate //= 2
    raise HardwareError(
        f"training does not fit on {profile.name} even with batch size 1: needs "
        f"{needed / MIB:.0f} MB, budget {profile.train_memory_budget_mb} MB",
        profile=profile.label,
        params=model_param_count,
        optimizer=optimizer,
    )


def apply_threads(profile: Profile) -> int:
    """Set torch's intra-op threads from the profile, capped at the CPUs present."""
    import torch  # lazy: the rest of this module must stay torch-free

    threads = max(1, min(profile.torch_threads, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    return threads
