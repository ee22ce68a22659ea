import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpfl.errors import ConfigError, FederationError, ModelError
from mpfl.maths import aggregate as agg
from mpfl.maths.aggregate import (
    AGGREGATORS,
    WeightedAverager,
    aggregate,
    clip_norm,
    median,
    trimmed_mean,
    weighted_mean,
)


@st.composite
def update_batches(draw: st.DrawFn) -> tuple[list[np.ndarray], list[float]]:
    n_nodes = draw(st.integers(min_value=1, max_value=9))
    n_values = draw(st.integers(min_value=0, max_value=300))
    rng = np.random.default_rng(draw(st.integers(min_value=0, max_value=2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    updates = [(rng.standard_normal(n_values) * scale).astype(np.float32) for _ in range(n_nodes)]
    weights = draw(
        st.lists(st.floats(min_value=1.0, max_value=1e5), min_size=n_nodes, max_size=n_nodes)
    )
    return updates, weights


def _naive_weighted_mean(updates: list[np.ndarray], weights: list[float]) -> np.ndarray:
    w = np.array(weights, dtype=np.float64)
    return (w[:, None] * np.stack(updates).astype(np.float64)).sum(axis=0) / w.sum()


@given(batch=update_batches())
def test_streaming_average_equals_the_batch_weighted_mean(
    batch: tuple[list[np.ndarray], list[float]],
) -> None:
    updates, weights = batch
    averager = WeightedAverager(updates[0].size)
    for values, weight in zip(updates, weights, strict=True):
        averager.add(values, weight)
    expected = _naive_weighted_mean(updates, weights)
    result = averager.result()
    assert result.dtype == np.float32
    np.testing.assert_allclose(
        result, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max(initial=1.0)
    )
    np.testing.assert_array_equal(weighted_mean(updates, weights), result)
    np.testing.assert_array_equal(aggregate("fedavg", updates, weights), result)


def test_streaming_average_spans_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agg, "_CHUNK", 7)
    rng = np.random.default_rng(1)
    updates = [rng.standard_normal(50).astype(np.float32) for _ in range(3)]
    weights = [1.0, 2.0, 5.0]
    np.testing.assert_allclose(
        weighted_mean(updates, weights), _naive_weighted_mean(updates, weights), rtol=1e-6
    )


@given(batch=update_batches(), split=st.integers(min_value=0, max_value=9))
def test_merged_partial_averages_equal_one_average(
    batch: tuple[list[np.ndarray], list[float]], split: int
) -> None:
    updates, weights = batch
    n = updates[0].size
    left, right, whole = WeightedAverager(n), WeightedAverager(n), WeightedAverager(n)
    for i, (values, weight) in enumerate(zip(updates, weights, strict=True)):
        (left if i < split else right).add(values, weight)
        whole.add(values, weight)
    left.merge(right)
    assert left.n_updates == whole.n_updates
    np.testing.assert_allclose(left.result(), whole.result(), rtol=1e-6, atol=1e-30)


@given(batch=update_batches())
def test_median_matches_numpy(batch: tuple[list[np.ndarray], list[float]]) -> None:
    updates, _ = batch
    expected = np.median(np.stack(updates).astype(np.float64), axis=0)
    np.testing.assert_allclose(median(updates), expected, rtol=1e-6)
    np.testing.assert_array_equal(aggregate("median", updates), median(updates))


@given(batch=update_batches(), trim=st.floats(min_value=0.0, max_value=0.49))
def test_trimmed_mean_matches_a_per_coordinate_transcription(
    batch: tuple[list[np.ndarray], list[float]], trim: float
) -> None:
    updates, _ = batch
    n = len(updates)
    cut = int(trim * n)
    expected = [
        float(np.mean(sorted(float(u[j]) for u in updates)[cut : n - cut]))
        for j in range(updates[0].size)
    ]
    result = trimmed_mean(updates, trim)
    np.testing.assert_allclose(result, np.array(expected), rtol=1e-5, atol=1e-6)


def test_trimmed_mean_drops_the_outliers() -> None:
    updates = [np.full(3, v, np.float32) for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    np.testing.assert_array_equal(trimmed_mean(updates, 0.2), np.full(3, 3.0, np.float32))
    np.testing.assert_array_equal(trimmed_mean(updates, 0.0), np.full(3, 202.0, np.float32))
    with pytest.raises(ConfigError):
        trimmed_mean(updates, 0.5)


@given(
    batch=update_batches(),
    max_norm=st.floats(min_value=1e-3, max_value=1e3),
)
def test_clip_norm_bounds_the_step_and_keeps_its_direction(
    batch: tuple[list[np.ndarray], list[float]], max_norm: float
) -> None:
    updates, _ = batch
    base = updates[0]
    update = updates[-1]
    clipped = clip_norm(update, base, max_norm)
    step = clipped.astype(np.float64) - base
    delta = update.astype(np.float64) - base
    norm = np.linalg.norm(delta)
    assert np.linalg.norm(step) <= max_norm * (1 + 1e-5) + 1e-3 * np.abs(base).max(initial=0)
    if norm <= max_norm:
        np.testing.assert_array_equal(clipped, update)
    elif norm > 0:
        np.testing.assert_allclose(
            step, delta * (max_norm / norm), rtol=1e-4, atol=1e-6 * np.abs(base).max(initial=1)
        )


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_weights_are_rejected(bad: float) -> None:
    updates = [np.zeros(4, np.float32), np.ones(4, np.float32)]
    with pytest.raises(FederationError) as err:
        weighted_mean(updates, [1.0, bad])
    assert err.value.context["update"] == 1
    with pytest.raises(FederationError):
        WeightedAverager(4).add(updates[0], bad)
    for name in AGGREGATORS:
        with pytest.raises(FederationError):
            aggregate(name, updates, [bad, 1.0])


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_mismatched_or_missing_updates_are_rejected(name: str) -> None:
    with pytest.raises(ModelError) as err:
        aggregate(name, [np.zeros(4, np.float32), np.zeros(5, np.float32)])
    assert err.value.context == {"expected": 4, "got": 5, "update": 1}
    with pytest.raises(ModelError):
        aggregate(name, [np.zeros(4, np.float32)], [1.0, 2.0])
    with pytest.raises(ModelError):
        aggregate(name, [np.zeros((2, 2), np.float32)])
    with pytest.raises(FederationError):
        aggregate(name, [])
    with pytest.raises(FederationError):
        aggregate(name, [np.array([1.0, math.nan], np.float32)])


def test_averager_errors_carry_context() -> None:
    averager = WeightedAverager(3)
    with pytest.raises(FederationError):
        averager.result()
    with pytest.raises(ModelError) as err:
        averager.add(np.zeros(2, np.float32))
    assert err.value.context == {"expected": 3, "got": 2}
    with pytest.raises(ModelError):
        averager.merge(WeightedAverager(4))


def test_unknown_aggregator_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        aggregate("krum", [np.zeros(2, np.float32)])
    for name in AGGREGATORS:
        assert name in str(err.value)
    with pytest.raises(ConfigError):
        clip_norm(np.zeros(2, np.float32), np.zeros(2, np.float32), 0.0)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_aggregator_takes_updates_one_at_a_time(name: str) -> None:
    rng = np.random.default_rng(4)
    updates = [rng.standard_normal(6).astype(np.float32) for _ in range(5)]
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    aggregation = agg.new_aggregation(name, 6)
    with pytest.raises(FederationError):
        aggregation.result()
    for values, weight in zip(updates, weights, strict=True):
        aggregation.add(values, weight)
    np.testing.assert_array_equal(aggregation.result(), aggregate(name, updates, weights))
    with pytest.raises(ModelError) as err:
        aggregation.add(np.zeros(7, np.float32))
    assert err.value.context["expected"] == 6


def test_norm_clip_bounds_a_scaled_or_flipped_update_by_the_median_step() -> None:
    rng = np.random.default_rng(7)
    base = rng.standard_normal(50).astype(np.float32)
    steps = [0.1 * rng.standard_normal(50) for _ in range(5)]
    honest = [(base + s).astype(np.float32) for s in steps]
    clean = aggregate("norm-clip", honest)  # base unknown: clipped around 0, any answer
    bound = float(np.median([np.linalg.norm(s) for s in steps]))
    for attack in (100.0, -1.0):
        aggregation = agg.new_aggregation("norm-clip", 50, base)
        for values in honest[:4]:
            aggregation.add(values)
        aggregation.add((base + attack * steps[4]).astype(np.float32))
        moved = aggregation.result().astype(np.float64) - base
        assert np.linalg.norm(moved) <= bound + 1e-5
    fedavg = aggregate("fedavg", honest[:4] + [(base + 100 * steps[4]).astype(np.float32)])
    assert np.linalg.norm(fedavg - base) > 10 * bound  # what the clip prevents
    assert clean.shape == (50,)


def test_norm_clip_keeps_honest_updates_of_equal_steps_as_fedavg() -> None:
    base = np.zeros(8, np.float32)
    updates = [np.full(8, v, np.float32) for v in (1.0, -1.0, 1.0)]
    aggregation = agg.new_aggregation("norm-clip", 8, base)
    for values, weight in zip(updates, (1.0, 2.0, 1.0), strict=True):
        aggregation.add(values, weight)
    np.testing.assert_allclose(aggregation.result(), weighted_mean(updates, [1.0, 2.0, 1.0]))


def test_nearest_median_drops_flipped_and_scaled_updates_and_averages_the_rest() -> None:
    rng = np.random.default_rng(3)
    honest = [(1.0 + 0.1 * rng.standard_normal(40)).astype(np.float32) for _ in range(8)]
    weights = [float(w) for w in rng.integers(50, 500, size=8)]
    expected = weighted_mean(honest, weights)
    for bad in ([-honest[0], -honest[1]], [100 * honest[0], 100 * honest[1]]):
        aggregation = agg.new_aggregation("nearest-median", 40, trim=0.2)
        for values, weight in zip([bad[0], *honest[:4], bad[1], *honest[4:]],
                                  [1e5, *weights[:4], 1e5, *weights[4:]], strict=True):
            aggregation.add(values, weight)
        np.testing.assert_allclose(aggregation.result(), expected, rtol=1e-6)
        assert isinstance(aggregation, agg.NearestMedian)
        assert sorted(aggregation.kept.tolist()) == [1, 2, 3, 4, 6, 7, 8, 9]


def test_median_outliers_drops_only_outliers_so_a_clean_round_keeps_every_update() -> None:
    rng = np.random.default_rng(5)
    # Honest updates spread unevenly around the centre, as skewed nodes do.
    honest = [(1.0 + s * rng.standard_normal(40)).astype(np.float32)
              for s in (0.05, 0.08, 0.1, 0.1, 0.12, 0.15, 0.2, 0.25)]
    clean = agg.new_aggregation("median-outliers", 40, trim=0.2)
    for values in honest:
        clean.add(values, 10.0)
    np.testing.assert_allclose(clean.result(), weighted_mean(honest), rtol=1e-6)
    assert isinstance(clean, agg.NearestMedian)
    assert sorted(clean.kept.tolist()) == list(range(8))
    fixed = agg.new_aggregation("nearest-median", 40, trim=0.2)  # drops 1 of 8 regardless
    for values in honest:
        fixed.add(values, 10.0)
    fixed.result()
    assert isinstance(fixed, agg.NearestMedian) and len(fixed.kept) == 7
    for first, last, dropped in ((-honest[0], -honest[1], [0, 9]),
                                 (100 * honest[0], 100 * honest[1], [0, 9]),
                                 (-honest[0], honest[1] + 0.01, [0])):  # only the outlier
        attacked = agg.new_aggregation("median-outliers", 40, trim=0.2)
        for values in [first, *honest, last]:
            attacked.add(values, 10.0)
        attacked.result()
        assert isinstance(attacked, agg.NearestMedian)
        assert sorted(set(range(10)) - set(attacked.kept.tolist())) == dropped


def test_nearest_median_without_trim_is_fedavg_and_refuses_a_bad_trim() -> None:
    rng = np.random.default_rng(4)
    updates = [rng.standard_normal(10).astype(np.float32) for _ in range(5)]
    aggregation = agg.new_aggregation("nearest-median", 10, trim=0.0)
    for values in updates:
        aggregation.add(values, 2.0)
    np.testing.assert_allclose(aggregation.result(), weighted_mean(updates), rtol=1e-6)
    with pytest.raises(ConfigError):
        agg.new_aggregation("nearest-median", 10, trim=0.5)
    with pytest.raises(FederationError):
        agg.new_aggregation("nearest-median", 10, trim=0.2).result()
