"""Value codecs: the alive parameter values, layer by layer, <-> an envelope payload.

With a shared mask only the values of alive units travel, in canonical order with no
indices; `layer_sizes` gives how many values each layer contributes. All numbers are
little-endian.

    FP32 (1)  4 bytes per value (float32). Exact.
    FP16 (2)  2 bytes per value (IEEE half). Relative error <= 2^-11; a finite value
              beyond the half range (|x| > 65504) is refused rather than sent as inf.
    INT8 (3)  one float32 scale per layer (all scales first), then one int8 per value.
              scale = max|x| / 127 over the layer (0 for an all-zero layer) and
              q = round(x / scale), so |x - q * scale| <= scale / 2. Values must be
              finite.
    INT4 (4)  one float32 scale per layer (all scales first), then two values per byte,
              the first in the low nibble, each a 4-bit two's complement q in [-7, 7]:
              scale = max|x| / 7 and q = round(x / scale), so |x - q * scale| <=
              scale / 2. An odd count leaves the last high nibble zero; the nibble -8 and
              a nonzero pad are refused. Meant for deltas with error feedback, where the
              sender carries each round's rounding error into the next.
    INT4_DEFLATE (5)  the int4 levels, entropy-coded: one float32 scale per layer (all
              scales first), then a raw deflate stream (RFC 1951) of one int8 q per
              value, q in [-7, 7]. Error-fed deltas are mostly 0 and +-1, so the stream
              takes 1 to 2 bits per value where packed nibbles take 4. Any valid raw
              deflate stream decodes; the encoder's choice of strategy is its own. Decoding inflates
              at most one byte past the value count, so a crafted stream cannot expand
              beyond it; a stream that is short, long, truncated or followed by bytes
              is refused.

DELTA (0x80) is a flag on the id: the payload holds `values - base` (base: the global
alive values the sender started from), coded as above, and decoding adds the base back.
Decoding a delta without a base is an error; a base passed for a non-delta payload is
ignored, so a receiver can always pass its current global values.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from enum import IntEnum

import numpy as np

from mpfl.errors import ModelError, WireError

DELTA = 0x80
_FP16_MAX = float(np.finfo(np.float16).max)
# The largest q of each integer codec: symmetric ranges, so -q_max - 1 is never sent.
_INT_MAX = {"int8": 127, "int4": 7}
# Raw deflate (no zlib header or checksum: the envelope is already signed and framed).
_DEFLATE_WBITS = -15


class ValueCodec(IntEnum):
    """Value payload formats, by the id carried in the envelope's codec field."""

    FP32 = 1
    FP16 = 2
    INT8 = 3
    INT4 = 4
    INT4_DEFLATE = 5
    FP32_DELTA = 1 | DELTA
    FP16_DELTA = 2 | DELTA
    INT8_DELTA = 3 | DELTA
    INT4_DELTA = 4 | DELTA
    INT4_DEFLATE_DELTA = 5 | DELTA

    @property
    def is_delta(self) -> bool:
        return bool(self & DELTA)

    @property
    def base_codec(self) -> ValueCodec:
        return ValueCodec(self & ~DELTA)


def _check_layer_sizes(layer_sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    sizes = np.asarray(layer_sizes, dtype=np.int64).reshape(-1)
    if sizes.size and sizes.min() < 0:
        raise ModelError("layer sizes must be non-negative")
    return sizes


def _as_flat_float32(array: np.ndarray, what: str, size: int) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.floating):
        raise ModelError(f"{what} must be a flat float array", dtype=str(arr.dtype), ndim=arr.ndim)
    if arr.size != size:
        raise ModelError(f"{what} length does not match the layer sizes", expected=size,
                         got=arr.size)
    return arr.astype(np.float32, copy=False)


def _layer_scales(values: np.ndarray, sizes: np.ndarray, q_max: int) -> np.ndarray:
    scales = np.zeros(sizes.size, dtype=np.float32)
    nonempty = sizes > 0
    if values.size:
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))[nonempty]
        maxima = np.maximum.reduceat(np.abs(values), starts)
        scales[nonempty] = maxima / np.float32(q_max)
    return scales


