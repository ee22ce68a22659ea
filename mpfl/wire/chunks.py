"""Chunk framing: payloads larger than the broker's packet limit, split and put back.

paho publishes whatever it is given, and a broker drops the connection on a packet over
its limit, so the sender splits large payloads itself. Each chunk travels on the same
topic as the whole message would, with a fixed little-endian header in front:

    offset  size  field
    0       4     magic          b"MPCK" (an envelope starts with b"MPFL", JSON with "{")
    4       1     version        1
    5       3     reserved       must be 0
    8       8     message id     random, the same in every chunk of one message
    16      4     index          0 .. count-1
    20      4     count          >= 2 (a payload that fits is sent whole, unframed)
    24      8     total length   bytes of the whole payload
    32      4     CRC32          zlib.crc32 of the whole payload
    36      ...   data           this chunk's slice of the payload

Only node uploads (QoS 1, not retained) are chunked. The coordinator's retained messages
are always sent whole: a retained chunk set would need numbered subtopics and cleanup of
stale sets after a restart, and a model too large for the broker is better refused with a
clear error than half-delivered to late joiners.

The ``Reassembler`` keys sets by (topic, message id), ignores redelivered chunks (QoS 1
may deliver twice) and bounds what it holds whatever arrives: a set expires when it is
older than ``max_age``; a sender (the topic without its last level: one node, or the
server) holds at most ``sender_bytes`` of unfinished data, its oldest sets going first;
all senders together at most ``max_bytes`` and ``max_pending`` sets. Every set dropped is
counted in ``expired`` by reason. The service also drops incomplete sets when a round
closes.
"""

from __future__ import annotations

import secrets
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mpfl.errors import ConfigError, WireError

MAGIC = b"MPCK"
VERSION = 1
_HEADER = struct.Struct("<4sB3s8sIIQI")
HEADER_SIZE = _HEADER.size  # 36
MIN_CHUNK_DATA = 1024
# Bounds on what a receiver holds for unfinished sets: hostile or broken senders must not
# make it allocate without limit.
MAX_TOTAL_BYTES = 1 << 30  # the largest message a chunk header may announce
MAX_PENDING_SETS = 256
# What a receiver holds by default: room for a few whole uploads of the largest zoo
# models at once, far below what a flood of never-completing chunks would take.
MAX_HELD_BYTES = 256 << 20
SENDER_BYTES = 64 << 20
MAX_AGE_S = 120.0  # a real upload's chunks arrive within seconds of each other

# Reasons an unfinished set is dropped (``Reassembler.expired``).
EXPIRED = "chunks-expired"  # older than max_age
OVER_BUDGET = "chunks-over-budget"  # its sender holds too much, or it could never fit
EVICTED = "chunks-evicted"  # room for newer sets of other senders
ABANDONED = "chunks-abandoned"  # dropped by the service when a round closed


@dataclass(frozen=True)
class ChunkHeader:
    message_id: bytes
    index: int
    count: int
    total: int
    crc: int

    def encode(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, b"\0\0\0", self.message_id, self.index,
                            self.count, self.total, self.crc)


def is_chunk(payload: bytes) -> bool:
    return payload[:4] == MAGIC


