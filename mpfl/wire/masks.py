"""Mask codecs: a flat bool array in canonical unit order <-> an envelope payload.

Alive-only scope: when the current consensus mask (`scope`) is given, only the bits at
units alive in it are coded; units it prunes are implied False. A mask that revives a
unit pruned in the consensus cannot be sent.

Codecs (the envelope's codec field holds the `MaskCodec` id):

RAW (1)  The coded bits packed 8 per byte, most significant bit first (the byte layout
         of a big-endian bitarray), no header; the payload is exactly ceil(n / 8) bytes
         and the padding bits of the last byte are zero. 1 bit per unit: the right
         choice near density 0.5, where H(p) is close to 1.

RICE (2) Golomb-Rice code of the gaps between units holding the minority symbol
         (see entropy.py). Payload:

             offset  size  field
             0       1     symbol: the coded bit value (0 or 1); all other units hold
                           the other value
             1       1     k: Rice parameter, 0..32
             2       4     count of units holding `symbol`, u32 little-endian
             6       ...   Rice stream: count * k remainder bits, then count unary
                           quotients, MSB first, zero-padded

         Coding the minority symbol makes densities p and 1 - p cost the same, and with
         the exact best k it comes within 1.5 % of n * H(p) for random masks with
         p <= 0.25 (benchmarks/bench_masks.py, 1e6 units: 1.013 x H at p = 0.25,
         1.014 at 0.1, 1.010 at 0.05, 1.004 at 0.01), encoding and decoding in a few
         ms. The alternatives fall behind where masks are sparse: zstd-19 on packed bits
         gives 1.03 x H at p = 0.1 but 1.33 x H at p = 0.01 and takes 20-50 ms to
         encode; bitarray's sparse coding gives 1.38-1.76 x H.

SC (3)   `bitarray.util.sc_encode` of the coded bits. It adapts per block, so it can
         beat a single Rice parameter on masks whose density varies strongly along
         the unit order (for example whole layers kept or dropped).

`encode_mask(..., codec="auto")` encodes with every codec and keeps the smallest
payload (ties go to the lower id). Decoding checks every declared count and length
and raises `WireError` on anything that is not exactly a valid encoding.
"""

from __future__ import annotations

import struct
from enum import IntEnum

import numpy as np
from bitarray import bitarray
from bitarray.util import sc_decode, sc_encode

from mpfl.errors import ModelError, WireError
from mpfl.wire.entropy import (
    best_rice_parameter,
    gaps_to_positions,
    positions_to_gaps,
    rice_decode,
    rice_encode,
)

_RICE_HEADER = struct.Struct("<BBI")
RICE_HEADER_SIZE = _RICE_HEADER.size
MAX_MASK_UNITS = 0xFFFF_FFFF


class MaskCodec(IntEnum):
    """Mask payload formats, by the id carried in the envelope's codec field."""

    RAW = 1
    RICE = 2
    SC = 3


