"""How a round's sparsity is shared among layers: uniform and inverse-sqrt."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpfl.choices import LayerSparsity
from mpfl.errors import ConfigError
from mpfl.maths.layer_sparsity import ALLOCATIONS, get_allocation, inverse_sqrt, uniform
from mpfl.maths.schedules import keep_count

LENET5 = [150, 2400, 48_000, 10_080, 840]  # its Conv/Linear weights, layer by layer


def test_every_choice_has_an_allocation() -> None:
    assert set(ALLOCATIONS) == set(LayerSparsity)
    assert get_allocation("uniform") is uniform
    with pytest.raises(ConfigError, match="layer_sparsity"):
        get_allocation("erk")


def test_uniform_is_the_target_everywhere() -> None:
    assert uniform(LENET5, 0.9) == (0.9,) * 5


def test_inverse_sqrt_on_lenet5_at_90_percent() -> None:
    # density c / sqrt(n): the first convolution would exceed 1, so it stays whole and
    # the other four share the rest: c = (6,147 - 150) / (49 + 219.1 + 100.4 + 29.0).
    r = inverse_sqrt(LENET5, 0.9)
    assert r[0] == 0.0
    c = (0.1 * sum(LENET5) - 150) / sum(np.sqrt(LENET5[1:]))
    assert r[1:] == pytest.approx([1 - c / np.sqrt(n) for n in LENET5[1:]])
    assert r[2] == pytest.approx(0.9311, abs=1e-4)  # the 48,000-weight layer
    kept = sum(keep_count(n, x) for n, x in zip(LENET5, r, strict=True))
    assert abs(kept - 0.1 * sum(LENET5)) <= len(LENET5)


def test_inverse_sqrt_edges() -> None:
    assert inverse_sqrt([], 0.5) == ()
    assert inverse_sqrt([0, 10], 0.5) == (0.0, 0.5)
    assert inverse_sqrt([1], 0.9) == (0.9,)
    assert inverse_sqrt(LENET5, 0.0) == (0.0,) * 5
    with pytest.raises(ConfigError):
        inverse_sqrt(LENET5, 1.0)
    with pytest.raises(ConfigError):
        inverse_sqrt([-1], 0.5)


@given(st.lists(st.integers(0, 50_000), min_size=1, max_size=8),
       st.floats(0.0, 0.99, allow_nan=False))
def test_inverse_sqrt_keeps_the_overall_target_and_favours_small_layers(
    sizes: list[int], target: float,
) -> None:
    r = inverse_sqrt(sizes, target)
    assert len(r) == len(sizes) and all(0.0 <= x < 1.0 for x in r)
    n = np.asarray(sizes, dtype=np.float64)
    if n.sum():
        kept = float(((1 - np.asarray(r)) * n).sum())
        assert kept == pytest.approx((1 - target) * n.sum(), rel=1e-9, abs=1e-6)
    order = np.argsort(n, kind="stable")
    by_size = np.asarray(r)[order][n[order] > 0]
    assert np.all(np.diff(by_size) >= -1e-12)  # a larger layer is never less sparse
