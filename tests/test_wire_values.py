"""Value codecs: golden bytes, round-trip accuracy, deltas and hostile payloads."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpfl.errors import ModelError, WireError
from mpfl.wire import DELTA, ValueCodec, decode_values, encode_values


def test_codec_ids() -> None:
    assert [int(c) for c in ValueCodec] == [1, 2, 3, 4, 5, 0x81, 0x82, 0x83, 0x84, 0x85]
    assert DELTA == 0x80
    assert ValueCodec.INT8_DELTA.is_delta and not ValueCodec.INT8.is_delta
    assert ValueCodec.FP16_DELTA.base_codec is ValueCodec.FP16


def test_golden_fp32() -> None:
    values = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    expected = bytes.fromhex("0000803f" "000000c0" "0000003f")
    assert encode_values(values, [2, 1]) == (ValueCodec.FP32, expected)
    assert np.array_equal(decode_values(1, expected, [2, 1]), values)


def test_golden_fp16() -> None:
    values = np.array([1.0, -2.0], dtype=np.float32)
    assert encode_values(values, [2], "fp16") == (ValueCodec.FP16, bytes.fromhex("003c00c0"))


def test_golden_int8() -> None:
    # Layers: [254, -100] -> scale 2, q = 127, -50; [0, 0] -> scale 0; [-127] -> scale 1.
    values = np.array([254.0, -100.0, 0.0, 0.0, -127.0], dtype=np.float32)
    expected = bytes.fromhex(
        "00000040"  # scale 2.0
        "00000000"  # scale 0.0
        "0000803f"  # scale 1.0
        "7f" "ce" "00" "00" "81"  # 127, -50, 0, 0, -127
    )
    assert encode_values(values, [2, 2, 1], "int8") == (ValueCodec.INT8, expected)
    assert np.array_equal(decode_values(3, expected, [2, 2, 1]), values)


def test_golden_int4() -> None:
    # Layers: [7, -3.5, 0] -> scale 1, q = 7, -4, 0; [2, -14, 0, 6] -> scale 2, q = 1, -7,
    # 0, 3. Nibbles, first value low: 7 c | 0 1 | 9 0 | 3 pad.
    values = np.array([7.0, -3.5, 0.0, 2.0, -14.0, 0.0, 6.0], dtype=np.float32)
    expected = bytes.fromhex(
        "0000803f"  # scale 1.0
        "00000040"  # scale 2.0
        "c7" "10" "09" "03"
    )
    assert encode_values(values, [3, 4], "int4") == (ValueCodec.INT4, expected)
    assert np.array_equal(decode_values(4, expected, [3, 4]),
                          np.array([7.0, -4.0, 0.0, 2.0, -14.0, 0.0, 6.0], dtype=np.float32))


def test_golden_fp32_delta() -> None:
    values = np.array([1.5, 0.0], dtype=np.float32)
    base = np.array([0.5, 2.0], dtype=np.float32)
    expected = bytes.fromhex("0000803f" "000000c0")  # 1.0, -2.0
    assert encode_values(values, [2], base=base) == (ValueCodec.FP32_DELTA, expected)
    assert np.array_equal(decode_values(0x81, expected, [2], base=base), values)


layer_sizes = st.lists(st.integers(0, 40), min_size=1, max_size=6)
finite32 = st.floats(-1e6, 1e6, width=32)


def _values(sizes: list[int], elements: st.SearchStrategy[float] = finite32) -> st.SearchStrategy:
    return hnp.arrays(np.float32, sum(sizes), elements=elements)


@given(layer_sizes.flatmap(lambda s: st.tuples(st.just(s), _values(s, st.floats(width=32)))))
def test_fp32_round_trip_is_exact(case: tuple[list[int], np.ndarray]) -> None:
    sizes, values = case
    codec_id, payload = encode_values(values, sizes, "fp32")
    decoded = decode_values(codec_id, payload, sizes)
    assert decoded.dtype == np.float32
    assert np.array_equal(decoded, values, equal_nan=True)


@given(layer_sizes.flatmap(lambda s: st.tuples(st.just(s), _values(s, st.floats(-6e4, 6e4)))))
def test_fp16_error_bound(case: tuple[list[int], np.ndarray]) -> None:
    sizes, values = case
    codec_id, payload = encode_values(values, sizes, "fp16")
    assert len(payload) == 2 * values.size
    decoded = decode_values(codec_id, payload, sizes)
    # Half precision: relative error 2^-11, and absolute 2^-25 in the subnormal range.
    assert np.all(np.abs(decoded - values) <= np.abs(values) * 2.0**-11 + 2.0**-25)


def _scale_per_value(values: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, start = [], 0
    for size in sizes:
        layer = values[start : start + size]
        out.append(np.full(size, np.abs(layer).max() / 127.0 if size else 0.0))
        start += size
    return np.concatenate(out) if out else np.zeros(0)


@given(layer_sizes.flatmap(lambda s: st.tuples(st.just(s), _values(s))))
def test_int8_error_is_at_most_half_a_step(case: tuple[list[int], np.ndarray]) -> None:
    sizes, values = case
    codec_id, payload = encode_values(values, sizes, "int8")
    assert len(payload) == 4 * len(sizes) + values.size
    decoded = decode_values(codec_id, payload, sizes)
    scale = _scale_per_value(values.astype(np.float64), sizes)
    err = np.abs(decoded.astype(np.float64) - values)
    assert np.all(err <= scale / 2 * (1 + 1e-5) + 1e-30)


def test_golden_int4_deflate() -> None:
    # The int4 golden case's levels, one byte each, in a raw deflate stream after the scales.
    values = np.array([7.0, -3.5, 0.0, 2.0, -14.0, 0.0, 6.0], dtype=np.float32)
    codec_id, payload = encode_values(values, [3, 4], "int4-deflate")
    assert codec_id is ValueCodec.INT4_DEFLATE == 5
    assert payload[:8] == bytes.fromhex("0000803f" "00000040")
    assert zlib.decompress(payload[8:], -15) == bytes.fromhex("07fc0001f90003")
    assert np.array_equal(decode_values(5, payload, [3, 4]),
                          decode_values(*encode_values(values, [3, 4], "int4"), [3, 4]))


def test_int4_deflate_is_small_for_error_fed_deltas() -> None:
    # Mostly-zero levels, as error-fed deltas are: well under the 4 bits of a nibble.
    rng = np.random.default_rng(0)
    values = (rng.laplace(size=6000) * (rng.random(6000) < 0.3)).astype(np.float32)
    _, packed = encode_values(values, [6000], "int4")
    _, deflated = encode_values(values, [6000], "int4-deflate")
    assert len(deflated) < len(packed) / 2


@given(layer_sizes.flatmap(lambda s: st.tuples(st.just(s), _values(s))),
       st.sampled_from(["int4", "int4-deflate"]))
def test_int4_error_is_at_most_half_a_step(case: tuple[list[int], np.ndarray],
                                           codec: str) -> None:
    sizes, values = case
    codec_id, payload = encode_values(values, sizes, codec)
    if codec == "int4":
        assert len(payload) == 4 * len(sizes) + (values.size + 1) // 2
    decoded = decode_values(codec_id, payload, sizes)
    scale = _scale_per_value(values.astype(np.float64), sizes) * 127.0 / 7.0
    err = np.abs(decoded.astype(np.float64) - values)
    assert np.all(err <= scale / 2 * (1 + 1e-5) + 1e-30)


@given(
    layer_sizes.flatmap(lambda s: st.tuples(st.just(s), _values(s), _values(s))),
    st.sampled_from(["fp32", "fp16", "int8", "int4", "int4-deflate"]),
)
@settings(max_examples=60)
def test_delta_round_trip(case: tuple[list[int], np.ndarray, np.ndarray], codec: str) -> None:
    sizes, values, base = case
    values = (base + values / np.float32(1e3)).astype(np.float32)
    codec_id, payload = encode_values(values, sizes, codec, base=base)
    assert codec_id.is_delta
    decoded = decode_values(codec_id, payload, sizes, base=base)
    delta = values.astype(np.float64) - base
    if codec.startswith("int"):
        widen = 1.0 if codec == "int8" else 127.0 / 7.0
        bound = _scale_per_value(delta, sizes) * widen / 2 * (1 + 1e-5)
    elif codec == "fp16":
        bound = np.abs(delta) * 2.0**-11 + 2.0**-25
    else:
        bound = np.zeros(values.size)
    # Re-adding the base costs one float32 rounding of the result.
    bound = bound + np.abs(values) * 2.0**-23 + np.abs(delta) * 2.0**-23
    assert np.all(np.abs(decoded.astype(np.float64) - values) <= bound + 1e-30)


def test_delta_needs_base() -> None:
    base = np.ones(2, dtype=np.float32)
    codec_id, payload = encode_values(np.zeros(2, dtype=np.float32), [2], base=base)
    with pytest.raises(WireError, match="base"):
        decode_values(codec_id, payload, [2])


def test_base_is_ignored_for_plain_payloads() -> None:
    values = np.array([1.0, 2.0], dtype=np.float32)
    codec_id, payload = encode_values(values, [2])
    decoded = decode_values(codec_id, payload, [2], base=np.full(2, 9.0, dtype=np.float32))
    assert np.array_equal(decoded, values)


def test_decoded_array_is_writable() -> None:
    codec_id, payload = encode_values(np.ones(3, dtype=np.float32), [3])
    decoded = decode_values(codec_id, payload, [3])
    decoded[0] = 5.0
    assert decoded[0] == 5.0


def test_fp16_overflow_refused() -> None:
    with pytest.raises(WireError, match="float16"):
        encode_values(np.array([7e4], dtype=np.float32), [1], "fp16")


def test_int8_needs_finite_values() -> None:
    with pytest.raises(WireError, match="finite"):
        encode_values(np.array([1.0, np.nan], dtype=np.float32), [2], "int8")


def test_wrong_inputs_rejected() -> None:
    with pytest.raises(ModelError):
        encode_values(np.ones(3, dtype=np.float32), [2])
    with pytest.raises(ModelError):
        encode_values(np.ones(3, dtype=np.float32), [4, -1])
    with pytest.raises(ModelError):
        encode_values(np.ones(3, dtype=np.int32), [3])
    with pytest.raises(ModelError):
        encode_values(np.ones(3, dtype=np.float32), [3], base=np.ones(2, dtype=np.float32))
    with pytest.raises(WireError, match="unknown value codec"):
        encode_values(np.ones(3, dtype=np.float32), [3], "bf16")


def _deflated(raw: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(raw) + packer.flush()


@pytest.mark.parametrize(
    ("codec_id", "payload", "sizes", "match"),
    [
        (1, b"\x00" * 11, [3], "length"),
        (1, b"\x00" * 13, [3], "length"),
        (2, b"\x00" * 5, [3], "length"),
        (3, b"\x00" * 6, [1, 1], "length"),
        (3, bytes.fromhex("000080bf") + b"\x01", [1], "scales"),  # scale -1.0
        (3, bytes.fromhex("0000c07f") + b"\x01", [1], "scales"),  # scale NaN
        (3, bytes.fromhex("ffff7f7f") + b"\x01", [1], "scales"),  # scale max float32
        (3, bytes.fromhex("0000803f") + b"\x80", [1], "-128"),
        (4, b"\x00" * 7, [3], "length"),  # 3 values take 2 bytes after the scale
        (4, b"\x00" * 4, [1], "length"),
        (4, bytes.fromhex("000080bf") + b"\x01", [1], "scales"),  # scale -1.0
        (4, bytes.fromhex("0000c07f") + b"\x01", [1], "scales"),  # scale NaN
        (4, bytes.fromhex("ffff7f7f") + b"\x01", [1], "scales"),  # scale max float32
        (4, bytes.fromhex("0000803f") + b"\x08", [1], "-8"),
        (4, bytes.fromhex("0000803f") + b"\x81", [2], "-8"),  # -8 in the high nibble
        (4, bytes.fromhex("0000803f") + b"\x11", [1], "padding"),
        (5, b"\x00" * 3, [1], "shorter than its scales"),
        (5, bytes.fromhex("0000803f") + b"\xff\xff", [1], "corrupt"),
        (5, bytes.fromhex("0000803f") + _deflated(b"\x01"), [2], "exactly"),  # short
        (5, bytes.fromhex("0000803f") + _deflated(b"\x01\x01\x01"), [2], "exactly"),  # long
        (5, bytes.fromhex("0000803f") + _deflated(b"\x00" * 10**6), [2], "exactly"),  # bomb
        (5, bytes.fromhex("0000803f") + _deflated(b"\x01\x01")[:-1], [2], "exactly"),  # cut
        (5, bytes.fromhex("0000803f") + _deflated(b"\x01\x01") + b"\x00", [2], "exactly"),
        (5, bytes.fromhex("0000803f") + _deflated(b"\x08"), [1], r"\[-7, 7\]"),
        (5, bytes.fromhex("0000803f") + _deflated(b"\xf8"), [1], r"\[-7, 7\]"),
        (5, bytes.fromhex("000080bf") + _deflated(b"\x01"), [1], "scales"),
        (6, b"", [0], "unknown value codec"),
        (0x86, b"", [0], "unknown value codec"),
    ],
)
def test_malformed_payloads(codec_id: int, payload: bytes, sizes: list[int], match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode_values(codec_id, payload, sizes, base=np.zeros(sum(sizes), dtype=np.float32))


@given(
    st.one_of(st.sampled_from([int(c) for c in ValueCodec]), st.integers(0, 0xFFFF)),
    st.binary(max_size=64),
    st.lists(st.integers(0, 20), max_size=5),
    st.booleans(),
)
@settings(max_examples=300)
def test_random_payloads_raise_only_wire_error(
    codec_id: int, payload: bytes, sizes: list[int], with_base: bool
) -> None:
    base = np.zeros(sum(sizes), dtype=np.float32) if with_base else None
    try:
        decoded = decode_values(codec_id, payload, sizes, base=base)
    except WireError:
        return
    assert decoded.dtype == np.float32 and decoded.size == sum(sizes)
