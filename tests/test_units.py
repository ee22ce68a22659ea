"""UnitMap: per-tensor masks, alive values and their inverse, apply, checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpfl.errors import ModelError
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.units import State, UnitMap, build_unit_map, model_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECS = {
    "mlp": ModelSpec("mlp", {"image_size": 4, "hidden": [6, 5]}),
    "cnn": ModelSpec("cnn-cifar", {"image_size": 8, "widths": [3, 4], "hidden": 5}),
    "resnet": ModelSpec("resnet8", {"widths": [2, 3, 4]}),
}
_CACHE: dict[tuple[str, str], tuple[UnitMap, State]] = {}


def _setup(key: str, granularity: str) -> tuple[UnitMap, State]:
    """A unit map and a random state with no zeros (so zeros can only come from a mask)."""
    if (key, granularity) not in _CACHE:
        model = build_model(SPECS[key], seed=0)
        umap = build_unit_map(model, SPECS[key], granularity)
        rng = np.random.default_rng(1)
        state = {k: (rng.random(v.shape, dtype=np.float32) + 0.5) * rng.choice([-1, 1], v.shape)
                 for k, v in model_state(model).items()}
        _CACHE[key, granularity] = umap, {k: v.astype(np.float32) for k, v in state.items()}
    return _CACHE[key, granularity]


cases = st.tuples(st.sampled_from(sorted(SPECS)), st.sampled_from(["filter", "weight"]),
                  st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))


def _random_mask(umap: UnitMap, seed: int, density: float) -> np.ndarray:
    return np.random.default_rng(seed).random(umap.n_units) < density


def _expected_pruned_positions(umap: UnitMap, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Pruned positions per tensor, worked out from the layer list, not tensor_masks."""
    shapes = dict(umap.shapes)
    out = {name: np.zeros(shape, dtype=bool) for name, shape in umap.shapes}
    for layer in umap.layers:
        dead = ~mask[layer.start : layer.start + layer.count]
        if umap.granularity == "weight":
            out[layer.tensor] |= dead.reshape(shapes[layer.tensor])
            continue
        for channel in np.flatnonzero(dead):
            out[layer.tensor][channel] = True
            for name in layer.coupled:
                out[name][channel] = True
    return out


@given(cases)
def test_apply_zeroes_exactly_the_pruned_positions(case: tuple[str, str, int, float]) -> None:
    key, granularity, seed, density = case
    umap, state = _setup(key, granularity)
    mask = _random_mask(umap, seed, density)
    applied = umap.apply(state, mask)
    for name, dead in _expected_pruned_positions(umap, mask).items():
        assert applied[name].dtype == np.float32
        assert np.all(applied[name][dead] == 0)
        np.testing.assert_array_equal(applied[name][~dead], state[name][~dead])


@given(cases)
def test_alive_values_round_trip_to_the_applied_state(case: tuple[str, str, int, float]) -> None:
    key, granularity, seed, density = case
    umap, state = _setup(key, granularity)
    mask = _random_mask(umap, seed, density)
    values = umap.alive_values(state, mask)
    dead = _expected_pruned_positions(umap, mask)
    assert values.dtype == np.float32
    assert values.shape == (umap.n_values - sum(int(d.sum()) for d in dead.values()),)
    assert sum(umap.layer_sizes(mask)) == len(values)
    assert np.all(values != 0)  # the state has no zeros, so no pruned value slipped in
    rebuilt = umap.state_from_values(values, mask)
    applied = umap.apply(state, mask)
    assert list(rebuilt) == [name for name, _ in umap.shapes]
    for name in applied:
        np.testing.assert_array_equal(rebuilt[name], applied[name])


@given(cases)
def test_tensor_masks_have_the_tensor_shapes(case: tuple[str, str, int, float]) -> None:
    key, granularity, seed, density = case
    umap, _ = _setup(key, granularity)
    mask = _random_mask(umap, seed, density)
    shapes = dict(umap.shapes)
    dead = _expected_pruned_positions(umap, mask)
    for name, m in umap.tensor_masks(mask).items():
        assert m.shape == shapes[name] and m.dtype == bool
        np.testing.assert_array_equal(~m, dead[name])


def test_full_mask_keeps_everything_and_values_are_the_whole_state() -> None:
    umap, state = _setup("resnet", "filter")
    values = umap.alive_values(state, umap.full_mask())
    assert len(values) == umap.n_values
    np.testing.assert_array_equal(values, np.concatenate([v.ravel() for v in state.values()]))
    assert umap.layer_sparsity(umap.full_mask()) == [0.0] * len(umap.layers)


def test_filter_pruning_counts_rows_and_coupled_entries() -> None:
    umap, state = _setup("cnn", "filter")
    mask = umap.full_mask()
    first = umap.layers[0]
    mask[first.start] = False
    row = int(np.prod(dict(umap.shapes)[first.tensor][1:]))
    assert len(umap.alive_values(state, mask)) == umap.n_values - row - len(first.coupled)


def test_layer_sparsity_per_layer() -> None:
    umap, _ = _setup("mlp", "filter")
    mask = umap.full_mask()
    a, b = umap.layers
    mask[a.start : a.start + 3] = False
    mask[b.start] = False
    assert umap.layer_sparsity(mask) == pytest.approx([3 / a.count, 1 / b.count])


@pytest.mark.parametrize("kind", ["short", "empty", "int8", "2d"])
def test_masks_that_do_not_fit_are_model_errors(kind: str) -> None:
    umap, state = _setup("mlp", "weight")
    n = umap.n_units
    bad = {"short": np.ones(n - 1, dtype=bool), "empty": np.ones(0, dtype=bool),
           "int8": np.ones(n, dtype=np.int8), "2d": np.ones((1, n), dtype=bool)}[kind]
    for call in (umap.check_mask, umap.tensor_masks, lambda m: umap.alive_values(state, m),
                 lambda m: umap.apply(state, m)):
        with pytest.raises(ModelError):
            call(bad)


def test_states_that_do_not_fit_are_model_errors() -> None:
    umap, state = _setup("mlp", "filter")
    mask = umap.full_mask()
    name = umap.layers[0].tensor
    wrong_shape = dict(state, **{name: state[name][:1]})
    missing = {k: v for k, v in state.items() if k != name}
    for bad in (wrong_shape, missing):
        with pytest.raises(ModelError):
            umap.alive_values(bad, mask)
        with pytest.raises(ModelError):
            umap.apply(bad, mask)
    values = umap.alive_values(state, mask)
    with pytest.raises(ModelError):
        umap.state_from_values(values[:-1], mask)
    with pytest.raises(ModelError):
        umap.state_from_values(np.append(values, 1.0), mask)


def test_apply_and_state_from_values_return_copies() -> None:
    umap, state = _setup("mlp", "filter")
    mask = umap.full_mask()
    before = {k: v.copy() for k, v in state.items()}
    applied = umap.apply(state, mask)
    for v in applied.values():
        v += 1.0
    rebuilt = umap.state_from_values(umap.alive_values(state, mask), mask)
    for v in rebuilt.values():
        v += 1.0
    for k in state:
        np.testing.assert_array_equal(state[k], before[k])
