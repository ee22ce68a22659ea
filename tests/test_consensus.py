import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpfl.errors import ConfigError, FederationError, ModelError
from mpfl.maths.consensus import (
    DEFAULT_RULE,
    RULES,
    VoteInput,
    check_layers,
    consensus_mask,
    get_rule,
)
from mpfl.maths.schedules import keep_count
from mpfl.maths.votes import VoteAccumulator, VoteTally, packed_size

# -- helpers -------------------------------------------------------------------------------


def _reference_threshold_scan(
    shares: Sequence[float],
    alive: Sequence[bool],
    layers: Sequence[slice],
    target: float,
    n: int,
) -> list[bool]:
    """A line-by-line transcription of the reference code's create_server_mask loop."""
    mask = [False] * len(shares)
    for layer in layers:
        units = range(layer.start or 0, layer.stop)
        candidate: list[bool] = []
        for i in range(n):
            dynamic_th = (n - i) / n
            candidate = [alive[u] and shares[u] >= dynamic_th for u in units]
            total = float(len(candidate))
            pruned = float(sum(1 for keep in candidate if not keep))
            if not total or pruned / total >= target:
                break
        for u, keep in zip(units, candidate, strict=True):
            mask[u] = keep
    return mask


def _layers(sizes: Sequence[int]) -> tuple[slice, ...]:
    bounds = np.cumsum([0, *sizes])
    return tuple(slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True))


@st.composite
def vote_rounds(draw: st.DrawFn, max_voters: int = 12) -> tuple[VoteInput, np.ndarray]:
    """A random round: layers, alive mask, node masks (within alive) and a target."""
    sizes = draw(st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=4))
    n_units = sum(sizes)
    n_voters = draw(st.integers(min_value=1, max_value=max_voters))
    alive = np.array(draw(st.lists(st.booleans(), min_size=n_units, max_size=n_units)), bool)
    keep_p = draw(st.floats(min_value=0.0, max_value=1.0))
    rng = np.random.default_rng(draw(st.integers(min_value=0, max_value=2**32 - 1)))
    # Nodes never keep units the global mask pruned, as in the reference code.
    masks = (rng.random((n_voters, n_units)) < keep_p) & alive
    acc = VoteAccumulator(n_units)
    for mask in masks:
        acc.add(mask)
    history = rng.integers(0, 3, size=n_units).astype(np.float64) if draw(st.booleans()) else None
    target = draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 0.95]))
    votes = VoteInput.from_tally(acc.tally(), alive, _layers(sizes), target, history)
    return votes, masks


# -- accumulator ---------------------------------------------------------------------------

mask_tables = st.tuples(
    st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=40)
).flatmap(
    lambda shape: st.tuples(
        st.just(shape),
        st.floats(min_value=0.0, max_value=1.0),
        st.integers(min_value=0, max_value=2**32 - 1),
    )
)


def _random_masks(spec: tuple[tuple[int, int], float, int]) -> np.ndarray:
    (n_units, n_masks), keep_p, seed = spec
    return np.random.default_rng(seed).random((n_masks, n_units)) < keep_p


@given(spec=mask_tables)
def test_bit_sliced_counts_equal_a_plain_sum(spec: tuple[tuple[int, int], float, int]) -> None:
    masks = _random_masks(spec)
    n_units = masks.shape[1]
    acc = VoteAccumulator(n_units)
    for i, mask in enumerate(masks):
        if i % 2:
            acc.add(mask)
        else:
            acc.add_packed(np.packbits(mask).tobytes())
    np.testing.assert_array_equal(acc.counts(), masks.sum(axis=0))
    assert acc.n_voters == len(masks)
    if len(masks):
        np.testing.assert_array_equal(acc.tally().share, masks.sum(axis=0) / len(masks))


