"""Seeded partitions: every sample goes to exactly one node, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from mpfl.errors import ConfigError
from mpfl.maths.partition import label_histogram, parse_scheme, parse_share, partition

SCHEMES = ["iid", "dirichlet:0.1", "dirichlet:0.5", "dirichlet:100", "shards", "shards:3"]


@st.composite
def splits(draw: st.DrawFn) -> tuple[np.ndarray, int, str, int]:
    n_classes = draw(st.integers(1, 10))
    n = draw(st.integers(20, 400))
    labels = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, n_classes, n)
    n_nodes = draw(st.integers(1, 8))
    return labels, n_nodes, draw(st.sampled_from(SCHEMES)), draw(st.integers(0, 2**32 - 1))


def _split(labels: np.ndarray, n_nodes: int, scheme: str, seed: int) -> list[np.ndarray]:
    """The partition; a Dirichlet draw may honestly fail to give every node data."""
    try:
        return partition(labels, n_nodes, scheme, seed)
    except ConfigError:
        if not scheme.startswith("dirichlet"):
            raise
        reject()


@given(splits())
def test_every_sample_lands_on_exactly_one_node(case: tuple[np.ndarray, int, str, int]) -> None:
    labels, n_nodes, scheme, seed = case
    parts = _split(labels, n_nodes, scheme, seed)
    assert len(parts) == n_nodes
    everything = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(labels)))
    for p in parts:
        assert np.issubdtype(p.dtype, np.integer)
        assert np.all(np.diff(p) > 0)  # sorted, no repeats within a node


@given(splits())
def test_node_label_histograms_sum_to_the_global_histogram(
    case: tuple[np.ndarray, int, str, int],
) -> None:
    labels, n_nodes, scheme, seed = case
    parts = _split(labels, n_nodes, scheme, seed)
    hist = label_histogram(labels, parts, 10)
    assert hist.shape == (n_nodes, 10)
    np.testing.assert_array_equal(hist.sum(axis=0), np.bincount(labels, minlength=10))
    np.testing.assert_array_equal(hist.sum(axis=1), [len(p) for p in parts])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_same_seed_gives_the_same_split_and_another_seed_another(scheme: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    a, b = partition(labels, 5, scheme, seed=11), partition(labels, 5, scheme, seed=11)
    c = partition(labels, 5, scheme, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [len(p) for p in partition(np.zeros(103, dtype=int), 7, "iid", 0)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 103


def test_shards_give_each_node_few_labels() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 10, "shards:2", seed=0)
    for p in parts:
        assert len(p) == 100 and len(np.unique(labels[p])) <= 2


def test_small_dirichlet_alpha_is_more_skewed_than_a_large_one() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 5000)

    def skew(alpha: float) -> float:
        hist = label_histogram(labels, partition(labels, 10, f"dirichlet:{alpha}", 0), 10)
        shares = hist / hist.sum(axis=1, keepdims=True)
        return float(shares.max(axis=1).mean())

    assert skew(0.1) > skew(100.0) + 0.3


def test_dirichlet_gives_every_node_data() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 2000)
    parts = partition(labels, 20, "dirichlet:0.3", seed=4)
    assert min(len(p) for p in parts) >= 10


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [("iid", ("iid", None)), ("dirichlet", ("dirichlet", 0.5)),
     ("dirichlet:0.3", ("dirichlet", 0.3)), ("shards", ("shards", 2.0)),
     ("shards:4", ("shards", 4.0))],
)
def test_parse_scheme(scheme: str, expected: tuple[str, float | None]) -> None:
    assert parse_scheme(scheme) == expected


@pytest.mark.parametrize(
    "scheme",
    ["random", "dirichlet:x", "dirichlet:0", "dirichlet:-1", "dirichlet:nan", "dirichlet:inf",
     "shards:0", "shards:1.5", "shards:-2", "iid:3", ""],
)
def test_bad_schemes_are_config_errors(scheme: str) -> None:
    with pytest.raises(ConfigError):
        partition(np.zeros(50, dtype=int), 2, scheme)


@pytest.mark.parametrize("n_nodes", [0, -1, 51])
def test_bad_node_counts_are_config_errors(n_nodes: int) -> None:
    with pytest.raises(ConfigError):
        partition(np.zeros(50, dtype=int), n_nodes)


@given(st.integers(0, 999), st.integers(1, 1000))
def test_parse_share_round_trips(i: int, n: int) -> None:
    if i < n:
        assert parse_share(f"{i}/{n}") == (i, n)
    else:
        with pytest.raises(ConfigError):
            parse_share(f"{i}/{n}")


@pytest.mark.parametrize("text", ["", "3", "a/b", "1/2/3", "-1/3", "3/3", "1/0", "1.0/2", "/"])
def test_parse_share_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_share(text)
