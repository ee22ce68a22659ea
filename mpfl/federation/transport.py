"""The transport seam: publish and subscribe, nothing else.

Services talk to a ``Transport``; the paho-backed one lives in each service package, and
``MemoryBroker`` here gives unit tests and the in-process runner the same behaviour
(retained messages replayed on subscribe, ``+``/``#`` filters) without a network.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from mpfl.wire.protocol import Publish

Handler = Callable[[str, bytes], None]


class Transport(Protocol):
    def publish(self, message: Publish) -> None: ...

    def subscribe(self, topic_filter: str, handler: Handler) -> None: ...


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching: ``+`` is one level, a trailing ``#`` any number of levels.

    As in MQTT, a leading wildcard never matches a ``$``-topic (``$SYS/...``), and
    ``a/#`` also matches ``a`` itself.
    """
    f, t = topic_filter.split("/"), topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


class MemoryBroker:
    """A synchronous in-process broker: messages queue until ``pump`` delivers them."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self._subs: list[tuple[str, Handler]] = []
        self._queue: deque[tuple[Handler, str, bytes]] = deque()
        self.bytes_by_topic: dict[str, int] = {}

    def client(self) -> MemoryTransport:
        return MemoryTransport(self)

    def publish(self, message: Publish) -> None:
        self.bytes_by_topic[message.topic] = (
            self.bytes_by_topic.get(message.topic, 0) + len(message.payload)
        )
        if message.retain and message.payload:
            self.retained[message.topic] = message.payload
        elif message.retain:  # MQTT: an empty retained message clears the topic
            self.retained.pop(message.topic, None)
        for topic_filter, handler in self._subs:
            if topic_matches(topic_filter, message.topic):
                self._queue.append((handler, message.topic, message.payload))

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self._subs.append((topic_filter, handler))
        for topic, payload in self.retained.items():
            if topic_matches(topic_filter, topic):
                self._queue.append((handler, topic, payload))

    def pump(self, limit: int = 1_000_000) -> int:
        """Deliver queued messages (and those their handlers publish); returns how many."""
        delivered = 0
        while self._queue and delivered < limit:
            handler, topic, payload = self._queue.popleft()
            handler(topic, payload)
            delivered += 1
        return delivered


class MemoryTransport:
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def publish(self, message: Publish) -> None:
        self.broker.publish(message)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self.broker.subscribe(topic_filter, handler)