def _quantise(values: np.ndarray, sizes: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer scales and the integers q with |x - q * scale| <= scale / 2."""
    if not np.all(np.isfinite(values)):
        raise WireError(f"{kind} codec needs finite values")
    q_max = _INT_MAX[kind]
    scales = _layer_scales(values, sizes, q_max)
    per_value = np.repeat(scales, sizes)
    safe = np.where(per_value > 0, per_value, np.float32(1.0))
    return scales, np.clip(np.rint(values / safe), -q_max, q_max).astype(np.int8)


def _read_scales(payload: bytes | memoryview, n_layers: int, kind: str) -> np.ndarray:
    scales = np.frombuffer(payload, dtype="<f4", count=n_layers)
    # A scale above max_float32 / q_max cannot come from finite values and would decode
    # to inf.
    limit = np.float32(np.finfo(np.float32).max / np.float32(_INT_MAX[kind]))
    if not np.all((scales >= 0) & (scales <= limit)):
        raise WireError(f"{kind} scales must be finite, non-negative and in range")
    return scales.astype(np.float32)


def _encode_int8(values: np.ndarray, sizes: np.ndarray) -> bytes:
    scales, q = _quantise(values, sizes, "int8")
    return scales.astype("<f4").tobytes() + q.astype("<i1").tobytes()


def _decode_int8(payload: bytes | memoryview, sizes: np.ndarray) -> np.ndarray:
    n_layers, total = sizes.size, int(sizes.sum())
    expected = 4 * n_layers + total
    if len(payload) != expected:
        raise WireError("int8 payload length mismatch", expected=expected, got=len(payload))
    scales = _read_scales(payload, n_layers, "int8")
    q = np.frombuffer(payload, dtype="<i1", offset=4 * n_layers)
    if (q == -128).any():
        raise WireError("int8 value -128 is outside the symmetric range")
    # Array methods, not np.repeat & co.: their Python wrappers cost more than the work
    # for the few thousand values of a sparse upload, and this runs once per upload.
    return q.astype(np.float32) * scales.repeat(sizes)


def _encode_int4(values: np.ndarray, sizes: np.ndarray) -> bytes:
    scales, q = _quantise(values, sizes, "int4")
    nibbles = (q.astype(np.uint8) & 0x0F)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return scales.astype("<f4").tobytes() + packed.astype(np.uint8).tobytes()


def _decode_int4(payload: bytes | memoryview, sizes: np.ndarray) -> np.ndarray:
    n_layers, total = sizes.size, int(sizes.sum())
    expected = 4 * n_layers + (total + 1) // 2
    if len(payload) != expected:
        raise WireError("int4 payload length mismatch", expected=expected, got=len(payload))
    scales = _read_scales(payload, n_layers, "int4")
    packed = np.frombuffer(payload, dtype=np.uint8, offset=4 * n_layers)
    nibbles = np.empty(2 * packed.size, dtype=np.uint8)
    nibbles[0::2], nibbles[1::2] = packed & 0x0F, packed >> 4
    if total % 2 and nibbles[-1]:
        raise WireError("int4 padding nibble must be zero")
    nibbles = nibbles[:total]
    if np.any(nibbles == 0x08):
        raise WireError("int4 value -8 is outside the symmetric range")
    q = nibbles.astype(np.int8) - ((nibbles & 0x08) << 1).astype(np.int8)
    return q.astype(np.float32) * scales.repeat(sizes)


def _encode_int4_deflate(values: np.ndarray, sizes: np.ndarray) -> bytes:
    scales, q = _quantise(values, sizes, "int4")
    # Z_RLE: the levels are near-independent symbols, which string matching cannot
    # shorten; Huffman codes plus runs of zeros come within 0.15 bit of their entropy
    # where the default strategy spends 0.3 to 0.5 more.
    packer = zlib.compressobj(9, zlib.DEFLATED, _DEFLATE_WBITS, 9, zlib.Z_RLE)
    stream = packer.compress(q.astype("<i1").tobytes()) + packer.flush()
    return scales.astype("<f4").tobytes() + stream


def _decode_int4_deflate(payload: bytes | memoryview, sizes: np.ndarray) -> np.ndarray:
    n_layers, total = sizes.size, int(sizes.sum())
    if len(payload) < 4 * n_layers:
        raise WireError("int4-deflate payload shorter than its scales", got=len(payload))
    scales = _read_scales(payload, n_layers, "int4")
    inflater = zlib.decompressobj(_DEFLATE_WBITS)
    try:  # max_length bounds the output (0 would mean unbounded, hence + 1)
        raw = inflater.decompress(payload[4 * n_layers:], total + 1)
    except zlib.error as exc:
        raise WireError("int4-deflate stream is corrupt", detail=str(exc)) from None
    if len(raw) != total or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        raise WireError("int4-deflate stream does not hold exactly the values", expected=total,
                        got=len(raw), complete=inflater.eof)
    q = np.frombuffer(raw, dtype="<i1")
    if q.size and (q.min() < -7 or q.max() > 7):
        raise WireError("int4-deflate level outside [-7, 7]")
    return q.astype(np.float32) * scales.repeat(sizes)


_INTEGER_CODECS = {
    ValueCodec.INT8: (_encode_int8, _decode_int8),
    ValueCodec.INT4: (_encode_int4, _decode_int4),
    ValueCodec.INT4_DEFLATE: (_encode_int4_deflate, _decode_int4_deflate),
}


def _encode_float(values: np.ndarray, dtype: str) -> bytes:
    if dtype == "<f2":
        finite = values[np.isfinite(values)]
        if finite.size and float(np.max(np.abs(finite))) > _FP16_MAX:
            raise WireError("values exceed the float16 range", max_abs=float(np.abs(finite).max()))
    return values.astype(dtype).tobytes()


def _decode_float(payload: bytes | memoryview, sizes: np.ndarray, dtype: str) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    expected = width * int(sizes.sum())
    if len(payload) != expected:
        raise WireError("value payload length mismatch", expected=expected, got=len(payload),
                        codec=dtype)
    return np.frombuffer(payload, dtype=dtype).astype(np.float32)


def _resolve(codec: str | ValueCodec) -> ValueCodec:
    if isinstance(codec, ValueCodec):
        return codec.base_codec
    try:
        return ValueCodec[str(codec).upper().replace("-", "_")].base_codec
    except KeyError:
        raise WireError("unknown value codec", codec=codec,
                        choices="fp32, fp16, int8, int4, int4-deflate") from None


def encode_values(
    values: np.ndarray,
    layer_sizes: Sequence[int],
    codec: str | ValueCodec = "fp32",
    base: np.ndarray | None = None,
) -> tuple[ValueCodec, bytes]:
    """Encode alive values (as deltas from `base` when given); returns (codec id, payload)."""
    sizes = _check_layer_sizes(layer_sizes)
    total = int(sizes.sum())
    vals = _as_flat_float32(values, "values", total)
    chosen = _resolve(codec)
    if base is not None:
        vals = vals - _as_flat_float32(base, "base", total)
        chosen = ValueCodec(chosen | DELTA)
    if chosen.base_codec in _INTEGER_CODECS:
        payload = _INTEGER_CODECS[chosen.base_codec][0](vals, sizes)
    else:
        payload = _encode_float(vals, "<f4" if chosen.base_codec is ValueCodec.FP32 else "<f2")
    return chosen, payload


def decode_values(
    codec_id: int,
    payload: bytes | memoryview,
    layer_sizes: Sequence[int] | np.ndarray,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """Decode a value payload to a fresh float32 array (adding `base` for delta codecs)."""
    sizes = _check_layer_sizes(layer_sizes)
    try:
        codec = ValueCodec(codec_id)
    except ValueError:
        raise WireError("unknown value codec", codec=codec_id) from None
    # No bytes() copy of a view: every decoder below reads it once into a new array.
    if codec.base_codec in _INTEGER_CODECS:
        decoded = _INTEGER_CODECS[codec.base_codec][1](payload, sizes)
    elif codec.base_codec is ValueCodec.FP16:
        decoded = _decode_float(payload, sizes, "<f2")
    else:
        decoded = _decode_float(payload, sizes, "<f4")
    if not codec.is_delta:
        return decoded
    if base is None:
        raise WireError("delta payload needs the base values", codec=codec.name)
    return decoded + _as_flat_float32(base, "base", decoded.size)
