"""Sparsity schedules: the target sparsity r_t of mask round t.

A schedule is one function ``(t, total_rounds, final_sparsity) -> r_t``. Nodes and the
coordinator call the same one, so a node prunes exactly as far as the vote will ask.
Every schedule is non-decreasing in t, stays in [0, 1), and returns exactly
``final_sparsity`` at ``t == total_rounds`` (and for any later round: sparsity holds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

from mpfl.choices import ScheduleName
from mpfl.errors import ConfigError, lookup

Schedule = Callable[[int, int, float], float]

DEFAULT_SCHEDULE = ScheduleName.LINEAR


def _check(t: int, total_rounds: int, final_sparsity: float) -> None:
    if total_rounds < 1:
        raise ConfigError("total mask rounds must be at least 1", total_rounds=total_rounds)
    if t < 1:
        raise ConfigError("mask rounds count from 1", round=t)
    if not (0.0 <= final_sparsity < 1.0):
        raise ConfigError("final sparsity must be in [0, 1)", final_sparsity=final_sparsity)


def linear(t: int, total_rounds: int, final_sparsity: float) -> float:
    """r_t = r_final * t / T: the reference code's q * t with q = r_final / T."""
    _check(t, total_rounds, final_sparsity)
    # t / T first, so t == T gives exactly 1.0 and hence exactly r_final.
    return final_sparsity * (min(t, total_rounds) / total_rounds)


def geometric(t: int, total_rounds: int, final_sparsity: float) -> float:
    """r_t = 1 - (1 - q)^t: prune a fixed fraction q of the alive units every round.

    q is chosen so that 1 - (1 - q)^T = r_final, i.e. (1 - q)^t = (1 - r_final)^(t / T).
    """
    _check(t, total_rounds, final_sparsity)
    if t >= total_rounds:
        return final_sparsity
    value = 1.0 - (1.0 - final_sparsity) ** (t / total_rounds)
    # pow rounding must not push an early round past the final target.
    return min(value, final_sparsity)


def cubic(t: int, total_rounds: int, final_sparsity: float) -> float:
    """r_t = r_final * (1 - (1 - t/T)^3) (Zhu & Gupta, 2017): prune fast early, slowly late."""
    _check(t, total_rounds, final_sparsity)
    progress = min(t, total_rounds) / total_rounds
    return final_sparsity * (1.0 - (1.0 - progress) ** 3)


SCHEDULES: Mapping[ScheduleName, Schedule] = MappingProxyType({
    ScheduleName.LINEAR: linear,
    ScheduleName.GEOMETRIC: geometric,
    ScheduleName.CUBIC: cubic,
})


def get_schedule(name: str) -> Schedule:
    """Look a schedule up by its config name."""
    return lookup(SCHEDULES, name, "sparsity schedule", "schedule")


def keep_count(n_units: int, sparsity: float) -> int:
    """Units a layer of ``n_units`` keeps at ``sparsity``: ceil((1 - sparsity) * n_units).

    Computed as n - floor(sparsity * n), where a product within float noise of an integer
    counts as that integer: 0.29 * 100 = 28.999999999999996 prunes 29. The noise is about
    2e-16 relative; the tolerance is 1e-12 relative, far below any real fractional part.
    """
    if n_units < 0:
        raise ConfigError("a layer cannot have a negative number of units", n_units=n_units)
    if not (0.0 <= sparsity < 1.0):
        raise ConfigError("sparsity must be in [0, 1)", sparsity=sparsity)
    pruned_exact = sparsity * n_units
    nearest = round(pruned_exact)
    if abs(pruned_exact - nearest) <= 1e-12 * max(1.0, pruned_exact):
        return n_units - nearest
    return n_units - math.floor(pruned_exact)
