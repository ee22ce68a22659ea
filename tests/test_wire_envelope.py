"""The v1 envelope: golden bytes, round trips and every way a message can be malformed."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpfl.wire as wire
from mpfl.errors import FingerprintMismatch, WireError
from mpfl.wire import (
    Envelope,
    Kind,
    decode_envelope,
    encode_envelope,
    message_size,
)

FP = bytes.fromhex("0102030405060708")

# Written out field by field from the layout table in envelope.py.
GOLDEN_UNSIGNED = bytes.fromhex(
    "4d50464c"  # magic "MPFL"
    "01"  # version
    "03"  # kind LOCAL_MASK
    "00"  # flags
    "00"  # reserved
    "07000000"  # round 7
    "0102030405060708"  # fingerprint
    "04"  # node id length
    "70692d33"  # "pi-3"
    "0200"  # codec 2
    "03000000"  # payload length 3
    "aabbcc"  # payload
    "b69993ea"  # CRC32 of all of the above, little-endian
)

# A signed envelope as a later version will lay it out (a u16 signature length and the
# signature before the CRC). This version cannot verify it, so it must refuse it.
GOLDEN_SIGNED = bytes.fromhex(
    "4d50464c"  # magic
    "01"  # version
    "01"  # kind MODEL
    "01"  # flags: signed
    "00"  # reserved
    "00010000"  # round 256
    "1122334455667788"  # fingerprint
    "00"  # node id length: the coordinator
    "0100"  # codec 1
    "00000000"  # empty payload
    "0200"  # signature length 2
    "beef"  # signature
    "bfaffe9d"  # CRC32
)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _patched(message: bytes, offset: int, new: bytes) -> bytes:
    """Replace bytes in a valid message and recompute its CRC, to reach later checks."""
    body = bytearray(message[:-4])
    body[offset : offset + len(new)] = new
    return _with_crc(bytes(body))


def test_golden_bytes_unsigned() -> None:
    env = Envelope(Kind.LOCAL_MASK, 7, FP, "pi-3", 2, b"\xaa\xbb\xcc")
    assert zlib.crc32(GOLDEN_UNSIGNED[:-4]) == int.from_bytes(GOLDEN_UNSIGNED[-4:], "little")
    assert encode_envelope(env) == GOLDEN_UNSIGNED
    assert decode_envelope(GOLDEN_UNSIGNED) == env


def test_a_signed_envelope_is_refused_until_signatures_can_be_verified() -> None:
    assert zlib.crc32(GOLDEN_SIGNED[:-4]) == int.from_bytes(GOLDEN_SIGNED[-4:], "little")
    with pytest.raises(WireError, match="signed envelopes are not supported") as info:
        decode_envelope(GOLDEN_SIGNED)
    assert info.value.context == {"kind": "MODEL", "round": 256}
    # Unsigned, the same message is accepted: only the claim of a signature is refused.
    unsigned = _patched(GOLDEN_SIGNED[:-4 - 2 - 2] + b"\x00" * 4, 6, b"\x00")
    assert decode_envelope(unsigned) == Envelope(Kind.MODEL, 256,
                                                 bytes.fromhex("1122334455667788"), "", 1, b"")
    # Whatever follows the payload, the flag alone is enough to refuse it.
    with pytest.raises(WireError, match="signed envelopes"):
        decode_envelope(_patched(unsigned, 6, b"\x01"))


def test_the_encoder_never_claims_a_signature() -> None:
    env = Envelope(Kind.MODEL, 256, bytes.fromhex("1122334455667788"), "", 1, b"")
    assert encode_envelope(env)[6] == 0
    assert not hasattr(env, "signature")


def test_header_constants_match_layout() -> None:
    assert wire.HEADER_SIZE == 21
    assert wire.MIN_MESSAGE_SIZE == 31
    assert wire.MAGIC == b"MPFL" and wire.VERSION == 1
    assert [k.value for k in Kind] == [1, 2, 3, 4, 5]


def test_public_api_is_sorted_and_importable() -> None:
    assert wire.__all__ == sorted(wire.__all__)
    for name in wire.__all__:
        assert hasattr(wire, name)


envelopes = st.builds(
    Envelope,
    kind=st.sampled_from(list(Kind)),
    round=st.integers(0, 2**32 - 1),
    fingerprint=st.binary(min_size=8, max_size=8),
    node_id=st.text(max_size=16),
    codec=st.integers(0, 2**16 - 1),
    payload=st.binary(max_size=300),
)


@given(envelopes)
def test_round_trip(env: Envelope) -> None:
    data = encode_envelope(env)
    assert len(data) == message_size(env)
    decoded = decode_envelope(data, expected_fingerprint=env.fingerprint, expected_kind=env.kind)
    assert decoded == env


@given(envelopes, st.data())
def test_every_truncation_is_rejected(env: Envelope, data: st.DataObject) -> None:
    message = encode_envelope(env)
    cut = data.draw(st.integers(0, len(message) - 1))
    with pytest.raises(WireError):
        decode_envelope(message[:cut])


@given(envelopes, st.data())
def test_any_single_byte_change_is_rejected(env: Envelope, data: st.DataObject) -> None:
    message = bytearray(encode_envelope(env))
    index = data.draw(st.integers(0, len(message) - 1))
    message[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(WireError):
        decode_envelope(bytes(message))


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    for candidate in (data, b"MPFL\x01" + data, _with_crc(b"MPFL\x01" + data)):
        with contextlib.suppress(WireError):
            decode_envelope(candidate)


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(WireError, match="trailing"):
        decode_envelope(_with_crc(GOLDEN_UNSIGNED[:-4] + b"\x00"))


def test_payload_length_too_large_rejected() -> None:
    with pytest.raises(WireError, match="truncated in the payload"):
        decode_envelope(_patched(GOLDEN_UNSIGNED, 27, struct.pack("<I", 4)))


def test_bad_magic_rejected() -> None:
    with pytest.raises(WireError, match="magic"):
        decode_envelope(b"MQTT" + GOLDEN_UNSIGNED[4:])


def test_unsupported_version_rejected() -> None:
    with pytest.raises(WireError, match="version") as info:
        decode_envelope(_patched(GOLDEN_UNSIGNED, 4, b"\x02"))
    assert info.value.context["got"] == 2


def test_bad_crc_rejected_with_context() -> None:
    corrupted = GOLDEN_UNSIGNED[:-1] + bytes([GOLDEN_UNSIGNED[-1] ^ 1])
    with pytest.raises(WireError, match="CRC") as info:
        decode_envelope(corrupted)
    assert info.value.context["round"] == 7
    assert info.value.context["kind"] == "LOCAL_MASK"


@pytest.mark.parametrize("kind", [0, 6, 255])
def test_unknown_kind_rejected(kind: int) -> None:
    with pytest.raises(WireError, match="unknown message kind") as info:
        decode_envelope(_patched(GOLDEN_UNSIGNED, 5, bytes([kind])))
    assert info.value.context["node"] == "pi-3"


def test_bad_utf8_node_id_rejected() -> None:
    with pytest.raises(WireError, match="UTF-8"):
        decode_envelope(_patched(GOLDEN_UNSIGNED, 21, b"\xff\xfe"))


@pytest.mark.parametrize(("offset", "value"), [(6, b"\x02"), (6, b"\x80"), (7, b"\x01")])
def test_reserved_bits_rejected(offset: int, value: bytes) -> None:
    with pytest.raises(WireError, match="reserved"):
        decode_envelope(_patched(GOLDEN_UNSIGNED, offset, value))


def test_fingerprint_mismatch() -> None:
    with pytest.raises(FingerprintMismatch) as info:
        decode_envelope(GOLDEN_UNSIGNED, expected_fingerprint=b"\x00" * 8)
    assert info.value.context["got"] == FP.hex()
    assert info.value.context["node"] == "pi-3"
    assert info.value.context["round"] == 7


def test_unexpected_kind_is_a_wire_error_not_a_fingerprint_error() -> None:
    with pytest.raises(WireError, match="unexpected message kind") as info:
        decode_envelope(GOLDEN_UNSIGNED, expected_kind=Kind.UPDATE)
    assert not isinstance(info.value, FingerprintMismatch)


@pytest.mark.parametrize(
    "fields",
    [
        {"fingerprint": b"\x00" * 7},
        {"fingerprint": b"\x00" * 9},
        {"node_id": "x" * 65},
        {"node_id": "\u00e9" * 33},  # 66 bytes in UTF-8
        {"node_id": "\ud800"},
        {"round": -1},
        {"round": 2**32},
        {"codec": 2**16},
        {"kind": 9},
    ],
)
def test_invalid_envelope_cannot_be_built(fields: dict[str, object]) -> None:
    base: dict[str, object] = {
        "kind": Kind.MASK, "round": 1, "fingerprint": FP, "node_id": "n", "codec": 1,
        "payload": b"",
    }
    base.update(fields)
    with pytest.raises(WireError):
        Envelope(**base)  # type: ignore[arg-type]


def test_plain_int_kind_is_accepted() -> None:
    env = Envelope(2, 1, FP, "", 1, b"")  # type: ignore[arg-type]
    assert env.kind is Kind.MASK


def test_node_id_of_64_utf8_bytes_round_trips() -> None:
    env = Envelope(Kind.UPDATE, 3, FP, "\u00e9" * 32, 1, b"x")
    assert decode_envelope(encode_envelope(env)).node_id == "\u00e9" * 32
