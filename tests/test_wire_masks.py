"""Mask codecs: golden bytes, round trips, the entropy bound and hostile payloads."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpfl.errors import ModelError, WireError
from mpfl.wire import MaskCodec, binary_entropy, decode_mask, encode_mask
from mpfl.wire.entropy import best_rice_parameter, rice_cost_bits

# 12 units, ones at positions 2 and 9: 0010 0000 0100
SMALL = np.zeros(12, dtype=bool)
SMALL[[2, 9]] = True


def _mask_with_density(n: int, p: float, seed: int) -> np.ndarray:
    """Exactly round(p * n) ones at random positions, so the empirical density is p."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: round(p * n)]] = True
    return mask


def test_golden_raw() -> None:
    # Bits MSB first: 00100000 | 0100 + four zero padding bits.
    assert encode_mask(SMALL, codec="raw") == (MaskCodec.RAW, bytes([0x20, 0x40]))
    assert np.array_equal(decode_mask(1, b"\x20\x40", 12), SMALL)


def test_golden_rice() -> None:
    # Gaps 2 and 6; k = 2 is cheapest (7 bits; k = 1 and k = 3 cost 8).
    # Remainders 10 10, then unary quotients 0 and 1 -> "0" "10": 1010 010 + pad 0 = 0xa4.
    expected = bytes([0x01, 0x02]) + (2).to_bytes(4, "little") + bytes([0xA4])
    assert encode_mask(SMALL, codec="rice") == (MaskCodec.RICE, expected)
    assert np.array_equal(decode_mask(2, expected, 12), SMALL)


def test_golden_rice_codes_the_minority_symbol() -> None:
    # The complement has ten ones; its two zeros are coded instead, with symbol 0.
    expected = bytes([0x00, 0x02]) + (2).to_bytes(4, "little") + bytes([0xA4])
    assert encode_mask(~SMALL, codec="rice") == (MaskCodec.RICE, expected)
    assert np.array_equal(decode_mask(2, expected, 12), ~SMALL)


def test_golden_scope_codes_only_alive_units() -> None:
    scope = np.zeros(12, dtype=bool)
    scope[[0, 2, 3, 5, 9, 11]] = True
    # Coded bits are mask[scope] = 1 0 0 0 1 0 at positions 0,2,3,5,9,11 -> 100010 + 00.
    mask = np.zeros(12, dtype=bool)
    mask[[0, 9]] = True
    assert encode_mask(mask, scope=scope, codec="raw") == (MaskCodec.RAW, b"\x88")
    assert np.array_equal(decode_mask(1, b"\x88", 12, scope=scope), mask)


def test_mask_reviving_a_pruned_unit_is_refused() -> None:
    scope = np.ones(12, dtype=bool)
    scope[2] = False
    with pytest.raises(WireError, match="revives"):
        encode_mask(SMALL, scope=scope)


def test_empty_mask() -> None:
    empty = np.zeros(0, dtype=bool)
    for codec in MaskCodec:
        codec_id, payload = encode_mask(empty, codec=codec)
        assert decode_mask(codec_id, payload, 0).size == 0


masks_and_scopes = st.integers(0, 300).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.booleans(),
    )
)


@given(masks_and_scopes, st.sampled_from(["auto", "raw", "rice", "sc"]))
def test_round_trip(case: tuple[list[bool], list[bool], bool], codec: str) -> None:
    raw_mask, raw_scope, use_scope = case
    scope = np.array(raw_scope, dtype=bool) if use_scope else None
    mask = np.array(raw_mask, dtype=bool)
    if scope is not None:
        mask &= scope
    codec_id, payload = encode_mask(mask, scope=scope, codec=codec)
    assert np.array_equal(decode_mask(codec_id, payload, mask.size, scope=scope), mask)


