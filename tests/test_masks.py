"""A node's local mask: scores, keep counts per layer, never reviving a pruned unit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mpfl.errors import ConfigError
from mpfl.maths import schedules
from mpfl.ml import masks
from mpfl.ml.masks import local_mask, unit_scores
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.units import build_unit_map, model_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@st.composite
def proposals(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, list[slice], float]:
    """Random layers, an alive mask, scores with ties (small integers) and a target."""
    sizes = draw(st.lists(st.integers(0, 40), min_size=1, max_size=6))
    layers, start = [], 0
    for size in sizes:
        layers.append(slice(start, start + size))
        start += size
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    alive = rng.random(start) < draw(st.floats(0.0, 1.0))
    tied = draw(st.booleans())
    scores = rng.integers(0, 4, start).astype(float) if tied else rng.standard_normal(start)
    target = draw(st.floats(0.0, 0.99))
    return scores, alive, layers, target


def _top_alive(scores: np.ndarray, alive: np.ndarray, k: int) -> set[int]:
    """The k best alive units: score descending, then lower index (own ranking)."""
    ranked = sorted(np.flatnonzero(alive), key=lambda i: (-scores[i], i))
    return {int(i) for i in ranked[:k]}


@given(proposals())
def test_layer_scope_keeps_the_best_alive_units_exactly_per_layer(
    case: tuple[np.ndarray, np.ndarray, list[slice], float],
) -> None:
    scores, alive, layers, target = case
    mask = local_mask(scores, alive, layers, target)
    assert mask.dtype == bool and mask.shape == alive.shape
    assert not np.any(mask & ~alive)  # never revives
    for s in layers:
        n = s.stop - s.start
        n_alive = int(alive[s].sum())
        want = min(n_alive, max(1, schedules.keep_count(n, target)))
        assert int(mask[s].sum()) == want
        if n_alive:
            assert mask[s].any()  # at least one unit per layer that had any
        kept = {int(i) for i in np.flatnonzero(mask[s])}
        assert kept == _top_alive(scores[s], alive[s], want)


@given(proposals())
def test_global_scope_keeps_the_global_best_and_rescues_empty_layers(
    case: tuple[np.ndarray, np.ndarray, list[slice], float],
) -> None:
    scores, alive, layers, target = case
    mask = local_mask(scores, alive, layers, target, scope="global")
    assert not np.any(mask & ~alive)
    k = min(int(alive.sum()), max(1, schedules.keep_count(len(alive), target)))
    best = _top_alive(scores, alive, k)
    kept = {int(i) for i in np.flatnonzero(mask)}
    assert best <= kept
    extra = kept - best
    for s in layers:
        in_layer = {i for i in kept if s.start <= i < s.stop}
        if alive[s].any():
            assert in_layer
        rescued = in_layer & extra
        if rescued:  # only a layer the global cut emptied gets one unit back: its best
            assert not (in_layer & best) and len(rescued) == 1
            best_local = _top_alive(scores[s], alive[s], 1)
            assert {i - s.start for i in rescued} == best_local


def test_a_layer_with_fewer_alive_units_than_the_keep_count_keeps_them_all() -> None:
    alive = np.array([True, False, False, False, True, False, False, False, False, False])
    mask = local_mask(np.arange(10.0), alive, [slice(0, 10)], target=0.5)
    np.testing.assert_array_equal(mask, alive)


def test_layer_targets_are_met_exactly_from_a_full_mask() -> None:
    layers = [slice(0, 10), slice(10, 17), slice(17, 117)]
    scores = np.random.default_rng(0).standard_normal(117)
    for target in (0.0, 0.1, 0.29, 0.5, 0.7, 0.9, 0.95):
        mask = local_mask(scores, np.ones(117, dtype=bool), layers, target)
        for s in layers:
            n = s.stop - s.start
            assert mask[s].sum() == max(1, n - int(np.floor(target * n + 1e-9)))


@pytest.mark.parametrize("target", [-0.1, 1.0, 1.5])
def test_targets_outside_0_1_are_config_errors(target: float) -> None:
    with pytest.raises(ConfigError):
        local_mask(np.zeros(3), np.ones(3, dtype=bool), [slice(0, 3)], target)


def test_unknown_scope_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        local_mask(np.zeros(3), np.ones(3, dtype=bool), [slice(0, 3)], 0.5, scope="model")


def test_keep_count_has_one_definition() -> None:
    assert masks.keep_count is schedules.keep_count


@pytest.mark.parametrize("granularity", ["filter", "weight"])
def test_unit_scores_are_l2_norms_of_filters_or_absolute_weights(granularity: str) -> None:
    spec = ModelSpec("cnn-cifar", {"image_size": 8, "widths": [3, 4], "hidden": 5})
    model = build_model(spec, seed=2)
    umap = build_unit_map(model, spec, granularity)
    scores = unit_scores(model_state(model), umap)
    params = dict(model.named_parameters())
    expected = []
    for layer in umap.layers:
        w = params[layer.tensor].detach().double()
        if granularity == "filter":
            expected.append(torch.linalg.vector_norm(w.flatten(1), dim=1).numpy())
        else:
            expected.append(w.abs().flatten().numpy())
    np.testing.assert_allclose(scores, np.concatenate(expected), rtol=1e-12)
    assert scores.shape == (umap.n_units,)


def test_a_pruned_model_proposes_a_subset_of_its_mask() -> None:
    """End to end: scores of a masked state, then local_mask never revives."""
    spec = ModelSpec("mlp", {"image_size": 4, "hidden": [10, 8]})
    model = build_model(spec, seed=0)
    umap = build_unit_map(model, spec, "filter")
    alive = np.random.default_rng(3).random(umap.n_units) < 0.6
    state = umap.apply(model_state(model), alive)
    scores = unit_scores(state, umap)
    assert np.all(scores[~alive] == 0)
    proposal = local_mask(scores, alive, umap.slices, 0.5)
    assert not np.any(proposal & ~alive)