def _as_flat_bool(array: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype != np.bool_ or arr.ndim != 1:
        raise ModelError(f"{what} must be a flat bool array", dtype=str(arr.dtype), ndim=arr.ndim)
    if arr.size > MAX_MASK_UNITS:
        raise ModelError(f"{what} has more units than a v1 mask can hold", units=arr.size)
    return arr


def _scoped_bits(mask: np.ndarray, scope: np.ndarray | None) -> np.ndarray:
    """The bits that travel: the whole mask, or only the units alive in `scope`."""
    mask = _as_flat_bool(mask, "mask")
    if scope is None:
        return mask
    scope = _as_flat_bool(scope, "scope")
    if scope.size != mask.size:
        raise ModelError("mask and scope differ in length", mask=mask.size, scope=scope.size)
    if np.any(mask & ~scope):
        raise WireError(
            "mask revives units pruned in the consensus",
            revived=int(np.count_nonzero(mask & ~scope)),
        )
    return mask[scope]


def _encode_raw(bits: np.ndarray) -> bytes:
    return np.packbits(bits).tobytes()


def _decode_raw(payload: bytes, n: int) -> np.ndarray:
    if len(payload) != (n + 7) // 8:
        raise WireError("raw mask length mismatch", expected=(n + 7) // 8, got=len(payload))
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    if bits[n:].any():
        raise WireError("nonzero padding bits in raw mask")
    return bits[:n].astype(bool)


def _encode_rice(bits: np.ndarray) -> bytes:
    ones = int(np.count_nonzero(bits))
    symbol = 1 if ones <= bits.size - ones else 0
    positions = np.flatnonzero(bits) if symbol else np.flatnonzero(~bits)
    gaps = positions_to_gaps(positions)
    k = best_rice_parameter(gaps)
    return _RICE_HEADER.pack(symbol, k, positions.size) + rice_encode(gaps, k)


def _decode_rice(payload: bytes, n: int) -> np.ndarray:
    if len(payload) < RICE_HEADER_SIZE:
        raise WireError("Rice mask header truncated", got=len(payload))
    symbol, k, count = _RICE_HEADER.unpack_from(payload, 0)
    if symbol > 1:
        raise WireError("Rice mask symbol must be 0 or 1", got=symbol)
    gaps = rice_decode(payload[RICE_HEADER_SIZE:], count, k, n)
    bits = np.full(n, not symbol, dtype=bool)
    bits[gaps_to_positions(gaps)] = bool(symbol)
    return bits


def _encode_sc(bits: np.ndarray) -> bytes:
    packed = bitarray(endian="big")
    packed.pack(bits.view(np.uint8).tobytes())
    return sc_encode(packed)


def _decode_sc(payload: bytes, n: int) -> np.ndarray:
    # Check the declared length before decoding so a hostile header cannot make the
    # decoder allocate more than `n` bits.
    if not payload:
        raise WireError("sc mask payload empty")
    len_bytes = payload[0] & 0x0F
    if len_bytes > 8 or len(payload) < 1 + len_bytes:
        raise WireError("sc mask header truncated or invalid", header=payload[0])
    declared = int.from_bytes(payload[1 : 1 + len_bytes], "little")
    if declared != n:
        raise WireError("sc mask length mismatch", expected=n, got=declared)
    stream = iter(payload)
    try:
        decoded = sc_decode(stream)
    except (ValueError, TypeError, StopIteration, OverflowError, IndexError) as exc:
        raise WireError("malformed sc mask", reason=str(exc)) from exc
    if next(stream, None) is not None:
        raise WireError("trailing bytes after sc mask")
    if len(decoded) != n:
        raise WireError("sc mask length mismatch", expected=n, got=len(decoded))
    return np.frombuffer(decoded.unpack(), dtype=bool).copy()


_ENCODERS = {MaskCodec.RAW: _encode_raw, MaskCodec.RICE: _encode_rice, MaskCodec.SC: _encode_sc}
_DECODERS = {MaskCodec.RAW: _decode_raw, MaskCodec.RICE: _decode_rice, MaskCodec.SC: _decode_sc}


def _resolve_codec(codec: str | MaskCodec) -> MaskCodec | None:
    """None means auto."""
    if isinstance(codec, MaskCodec):
        return codec
    if codec == "auto":
        return None
    try:
        return MaskCodec[str(codec).upper()]
    except KeyError:
        raise WireError(
            "unknown mask codec", codec=codec, choices="auto, " + ", ".join(
                c.name.lower() for c in MaskCodec
            )
        ) from None


def encode_mask(
    mask: np.ndarray, scope: np.ndarray | None = None, codec: str | MaskCodec = "auto"
) -> tuple[MaskCodec, bytes]:
    """Encode `mask` (restricted to units alive in `scope`); returns (codec id, payload)."""
    bits = _scoped_bits(mask, scope)
    chosen = _resolve_codec(codec)
    if chosen is not None:
        return chosen, _ENCODERS[chosen](bits)
    candidates = [(len(p), c, p) for c, p in ((c, enc(bits)) for c, enc in _ENCODERS.items())]
    _, best, payload = min(candidates, key=lambda item: (item[0], item[1]))
    return best, payload


def decode_mask(
    codec_id: int, payload: bytes, n_units: int, scope: np.ndarray | None = None
) -> np.ndarray:
    """Decode a mask of `n_units` units; units pruned in `scope` come back False."""
    if not 0 <= n_units <= MAX_MASK_UNITS:
        raise ModelError("mask length out of range", units=n_units)
    try:
        codec = MaskCodec(codec_id)
    except ValueError:
        raise WireError("unknown mask codec", codec=codec_id) from None
    if scope is None:
        return _DECODERS[codec](bytes(payload), n_units)
    scope = _as_flat_bool(scope, "scope")
    if scope.size != n_units:
        raise ModelError("scope length differs from n_units", scope=scope.size, units=n_units)
    mask = np.zeros(n_units, dtype=bool)
    mask[scope] = _DECODERS[codec](bytes(payload), int(np.count_nonzero(scope)))
    return mask