@given(st.integers(1, 2000), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
@settings(max_examples=50)
def test_auto_keeps_the_smallest(n: int, p: float, seed: int) -> None:
    mask = _mask_with_density(n, p, seed)
    _, auto_payload = encode_mask(mask, codec="auto")
    sizes = [len(encode_mask(mask, codec=c)[1]) for c in MaskCodec]
    assert len(auto_payload) == min(sizes)


@given(st.lists(st.integers(0, 5000), max_size=200))
def test_best_rice_parameter_is_optimal(gaps: list[int]) -> None:
    arr = np.array(gaps, dtype=np.int64)
    k = best_rice_parameter(arr)
    assert rice_cost_bits(arr, k) == min(rice_cost_bits(arr, j) for j in range(0, 33))


@pytest.mark.parametrize(
    ("p", "slack"), [(0.5, 1.05), (0.1, 1.05), (0.05, 1.05), (0.01, 1.10)]
)
@pytest.mark.parametrize("flip", [False, True])
def test_auto_is_close_to_the_entropy_bound(p: float, slack: float, flip: bool) -> None:
    n = 1_000_000
    mask = _mask_with_density(n, p, seed=int(p * 1000))
    if flip:
        mask = ~mask
    codec_id, payload = encode_mask(mask)
    header_bits = 8 * 16
    assert 8 * len(payload) <= slack * binary_entropy(p) * n + header_bits
    assert np.array_equal(decode_mask(codec_id, payload, n), mask)


def test_rice_is_fast_on_a_million_units() -> None:
    # A per-bit Python loop would take seconds; the bound is loose for a shared machine.
    mask = _mask_with_density(1_000_000, 0.1, seed=3)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        codec_id, payload = encode_mask(mask, codec="rice")
        decode_mask(codec_id, payload, mask.size)
        best = min(best, time.perf_counter() - start)
    assert best < 0.2


@given(st.sampled_from([1, 2, 3]), st.binary(max_size=64), st.integers(0, 200))
@settings(max_examples=300)
def test_random_payloads_raise_only_wire_error(codec_id: int, payload: bytes, n: int) -> None:
    try:
        mask = decode_mask(codec_id, payload, n)
    except WireError:
        return
    assert mask.dtype == np.bool_ and mask.shape == (n,)


@given(
    st.one_of(st.integers(0, 1), st.integers(0, 255)),
    st.one_of(st.integers(0, 6), st.integers(0, 255)),
    st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)),
    st.binary(max_size=40),
    st.integers(0, 200),
)
@settings(max_examples=500)
def test_hostile_rice_headers_raise_only_wire_error(
    symbol: int, k: int, count: int, stream: bytes, n: int
) -> None:
    payload = bytes([symbol, k]) + count.to_bytes(4, "little") + stream
    try:
        mask = decode_mask(MaskCodec.RICE, payload, n)
    except WireError:
        return
    assert mask.shape == (n,)


@given(st.integers(0, 15), st.integers(0, 300), st.binary(max_size=40), st.integers(0, 300))
@settings(max_examples=300)
def test_hostile_sc_payloads_raise_only_wire_error(
    len_bytes: int, declared: int, blocks: bytes, n: int
) -> None:
    # Headers that declare the expected length reach bitarray's block decoder.
    header = bytes([0x10 | len_bytes]) + declared.to_bytes(8, "little")[:len_bytes]
    for d in (declared, n):
        payload = bytes([0x12]) + d.to_bytes(2, "little") + blocks
        for candidate in (header + blocks, payload):
            try:
                mask = decode_mask(MaskCodec.SC, candidate, n)
            except WireError:
                continue
            assert mask.shape == (n,)


@given(masks_and_scopes, st.sampled_from(list(MaskCodec)), st.data())
def test_truncations_and_extensions_are_rejected(
    case: tuple[list[bool], list[bool], bool], codec: MaskCodec, data: st.DataObject
) -> None:
    mask = np.array(case[0], dtype=bool)
    _, payload = encode_mask(mask, codec=codec)
    cut = data.draw(st.integers(0, max(len(payload) - 1, 0)))
    if payload:
        with pytest.raises(WireError):
            decode_mask(codec, payload[:cut], mask.size)
    with pytest.raises(WireError):
        decode_mask(codec, payload + data.draw(st.binary(min_size=1, max_size=4)), mask.size)


def test_nonzero_padding_rejected() -> None:
    with pytest.raises(WireError, match="padding"):
        decode_mask(MaskCodec.RAW, b"\x20\x41", 12)
    rice = bytes([0x01, 0x02]) + (2).to_bytes(4, "little") + bytes([0xA5])
    with pytest.raises(WireError, match="padding"):
        decode_mask(MaskCodec.RICE, rice, 12)


def test_rice_positions_past_the_end_rejected() -> None:
    rice = bytes([0x01, 0x02]) + (2).to_bytes(4, "little") + bytes([0xA4])
    with pytest.raises(WireError):
        decode_mask(MaskCodec.RICE, rice, 9)  # the second position is 9


def test_unknown_codecs_rejected() -> None:
    with pytest.raises(WireError, match="unknown mask codec"):
        decode_mask(7, b"", 0)
    with pytest.raises(WireError, match="unknown mask codec"):
        encode_mask(SMALL, codec="gzip")


def test_wrong_arrays_rejected() -> None:
    with pytest.raises(ModelError):
        encode_mask(SMALL.astype(np.uint8))
    with pytest.raises(ModelError):
        encode_mask(SMALL.reshape(3, 4))
    with pytest.raises(ModelError):
        encode_mask(SMALL, scope=np.ones(11, dtype=bool))
    with pytest.raises(ModelError):
        decode_mask(1, b"\x20\x40", 12, scope=np.ones(13, dtype=bool))
