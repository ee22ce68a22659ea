"""The v1 binary envelope that wraps every model, mask and update message.

All integers are little-endian and unsigned. The layout, in order:

    offset      size  field
    0           4     magic            b"MPFL"
    4           1     version          1
    5           1     kind             a `Kind` (0 and 6..255 are reserved)
    6           1     flags            must be 0 (bit 0 is kept for a signature, below)
    7           1     reserved         must be 0
    8           4     round
    12          8     fingerprint      model fingerprint, raw bytes
    20          1     node id length   N, at most 64 (0 for the coordinator)
    21          N     node id          UTF-8
    21+N        2     codec            meaning depends on kind (see masks.py, values.py)
    23+N        4     payload length   L
    27+N        L     payload
    end-4       4     CRC32            zlib.crc32 of every byte before it

The CRC catches corruption, not forgery: authenticity comes from the signed frame every
message travels in when keys are configured (``mpfl.wire.frame``), around the envelope,
not in it. Flags bit 0 stays reserved, and an envelope claiming it is still rejected.
Splitting large messages into chunks is the transport's job, so the envelope has no chunk
fields. Decoding is strict: one byte too few
or too many is an error, so every valid message has exactly one encoding.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from mpfl.errors import FingerprintMismatch, WireError

MAGIC = b"MPFL"
VERSION = 1
FINGERPRINT_SIZE = 8
MAX_NODE_ID_BYTES = 64
FLAG_SIGNED = 0x01  # reserved: set by a signed envelope, which this version rejects

# magic, version, kind, flags, reserved, round, fingerprint, node id length
_PREFIX = struct.Struct("<4sBBBBI8sB")
# codec, payload length
_MIDDLE = struct.Struct("<HI")
_CRC = struct.Struct("<I")

HEADER_SIZE = _PREFIX.size  # 21: the fixed part before the node id
CRC_SIZE = _CRC.size
MIN_MESSAGE_SIZE = HEADER_SIZE + _MIDDLE.size + CRC_SIZE  # 31: empty node id and payload
MAX_PAYLOAD_SIZE = 0xFFFF_FFFF


class Kind(IntEnum):
    """What the payload of an envelope holds."""

    MODEL = 1  # coordinator -> all: weights (dense at start, alive values in phase T)
    MASK = 2  # coordinator -> all: consensus mask
    LOCAL_MASK = 3  # node -> coordinator: a node's mask for this round
    UPDATE = 4  # node -> coordinator: alive values after local training
    PARTIAL = 5  # region -> root: its nodes' votes and weighted sums (mpfl.wire.partial)


@dataclass(frozen=True)
class Envelope:
    """One v1 message; validates its own fields so every instance can be encoded."""

    kind: Kind
    round: int
    fingerprint: bytes
    node_id: str
    codec: int
    payload: bytes

    def __post_init__(self) -> None:
        ctx: dict[str, Any] = {"kind": _kind_name(self.kind), "round": self.round}
        if not isinstance(self.kind, Kind):
            try:
                object.__setattr__(self, "kind", Kind(self.kind))
            except ValueError as exc:
                raise WireError("unknown message kind", **ctx) from exc
        if not 0 <= self.round <= 0xFFFF_FFFF:
            raise WireError("round does not fit in u32", **ctx)
        if len(self.fingerprint) != FINGERPRINT_SIZE:
            raise WireError(
                "fingerprint must be 8 bytes", got=len(self.fingerprint), **ctx
            )
        try:
            node_bytes = self.node_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise WireError("node id is not valid UTF-8", **ctx) from exc
        if len(node_bytes) > MAX_NODE_ID_BYTES:
            raise WireError(
                "node id longer than 64 bytes", got=len(node_bytes), node=self.node_id, **ctx
            )
        if not 0 <= self.codec <= 0xFFFF:
            raise WireError("codec does not fit in u16", codec=self.codec, **ctx)
        if len(self.payload) > MAX_PAYLOAD_SIZE:
            raise WireError("payload longer than 4 GiB", **ctx)


_KIND_NAMES = {int(kind): kind.name for kind in Kind}


def _kind_name(kind: int) -> str:
    return _KIND_NAMES.get(kind, str(kind))  # a dict, not Kind(): this runs per message


def encode_envelope(env: Envelope) -> bytes:
    """Serialise an envelope (unsigned: flags and reserved bytes are 0)."""
    node_bytes = env.node_id.encode("utf-8")
    prefix = _PREFIX.pack(
        MAGIC,
        VERSION,
        int(env.kind),
        0,
        0,
        env.round,
        env.fingerprint,
        len(node_bytes),
    )
    body = b"".join(
        (prefix, node_bytes, _MIDDLE.pack(env.codec, len(env.payload)), env.payload)
    )
    return body + _CRC.pack(zlib.crc32(body))


def message_size(env: Envelope) -> int:
    """Length in bytes of `encode_envelope(env)`, without building it."""
    return MIN_MESSAGE_SIZE + len(env.node_id.encode("utf-8")) + len(env.payload)


def decode_envelope(
    data: bytes,
    *,
    expected_fingerprint: bytes | None = None,
    expected_kind: Kind | None = None,
) -> Envelope:
    """Parse and check one envelope.

    Raises `WireError` for anything malformed (with the kind, round and node id in its
    context once they are known) and `FingerprintMismatch` when the message is for
    another model.
    """
    data = bytes(data)
    if len(data) < MIN_MESSAGE_SIZE:
        raise WireError("message truncated", expected_at_least=MIN_MESSAGE_SIZE, got=len(data))
    magic, version, kind_id, flags, reserved, round_, fingerprint, node_len = (
        _PREFIX.unpack_from(data, 0)
    )
    if magic != MAGIC:
        raise WireError("bad magic, not an mpfl message", got=magic.hex())
    if version != VERSION:
        raise WireError("unsupported protocol version", expected=VERSION, got=version)
    ctx: dict[str, Any] = {"kind": _kind_name(kind_id), "round": round_}
    if flags & FLAG_SIGNED:
        # Checked first: its layout after the payload is not this version's to parse.
        raise WireError("signed envelopes are not supported: this version cannot verify "
                        "a signature, so it does not accept one", **ctx)

    pos = HEADER_SIZE
    node_bytes = data[pos : pos + node_len]
    pos += node_len
    # Every length below is checked against what is left before the CRC.
    body_end = len(data) - CRC_SIZE
    if pos + _MIDDLE.size > body_end:
        raise WireError("message truncated in the header", got=len(data), **ctx)
    codec, payload_len = _MIDDLE.unpack_from(data, pos)
    pos += _MIDDLE.size
    if pos + payload_len > body_end:
        raise WireError(
            "message truncated in the payload",
            declared=payload_len,
            available=max(body_end - pos, 0),
            **ctx,
        )
    payload = data[pos : pos + payload_len]
    pos += payload_len
    if pos != body_end:
        raise WireError("trailing bytes after the message", extra=body_end - pos, **ctx)
    (crc,) = _CRC.unpack_from(data, body_end)
    if crc != zlib.crc32(memoryview(data)[:body_end]):  # a view: no copy of the body
        raise WireError("CRC mismatch, message corrupted", **ctx)

    try:
        node_id = node_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("node id is not valid UTF-8", **ctx) from exc
    ctx["node"] = node_id or None
    if node_len > MAX_NODE_ID_BYTES:
        raise WireError("node id longer than 64 bytes", got=node_len, **ctx)
    if kind_id not in Kind._value2member_map_:
        raise WireError("unknown message kind", **ctx)
    if flags or reserved:
        raise WireError("reserved header bits set", flags=flags, reserved=reserved, **ctx)
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise FingerprintMismatch(
            "message is for another model",
            expected=expected_fingerprint.hex(),
            got=fingerprint.hex(),
            **ctx,
        )
    if expected_kind is not None and kind_id != expected_kind:
        raise WireError("unexpected message kind", expected=Kind(expected_kind).name, **ctx)
    return Envelope(
        kind=Kind(kind_id),
        round=round_,
        fingerprint=fingerprint,
        node_id=node_id,
        codec=codec,
        payload=payload,
    )
