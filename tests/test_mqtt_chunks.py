"""Chunk framing for payloads over the broker's packet limit: golden bytes, round trips,
hostile input, redelivery, and dropping incomplete sets."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpfl.errors import ConfigError, WireError
from mpfl.wire.chunks import (
    HEADER_SIZE,
    MAGIC,
    ChunkHeader,
    Reassembler,
    is_chunk,
    parse_chunk,
    split_payload,
)

LIMIT = HEADER_SIZE + 1024


def test_header_golden_bytes() -> None:
    header = ChunkHeader(bytes(range(8)), index=1, count=3, total=0x0102, crc=0xAABBCCDD)
    assert header.encode() == (
        b"MPCK" + b"\x01" + b"\0\0\0" + bytes(range(8)) + b"\x01\0\0\0" + b"\x03\0\0\0"
        + b"\x02\x01\0\0\0\0\0\0" + b"\xdd\xcc\xbb\xaa"
    )
    assert len(header.encode()) == HEADER_SIZE == 36


def test_small_payload_travels_unframed() -> None:
    payload = b"MPFL" + bytes(100)
    assert split_payload(payload, LIMIT) == [payload]
    assert Reassembler().feed("t", payload) == payload


def test_split_respects_limit_and_shares_header_fields() -> None:
    payload = bytes(range(256)) * 40  # 10 KiB
    parts = split_payload(payload, LIMIT, message_id=b"ABCDEFGH")
    assert len(parts) >= 10 and all(len(p) <= LIMIT for p in parts)
    headers = [parse_chunk(p)[0] for p in parts]
    assert [h.index for h in headers] == list(range(len(parts)))
    assert {(h.message_id, h.count, h.total, h.crc) for h in headers} == {
        (b"ABCDEFGH", len(parts), len(payload), zlib.crc32(payload))
    }
    assert b"".join(parse_chunk(p)[1] for p in parts) == payload


@given(
    payload=st.binary(min_size=0, max_size=6000),
    order=st.randoms(use_true_random=False),
    duplicates=st.integers(min_value=0, max_value=3),
)
def test_reassembly_in_any_order_with_redelivery(
    payload: bytes, order: object, duplicates: int
) -> None:
    parts = split_payload(payload, LIMIT)
    shuffled = list(parts) + list(parts[:duplicates])
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    reassembler = Reassembler()
    results = [r for r in (reassembler.feed("a/b", p) for p in shuffled) if r is not None]
    # Redelivered chunks after completion may form the set again: the same bytes, which
    # the coordinator then drops as a duplicate upload.
    assert results and all(r == payload for r in results)


def test_sets_are_keyed_by_topic_and_message_id() -> None:
    a, b = bytes([1]) * 3000, bytes([2]) * 3000
    pa = split_payload(a, LIMIT, b"AAAAAAAA")
    pb = split_payload(b, LIMIT, b"AAAAAAAA")
    r = Reassembler()
    out = []
    for x, y in zip(pa, pb, strict=True):
        out += [r.feed("n/1", x), r.feed("n/2", y)]
    assert [o for o in out if o is not None] == [a, b]


def _corrupt(part: bytes, offset: int) -> bytes:
    return part[:offset] + bytes([part[offset] ^ 0xFF]) + part[offset + 1 :]


def test_corrupted_data_fails_the_crc() -> None:
    parts = split_payload(bytes(5000), LIMIT)
    parts[1] = _corrupt(parts[1], HEADER_SIZE + 3)
    r = Reassembler()
    with pytest.raises(WireError, match="CRC"):
        for p in parts:
            r.feed("t", p)
    assert r.pending == 0


@pytest.mark.parametrize(
    "payload",
    [
        MAGIC,  # shorter than the header
        struct.pack("<4sB3s8sIIQI", MAGIC, 2, b"\0\0\0", bytes(8), 0, 2, 10, 0),  # version
        struct.pack("<4sB3s8sIIQI", MAGIC, 1, b"\0\1\0", bytes(8), 0, 2, 10, 0),  # reserved
        struct.pack("<4sB3s8sIIQI", MAGIC, 1, b"\0\0\0", bytes(8), 2, 2, 10, 0),  # index
        struct.pack("<4sB3s8sIIQI", MAGIC, 1, b"\0\0\0", bytes(8), 0, 1, 10, 0),  # count 1
        struct.pack("<4sB3s8sIIQI", MAGIC, 1, b"\0\0\0", bytes(8), 0, 2, 1 << 40, 0),  # size
    ],
)
def test_malformed_chunks_are_wire_errors(payload: bytes) -> None:
    assert is_chunk(payload)
    with pytest.raises(WireError):
        Reassembler().feed("t", payload)


def test_chunks_disagreeing_on_their_set_are_rejected() -> None:
    first = split_payload(bytes(3000), LIMIT, b"SAMEIDXX")
    other = split_payload(bytes(4000), LIMIT, b"SAMEIDXX")
    r = Reassembler()
    assert r.feed("t", first[0]) is None
    with pytest.raises(WireError, match="disagree"):
        r.feed("t", other[1])


def test_chunks_adding_up_to_more_than_the_total_are_rejected() -> None:
    parts = split_payload(bytes(3000), LIMIT, b"IDIDIDID")
    header, data = parse_chunk(parts[1])
    bloated = header.encode() + data + bytes(2000)
    r = Reassembler()
    r.feed("t", parts[0])
    with pytest.raises(WireError, match="more than"):
        r.feed("t", bloated)


def test_drop_incomplete_and_bounded_pending_sets() -> None:
    now = [0.0]
    r = Reassembler(max_pending=2, clock=lambda: now[0])
    for i in range(3):
        now[0] = float(i)
        r.feed(f"t/{i}", split_payload(bytes(3000), LIMIT)[0])
    assert r.pending == 2 and r.dropped == 1  # the oldest set was evicted
    now[0] = 10.0
    assert r.drop_incomplete(older_than=8.5) == 1
    assert r.drop_incomplete() == 1 and r.pending == 0


def test_limit_must_leave_room_for_data() -> None:
    with pytest.raises(ConfigError):
        split_payload(bytes(10), HEADER_SIZE + 10)