def test_counts_past_many_planes() -> None:
    rng = np.random.default_rng(7)
    masks = rng.random((1100, 70)) < 0.9
    masks[:, 0] = True  # one unit counts up to 1100: eleven planes
    acc = VoteAccumulator(70)
    for mask in masks:
        acc.add_packed(np.packbits(mask))
    np.testing.assert_array_equal(acc.counts(), masks.sum(axis=0))
    assert acc.counts()[0] == 1100


def test_pad_bits_of_a_packed_mask_are_ignored() -> None:
    acc = VoteAccumulator(11)
    acc.add_packed(bytes([0b1000_0000, 0b0011_1111]))  # unit 0, units 10..15 (5 are padding)
    expected = np.zeros(11, np.int64)
    expected[[0, 10]] = 1
    np.testing.assert_array_equal(acc.counts(), expected)
    acc.add_packed(bytes([0xFF, 0xFF]))
    np.testing.assert_array_equal(acc.counts(), expected + 1)
    # Padding alone never grows the counter.
    padding_only = VoteAccumulator(11)
    for _ in range(4):
        padding_only.add_packed(bytes([0x00, 0b0001_1111]))
    assert padding_only.counter_bits == 0


@given(a=mask_tables, b=mask_tables)
def test_merge_equals_one_accumulator_fed_everything(
    a: tuple[tuple[int, int], float, int], b: tuple[tuple[int, int], float, int]
) -> None:
    first = _random_masks(a)
    n_units = first.shape[1]
    second = _random_masks(((n_units, b[0][1]), b[1], b[2]))
    left, right, whole = (VoteAccumulator(n_units) for _ in range(3))
    for mask in first:
        left.add(mask)
        whole.add(mask)
    for mask in second:
        right.add(mask)
        whole.add(mask)
    left.merge(right)
    np.testing.assert_array_equal(left.counts(), whole.counts())
    assert left.n_voters == whole.n_voters
    # And adding after a merge still counts right.
    left.add(np.ones(n_units, bool))
    whole.add(np.ones(n_units, bool))
    np.testing.assert_array_equal(left.counts(), whole.counts())


