"""A region's partial aggregate on the wire: golden bytes, round trips through the
accumulators, and every way hostile bytes can be malformed (a WireError, nothing else)."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpfl.errors import WireError
from mpfl.maths.aggregate import WeightedAverager
from mpfl.maths.votes import VoteAccumulator
from mpfl.wire.partial import (
    HEADER_SIZE,
    PartialAggregate,
    ValueSums,
    VoteCounts,
    decode_partial,
    encode_partial,
)

# Two unweighted voters over 3 units with keep counts [2, 1, 0], and the weighted sums of
# two updates (weights 1 and 2) of 2 values, written field by field from partial.py's table.
GOLDEN = bytes.fromhex(
    "03"  # contents: votes and values, unweighted
    "02"  # two bit planes
    "0000"  # reserved
    "03000000"  # 3 units
    "02000000"  # 2 voters
    "0000000000000040"  # vote weight 2.0
    "02000000"  # 2 updates
    "02000000"  # 2 values
    "0000000000000840"  # value weight 3.0
    "40"  # plane 0: bit 0 of the counts [0, 1, 0], np.packbits order
    "80"  # plane 1: bit 1 of the counts [1, 0, 0]
    "000000000000f83f"  # 1.5
    "00000000000000c0"  # -2.0
)
GOLDEN_PARTIAL = PartialAggregate(
    3, VoteCounts(2, 2.0, planes=(b"\x40", b"\x80")),
    ValueSums(2, 3.0, np.array([1.5, -2.0])))


def test_golden_bytes() -> None:
    assert HEADER_SIZE == 36
    assert encode_partial(GOLDEN_PARTIAL) == GOLDEN
    back = decode_partial(GOLDEN, 3, 2)
    assert back.votes is not None and back.values is not None
    assert back.votes.planes == (b"\x40", b"\x80") and back.votes.voters == 2
    assert back.values.weight == 3.0 and back.values.sums.tolist() == [1.5, -2.0]


def _votes(masks: list[np.ndarray], weights: list[float] | None) -> VoteAccumulator:
    votes = VoteAccumulator(masks[0].size, weighted=weights is not None)
    for i, mask in enumerate(masks):
        votes.add(mask, 1.0 if weights is None else weights[i])
    return votes


@given(st.integers(1, 70), st.integers(1, 9), st.booleans(), st.integers(0, 2**31))
def test_votes_and_sums_round_trip_and_merge_like_one_count(
    n_units: int, n_voters: int, weighted: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    masks = [rng.random(n_units) < 0.5 for _ in range(n_voters)]
    weights = [float(w) for w in rng.integers(1, 500, n_voters)] if weighted else None
    values = [rng.normal(size=5).astype(np.float32) for _ in range(n_voters)]
    cut = n_voters // 2
    partials = []
    for part in (slice(0, cut), slice(cut, n_voters)):
        if not masks[part]:
            continue
        count = _votes(masks[part], None if weights is None else weights[part])
        sums = WeightedAverager(5)
        for v, w in zip(values[part], (weights or [1.0] * n_voters)[part], strict=True):
            sums.add(v, w)
        votes = (VoteCounts(count.n_voters, count.total_weight, sums=count.weighted_sums)
                 if weighted else VoteCounts(count.n_voters, count.total_weight,
                                             planes=tuple(count.packed_planes())))
        data = encode_partial(PartialAggregate(n_units, votes, ValueSums(
            sums.n_updates, sums.total_weight, sums.sums)))
        partials.append(decode_partial(data, n_units, 5))
    merged = VoteAccumulator(n_units, weighted)
    averaged = WeightedAverager(5)
    for p in partials:
        assert p.votes is not None and p.values is not None
        merged.merge(VoteAccumulator.from_sums(p.votes.sums, p.votes.weight, p.votes.voters)
                     if p.votes.sums is not None else
                     VoteAccumulator.from_planes(n_units, list(p.votes.planes), p.votes.voters))
        averaged.merge(WeightedAverager.from_sums(p.values.sums, p.values.weight,
                                                  p.values.updates))
    flat = _votes(masks, weights)
    assert np.array_equal(merged.tally().share, flat.tally().share)
    direct = WeightedAverager(5)
    for v, w in zip(values, weights or [1.0] * n_voters, strict=True):
        direct.add(v, w)
    # float64 sums in another order: equal to a few float64 ulps, so float32 at most 1 ulp
    got, want = averaged.result(), direct.result()
    assert np.all(np.abs(got - want) <= np.spacing(np.abs(want)))


def test_votes_only_and_values_only() -> None:
    votes = encode_partial(PartialAggregate(3, VoteCounts(2, 2.0, planes=(b"\x40", b"\x80"))))
    assert decode_partial(votes, 3, 99).values is None
    values = encode_partial(PartialAggregate(3, None, ValueSums(1, 5.0, np.zeros(4))))
    assert decode_partial(values, 3, 4).votes is None


def _patch(offset: int, fmt: str, value: object) -> bytes:
    data = bytearray(GOLDEN)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize("data, units, values, match", [
    (GOLDEN[:35], 3, 2, "shorter than its header"),
    (GOLDEN + b"\x00", 3, 2, "trailing"),
    (GOLDEN[:-1], 3, 2, "truncated"),
    (GOLDEN, 4, 2, "another mask"),
    (GOLDEN, 3, 3, "do not fit the round"),
    (_patch(0, "<B", 0x0B), 3, 2, "reserved"),
    (_patch(2, "<H", 1), 3, 2, "reserved"),
    (_patch(0, "<B", 0x02), 3, 2, "vote fields set without votes"),
    (_patch(0, "<B", 0x01), 3, 2, "value fields set without values"),
    (_patch(8, "<I", 0), 3, 2, "no voter"),
    (_patch(8, "<I", 1), 3, 2, "one per voter"),
    (_patch(12, "<d", float("nan")), 3, 2, "positive and finite"),
    (_patch(12, "<d", 3.0), 3, 2, "one per voter"),
    (_patch(20, "<I", 0), 3, 2, "no update"),
    (_patch(28, "<d", -1.0), 3, 2, "positive and finite"),
    (_patch(36, "<B", 0x41), 3, 2, "past the last unit"),
    (_patch(37, "<B", 0xC0), 3, 2, "more keep votes than voters"),
    (_patch(38, "<d", float("inf")), 3, 2, "NaN or infinite"),
    (_patch(1, "<B", 3), 3, 2, "bit planes do not fit"),
    (_patch(1, "<B", 1), 3, 2, "more keep votes than voters|trailing"),
    (_patch(0, "<B", 0x07), 3, 2, "weighted votes have no bit planes"),
])
def test_hostile_bytes_are_one_wire_error(data: bytes, units: int, values: int,
                                          match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode_partial(data, units, values)


@given(st.binary(max_size=120), st.integers(0, 20), st.integers(0, 4))
def test_any_bytes_decode_or_raise_a_wire_error(data: bytes, units: int, values: int) -> None:
    with contextlib.suppress(WireError):
        decode_partial(data, units, values)


@given(st.integers(0, len(GOLDEN) - 1), st.integers(1, 255))
def test_every_flipped_byte_is_caught_or_still_consistent(offset: int, xor: int) -> None:
    data = bytearray(GOLDEN)
    data[offset] ^= xor
    try:
        partial = decode_partial(bytes(data), 3, 2)
    except WireError:
        return
    # A flip that still decodes is a consistent partial (e.g. other sums): re-encodes as is
    assert encode_partial(partial) == bytes(data)


@given(st.integers(1, 70), st.integers(1, 9), st.booleans(), st.integers(0, 2**31))
def test_only_the_alive_units_of_the_mask_in_force_travel(
    n_units: int, n_voters: int, weighted: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    scope = rng.random(n_units) < 0.6
    masks = [(rng.random(n_units) < 0.5) & scope for _ in range(n_voters)]
    count = _votes(masks, [2.0] * n_voters if weighted else None)
    votes = (VoteCounts(count.n_voters, count.total_weight, sums=count.weighted_sums)
             if weighted else VoteCounts(count.n_voters, count.total_weight,
                                         planes=tuple(count.packed_planes())))
    partial = PartialAggregate(n_units, votes)
    scoped = encode_partial(partial, scope=scope)
    assert len(scoped) <= len(encode_partial(partial))
    back = decode_partial(scoped, n_units, 0, scope)
    assert back.votes is not None
    again = (VoteAccumulator.from_sums(back.votes.sums, back.votes.weight, n_voters)
             if back.votes.sums is not None else
             VoteAccumulator.from_planes(n_units, list(back.votes.planes), n_voters))
    assert np.array_equal(again.tally().share, count.tally().share)
    with pytest.raises(WireError):
        decode_partial(scoped, n_units + 1, 0, np.ones(n_units + 1, dtype=bool))
