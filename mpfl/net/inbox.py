"""The hand-over from a network thread to a service's main thread, and byte accounting.

The MQTT client runs its network loop in a thread of its own and only ``put``s what
arrives here; the service's main thread calls ``dispatch``, which reassembles chunked
payloads and calls the subscribed handlers. Training or aggregation in a handler
therefore never stalls the network loop (keepalives, acknowledgements, reconnects).

What waits in the queue is bounded too (``max_queued_bytes``): when the main thread falls
behind, ``put`` holds the network thread, so TCP pushes back and the broker keeps the
backlog (QoS 1), instead of this process holding a whole round of uploads: the
coordinator's memory stays the same whatever the number of nodes.

Unfinished chunk sets are bounded by the ``Reassembler``'s budgets and age; what it drops
is counted in ``reassembler.expired`` by reason, malformed chunks in ``bad_chunks``.

``ByteLedger`` counts the exact bytes each side sends and receives, by message kind
(``server/model``, ``nodes/update``, ...), as they cross the wire: chunk headers included.
It is the transport's measurement; the protocol figures of the round records are the
coordinator's (``mpfl.federation.traffic``).
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mpfl.errors import WireError
from mpfl.federation.transport import Handler, topic_matches
from mpfl.wire.chunks import Reassembler

MAX_QUEUED_BYTES = 16 << 20
# A main thread busy for longer than this (a checkpoint on a slow disk, a stop) must not
# stall the network thread past the broker's keepalive: the message is queued regardless.
PUT_WAIT_S = 5.0


def message_kind(topic: str) -> str:
    """``server/<name>`` or ``nodes/<name>`` for a protocol topic, else ``other``."""
    levels = topic.split("/")
    if len(levels) >= 5 and levels[3] == "server":
        return "server/" + "/".join(levels[4:])
    if len(levels) >= 6 and levels[3] == "nodes":
        return "nodes/" + "/".join(levels[5:])
    return "other"


@dataclass
class ByteLedger:
    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    sent_messages: Counter[str] = field(default_factory=Counter)
    received_messages: Counter[str] = field(default_factory=Counter)
    # Totals at the last ``window()``: what a round's share is measured from.
    _window_start: dict[str, Counter[str]] = field(default_factory=dict, repr=False)

    def record_sent(self, topic: str, size: int) -> None:
        kind = message_kind(topic)
        self.sent[kind] += size
        self.sent_messages[kind] += 1

    def record_received(self, topic: str, size: int) -> None:
        kind = message_kind(topic)
        self.received[kind] += size
        self.received_messages[kind] += 1

    def window(self) -> dict[str, dict[str, int]]:
        """Bytes sent and received by kind since the previous call (or since the start)."""
        out: dict[str, dict[str, int]] = {}
        for name, counter in (("sent", self.sent), ("received", self.received)):
            delta = Counter(counter)
            delta.subtract(self._window_start.get(name, Counter()))
            out[name] = {k: v for k, v in sorted(delta.items()) if v}
            self._window_start[name] = Counter(counter)
        return out

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "sent_bytes": dict(sorted(self.sent.items())),
            "received_bytes": dict(sorted(self.received.items())),
            "sent_messages": dict(sorted(self.sent_messages.items())),
            "received_messages": dict(sorted(self.received_messages.items())),
        }


@dataclass(frozen=True)
class _Connected:
    session_present: bool


class Inbox:
    """Thread-safe queue of incoming messages and connection events, drained by ``dispatch``."""

    def __init__(
        self,
        ledger: ByteLedger | None = None,
        reassembler: Reassembler | None = None,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.ledger = ledger if ledger is not None else ByteLedger()
        # Its budgets bound what unfinished chunk sets hold, whatever arrives; sets are
        # also expired by age on every dispatch, so a quiet link frees them too.
        self.reassembler = reassembler if reassembler is not None else Reassembler()
        self.bad_chunks = 0
        self._reported: Counter[str] = Counter()  # chunk drops already handed out
        self.on_connected: Callable[[bool], None] | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._room = threading.Condition()
        self._subs: list[tuple[str, Handler]] = []

    def new_chunk_drops(self, malformed: str) -> Counter[str]:
        """Chunk drops since the last call, by reason: unfinished sets the reassembler gave
        up (expired, over a sender's budget, evicted, abandoned) and malformed chunks,
        counted under ``malformed``."""
        now = Counter(self.reassembler.expired)
        now[malformed] = self.bad_chunks
        gained = now - self._reported  # keeps only the reasons that grew
        self._reported = now
        return gained

    # -- any thread -----------------------------------------------------------------------

    def put(self, topic: str, payload: bytes) -> None:
        """Queue a message; waits (up to PUT_WAIT_S) while ``max_queued_bytes`` are queued."""
        with self._room:
            if self._queued_bytes >= self.max_queued_bytes:
                self._room.wait_for(lambda: self._queued_bytes < self.max_queued_bytes,
                                    PUT_WAIT_S)
            self._queued_bytes += len(payload)
        self._queue.put((topic, payload))

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def put_connected(self, session_present: bool) -> None:
        self._queue.put(_Connected(session_present))

    # -- the main thread ------------------------------------------------------------------

    @property
    def filters(self) -> list[str]:
        return [f for f, _ in self._subs]

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self._subs.append((topic_filter, handler))

    def dispatch(self, timeout: float = 0.0) -> int:
        """Wait up to ``timeout`` s for something, then handle all that is queued; how many."""
        handled = 0
        block = timeout > 0
        self.reassembler.expire()
        while True:
            try:
                item = self._queue.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return handled
            block = False
            handled += 1
            if isinstance(item, _Connected):
                if self.on_connected is not None:
                    self.on_connected(item.session_present)
                continue
            topic, payload = item
            with self._room:
                self._queued_bytes -= len(payload)
                self._room.notify()
            self.ledger.record_received(topic, len(payload))
            try:
                whole = self.reassembler.feed(topic, payload)
            except WireError:
                self.bad_chunks += 1
                continue
            if whole is None:
                continue
            for topic_filter, handler in self._subs:
                if topic_matches(topic_filter, topic):
                    handler(topic, whole)