@given(spec=mask_tables, data=st.data())
def test_weighted_votes_match_a_plain_weighted_sum(
    spec: tuple[tuple[int, int], float, int], data: st.DataObject
) -> None:
    masks = _random_masks(spec)
    n_masks, n_units = masks.shape
    weights = data.draw(
        st.lists(st.floats(min_value=1e-3, max_value=1e6), min_size=n_masks, max_size=n_masks)
    )
    acc, left, right = (VoteAccumulator(n_units, weighted=True) for _ in range(3))
    for i, (mask, weight) in enumerate(zip(masks, weights, strict=True)):
        if i % 2:
            acc.add(mask, weight)
        else:
            acc.add_packed(np.packbits(mask), weight)
        (left if i < n_masks // 2 else right).add(mask, weight)
    if n_masks == 0:
        with pytest.raises(FederationError):
            acc.tally()
        return
    w = np.array(weights)
    expected = (w[:, None] * masks).sum(axis=0) / w.sum()
    tally = acc.tally()
    np.testing.assert_allclose(tally.share, expected, rtol=1e-12, atol=1e-12)
    assert tally.total_weight == pytest.approx(w.sum())
    left.merge(right)
    np.testing.assert_allclose(left.tally().share, expected, rtol=1e-12, atol=1e-12)


def test_accumulator_rejects_masks_that_do_not_fit() -> None:
    acc = VoteAccumulator(10)
    with pytest.raises(ModelError) as err:
        acc.add(np.ones(9, bool))
    assert err.value.context == {"expected": 10, "got": 9}
    with pytest.raises(ModelError):
        acc.add(np.ones(10, np.uint8))
    with pytest.raises(ModelError):
        acc.add_packed(b"\x00\x00\x00")
    assert packed_size(10) == 2
    with pytest.raises(ConfigError):
        acc.add(np.ones(10, bool), weight=3.0)
    with pytest.raises(FederationError):
        VoteAccumulator(10, weighted=True).add(np.ones(10, bool), weight=0.0)
    with pytest.raises(FederationError):
        VoteAccumulator(10, weighted=True).add(np.ones(10, bool), weight=math.nan)
    with pytest.raises(FederationError):
        acc.tally()
    with pytest.raises(ModelError):
        acc.merge(VoteAccumulator(11))
    with pytest.raises(ConfigError):
        acc.merge(VoteAccumulator(10, weighted=True))


# -- rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RULES))
@given(round_=vote_rounds())
def test_no_rule_revives_a_pruned_unit(name: str, round_: tuple[VoteInput, np.ndarray]) -> None:
    votes, _ = round_
    mask = get_rule(name)(votes)
    assert mask.dtype == np.bool_ and mask.shape == votes.alive.shape
    assert not (mask & ~votes.alive).any()


@given(round_=vote_rounds(max_voters=30))
def test_threshold_scan_equals_the_reference_transcription(
    round_: tuple[VoteInput, np.ndarray],
) -> None:
    votes, _ = round_
    expected = _reference_threshold_scan(
        votes.share.tolist(), votes.alive.tolist(), votes.layers, votes.target, votes.n_voters
    )
    np.testing.assert_array_equal(get_rule("threshold-scan")(votes), np.array(expected, bool))


def test_threshold_scan_prunes_if_any_node_prunes_else_only_if_all_prune() -> None:
    # Three nodes over one layer of four units; keep counts 3, 2, 1, 0.
    masks = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    acc = VoteAccumulator(4)
    for mask in masks:
        acc.add(mask)
    alive = np.ones(4, bool)
    layers = (slice(0, 4),)
    # tau = 1 keeps only unit 0: 75 % pruned, which reaches 0.5.
    any_prunes = consensus_mask(acc.tally(), alive, layers, 0.5, rule="threshold-scan")
    np.testing.assert_array_equal(any_prunes, [True, False, False, False])
    # 0.8 is out of reach: fall back to tau = 1/N, keep what any node keeps.
    all_prune = consensus_mask(acc.tally(), alive, layers, 0.8, rule="threshold-scan")
    np.testing.assert_array_equal(all_prune, [True, True, True, False])


@given(round_=vote_rounds())
def test_top_votes_hits_the_keep_count_with_the_best_voted_units(
    round_: tuple[VoteInput, np.ndarray],
) -> None:
    votes, _ = round_
    mask = get_rule("top-votes")(votes)
    for layer in votes.layers:
        size = layer.stop - (layer.start or 0)
        n_alive = int(votes.alive[layer].sum())
        want = min(max(1, keep_count(size, votes.target)), n_alive) if size else 0
        kept = mask[layer]
        assert kept.sum() == want
        dropped = votes.alive[layer] & ~kept
        if kept.any() and dropped.any():
            assert votes.share[layer][kept].min() >= votes.share[layer][dropped].max()


def test_top_votes_breaks_ties_by_history_then_index() -> None:
    share = np.array([0.5, 0.5, 0.5, 0.5, 1.0, 0.0])
    alive = np.ones(6, bool)
    layers = (slice(0, 6),)
    # Keep ceil(0.5 * 6) = 3: unit 4, then two of the tied units 0..3.
    by_index = get_rule("top-votes")(VoteInput(share, alive, layers, 0.5, n_voters=2))
    np.testing.assert_array_equal(by_index, [True, True, False, False, True, False])
    history = np.array([0.0, 1.0, 3.0, 3.0, 0.0, 9.0])
    by_history = get_rule("top-votes")(VoteInput(share, alive, layers, 0.5, 2, history))
    np.testing.assert_array_equal(by_history, [False, False, True, True, True, False])


def test_top_votes_keeps_a_unit_per_layer_and_never_more_than_alive() -> None:
    share = np.array([0.0, 0.2, 0.9, 0.1, 0.0])
    alive = np.array([True, True, False, True, False])
    layers = (slice(0, 2), slice(2, 5))
    mask = get_rule("top-votes")(VoteInput(share, alive, layers, 0.9, n_voters=5))
    # Layer 0 keeps ceil(0.1 * 2) = 1; layer 1 keeps 1 (its only alive unit), never unit 2.
    np.testing.assert_array_equal(mask, [False, True, False, True, False])
    low = get_rule("top-votes")(VoteInput(share, alive, layers, 0.0, n_voters=5))
    np.testing.assert_array_equal(low, alive)


@given(round_=vote_rounds())
def test_majority_keeps_half_voted_units_and_one_per_live_layer(
    round_: tuple[VoteInput, np.ndarray],
) -> None:
    votes, _ = round_
    mask = get_rule("majority")(votes)
    for layer in votes.layers:
        alive, kept, share = votes.alive[layer], mask[layer], votes.share[layer]
        if (alive & (share >= 0.5)).any():
            np.testing.assert_array_equal(kept, alive & (share >= 0.5))
        else:
            assert kept.sum() == (1 if alive.any() else 0)
            if alive.any():
                assert share[kept][0] == share[alive].max()


def test_default_rule_and_unknown_rule() -> None:
    assert DEFAULT_RULE == "top-votes"
    with pytest.raises(ConfigError) as err:
        get_rule("unanimous")
    for name in RULES:
        assert name in str(err.value)


def test_vote_input_checks_its_shapes() -> None:
    share, alive = np.zeros(4), np.ones(4, bool)
    with pytest.raises(ModelError):
        VoteInput(np.zeros(3), alive, (slice(0, 4),), 0.5, 1)
    with pytest.raises(ModelError):
        VoteInput(share, alive, (slice(0, 2), slice(3, 4)), 0.5, 1)
    with pytest.raises(ModelError):
        VoteInput(share, alive, (slice(0, 3),), 0.5, 1)
    with pytest.raises(ModelError):
        VoteInput(share, alive, (slice(0, 4),), 0.5, 1, history=np.zeros(5))
    with pytest.raises(ConfigError):
        VoteInput(share, alive, (slice(0, 4),), 1.0, 1)
    with pytest.raises(FederationError):
        VoteInput(share, alive, (slice(0, 4),), 0.5, 0)
    check_layers((slice(0, 0), slice(0, 4), slice(4, 4)), 4)
    tally = VoteTally(share=share, total_weight=1.0, n_voters=1)
    with pytest.raises(ConfigError):
        consensus_mask(tally, alive, (slice(0, 4),), 0.5, rule="nope")


@settings(max_examples=25)
@given(round_=vote_rounds())
def test_rules_only_read_their_inputs(round_: tuple[VoteInput, np.ndarray]) -> None:
    votes, _ = round_
    before = (votes.share.copy(), votes.alive.copy())
    for rule in RULES.values():
        rule(votes)
    np.testing.assert_array_equal(votes.share, before[0])
    np.testing.assert_array_equal(votes.alive, before[1])


def test_mask_agreement_down_weights_random_voters() -> None:
    from mpfl.maths.agreement import AgreementVotes

    rng = np.random.default_rng(3)
    n = 400
    truth = rng.random(n) < 0.5
    honest = [truth ^ (rng.random(n) < 0.05) for _ in range(8)]
    noisy = [rng.random(n) < 0.5 for _ in range(2)]
    votes = AgreementVotes(n)
    plain = VoteAccumulator(n)
    for mask in honest + noisy:
        votes.add(mask)
        plain.add(mask)
    tally = votes.tally()
    assert votes.factors[:8].min() > 0.8 and votes.factors[8:].max() < 0.2
    assert tally.n_voters >= 8
    # Without the outliers the shares sit closer to the honest majority.
    err = np.abs(tally.share - truth).mean()
    assert err < np.abs(plain.tally().share - truth).mean()
    with pytest.raises(ModelError):
        votes.add(np.ones(n + 1, bool))