def split_payload(
    payload: bytes, limit: int, message_id: bytes | None = None
) -> list[bytes]:
    """``[payload]`` when it fits in ``limit`` bytes, else framed chunks of at most ``limit``."""
    if limit < HEADER_SIZE + MIN_CHUNK_DATA:
        raise ConfigError("chunk limit too small", limit=limit, minimum=HEADER_SIZE + 1024)
    if len(payload) <= limit and not is_chunk(payload):
        return [payload]
    if len(payload) > MAX_TOTAL_BYTES:
        raise ConfigError("payload too large to send", size=len(payload), limit=MAX_TOTAL_BYTES)
    step = limit - HEADER_SIZE
    count = max(2, -(-len(payload) // step))
    step = -(-len(payload) // count)  # even slices: no tiny last chunk
    mid = message_id if message_id is not None else secrets.token_bytes(8)
    if len(mid) != 8:
        raise ConfigError("chunk message id must be 8 bytes", size=len(mid))
    crc = zlib.crc32(payload)
    return [
        ChunkHeader(mid, i, count, len(payload), crc).encode() + payload[i * step : (i + 1) * step]
        for i in range(count)
    ]


def parse_chunk(payload: bytes) -> tuple[ChunkHeader, bytes]:
    """Header and data of one chunk; WireError for anything that is not a valid chunk."""
    if len(payload) < HEADER_SIZE:
        raise WireError("chunk shorter than its header", size=len(payload))
    magic, version, reserved, mid, index, count, total, crc = _HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise WireError("not a chunk (bad magic)")
    if version != VERSION or reserved != b"\0\0\0":
        raise WireError("unsupported chunk version or reserved bits set", version=version)
    if count < 2 or index >= count:
        raise WireError("chunk index out of range", index=index, count=count)
    if total > MAX_TOTAL_BYTES or total < count:
        raise WireError("chunked message has an impossible length", total=total, count=count)
    return ChunkHeader(mid, index, count, total, crc), payload[HEADER_SIZE:]


def sender_of(topic: str) -> str:
    """Whose budget a set counts against: the topic without its last level."""
    return topic.rpartition("/")[0] or topic


@dataclass
class _PendingSet:
    header: ChunkHeader
    sender: str
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    started: float = 0.0


class Reassembler:
    """Collects chunks per (topic, message id) and returns each whole payload once."""

    def __init__(
        self,
        max_pending: int = MAX_PENDING_SETS,
        max_bytes: int = MAX_HELD_BYTES,
        clock: Callable[[], float] = time.monotonic,
        sender_bytes: int = SENDER_BYTES,
        max_age: float = MAX_AGE_S,
    ) -> None:
        if min(max_pending, max_bytes, sender_bytes) < 1 or max_age <= 0:
            raise ConfigError("chunk budgets must be positive", max_bytes=max_bytes,
                              sender_bytes=sender_bytes, max_age=max_age)
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.sender_bytes = min(sender_bytes, max_bytes)
        self.max_age = max_age
        self.clock = clock
        # Insertion order is start order: the oldest set is always first.
        self._sets: dict[tuple[str, bytes], _PendingSet] = {}
        self._held = 0
        self._by_sender: Counter[str] = Counter()
        self.expired: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        return len(self._sets)

    @property
    def held_bytes(self) -> int:
        """Bytes of unfinished sets held right now."""
        return self._held

    @property
    def dropped(self) -> int:
        return self.expired.total()

    def feed(self, topic: str, payload: bytes) -> bytes | None:
        """The whole payload when ``payload`` completes one (or was never chunked), else None.

        Raises WireError for a malformed chunk or a set whose checksum does not match.
        """
        if not is_chunk(payload):
            return payload
        self.expire()
        header, data = parse_chunk(payload)
        key = (topic, header.message_id)
        entry = self._sets.get(key)
        if entry is None:
            entry = self._open(key, header)
            if entry is None:
                return None
        elif (header.count, header.total, header.crc) != (
            entry.header.count, entry.header.total, entry.header.crc
        ):
            self._discard(key)
            raise WireError("chunks of one message disagree on its size or checksum",
                            topic=topic)
        if header.index in entry.parts:
            return None  # a QoS 1 redelivery
        if entry.size + len(data) > header.total:
            self._discard(key)
            raise WireError("chunks add up to more than their message", topic=topic)
        self._make_room(key, entry.sender, len(data))
        entry.parts[header.index] = data
        entry.size += len(data)
        self._held += len(data)
        self._by_sender[entry.sender] += len(data)
        if len(entry.parts) < header.count:
            return None
        self._discard(key)
        whole = b"".join(entry.parts[i] for i in range(header.count))
        if len(whole) != header.total or zlib.crc32(whole) != header.crc:
            raise WireError("chunked message fails its length or CRC check", topic=topic)
        return whole

    def _open(self, key: tuple[str, bytes], header: ChunkHeader) -> _PendingSet | None:
        if header.total > self.sender_bytes:  # could never complete within the budget
            self.expired[OVER_BUDGET] += 1
            return None
        while len(self._sets) >= self.max_pending:
            self._drop(next(iter(self._sets)), EVICTED)
        entry = _PendingSet(header, sender_of(key[0]), started=self.clock())
        self._sets[key] = entry
        return entry

    def _make_room(self, key: tuple[str, bytes], sender: str, size: int) -> None:
        """Drop the oldest other sets until ``size`` more bytes fit both budgets."""
        while self._by_sender[sender] + size > self.sender_bytes:
            oldest = next(k for k, e in self._sets.items() if e.sender == sender and k != key)
            self._drop(oldest, OVER_BUDGET)
        while self._held + size > self.max_bytes:
            oldest = next(k for k in self._sets if k != key)
            self._drop(oldest, EVICTED)

    def _drop(self, key: tuple[str, bytes], reason: str) -> None:
        self._discard(key)
        self.expired[reason] += 1

    def _discard(self, key: tuple[str, bytes]) -> None:
        entry = self._sets.pop(key, None)
        if entry is not None:
            self._held -= entry.size
            self._by_sender[entry.sender] -= entry.size
            if self._by_sender[entry.sender] <= 0:
                del self._by_sender[entry.sender]

    def expire(self) -> int:
        """Drop the sets older than ``max_age``; how many."""
        deadline = self.clock() - self.max_age
        stale = [k for k, e in self._sets.items() if e.started <= deadline]
        for key in stale:
            self._drop(key, EXPIRED)
        return len(stale)

    def drop_incomplete(self, older_than: float = 0.0) -> int:
        """Forget unfinished sets started at least ``older_than`` seconds ago; how many."""
        now = self.clock()
        stale = [k for k, e in self._sets.items() if now - e.started >= older_than]
        for key in stale:
            self._drop(key, ABANDONED)
        return len(stale)
