"""The in-memory transport: MQTT topic matching, retained messages, queued delivery."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpfl.federation.transport import MemoryBroker, topic_matches
from mpfl.wire.protocol import Publish


def _reference_match(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7 as a regular expression, written independently."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    if topic_filter == "#":
        return True
    parts = topic_filter.split("/")
    pattern = "/".join("[^/]*" if p == "+" else re.escape(p) for p in parts if p != "#")
    if parts[-1] == "#":
        pattern += "(/.*)?"  # the levels below, or none: 'a/#' matches 'a' too
    return re.fullmatch(pattern, topic) is not None


levels = st.sampled_from(["a", "b", "", "$SYS", "node-1"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(["a", "b", "", "+", "$SYS"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append("#")
    return "/".join(parts)


@given(filters(), st.lists(levels, min_size=1, max_size=5).map("/".join))
def test_topic_matching_agrees_with_the_mqtt_rules(topic_filter: str, topic: str) -> None:
    assert topic_matches(topic_filter, topic) == _reference_match(topic_filter, topic)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("mpfl/v1/f/nodes/+/mask", "mpfl/v1/f/nodes/n1/mask", True),
        ("mpfl/v1/f/nodes/+/mask", "mpfl/v1/f/nodes/n1/update", False),
        ("mpfl/v1/f/nodes/#", "mpfl/v1/f/nodes/n1/mask", True),
        ("mpfl/v1/f/nodes/#", "mpfl/v1/f/nodes", True),  # '#' includes the parent level
        ("mpfl/v1/f/server/#", "mpfl/v1/g/server/state", False),
        ("+/+", "a", False),
        ("+", "a/b", False),
        ("a/+", "a/", True),  # '+' matches an empty level
        ("#", "anything/at/all", True),
        ("#", "$SYS/broker/load", False),
        ("+/broker", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker", True),
    ],
)
def test_topic_matching_examples(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def _recorder(log: list[tuple[str, str, bytes]], name: str):  # type: ignore[no-untyped-def]
    def handle(topic: str, payload: bytes) -> None:
        log.append((name, topic, payload))

    return handle


def test_messages_wait_in_the_queue_until_pumped() -> None:
    broker = MemoryBroker()
    log: list[tuple[str, str, bytes]] = []
    broker.subscribe("x/+", _recorder(log, "s"))
    broker.publish(Publish("x/1", b"one"))
    broker.publish(Publish("y/1", b"other"))
    assert log == []
    assert broker.pump() == 1
    assert log == [("s", "x/1", b"one")]
    assert broker.pump() == 0


def test_retained_messages_replay_to_late_subscribers_newest_only() -> None:
    broker = MemoryBroker()
    broker.publish(Publish("s/state", b"v1", retain=True))
    broker.publish(Publish("s/state", b"v2", retain=True))
    broker.publish(Publish("s/other", b"not retained"))
    log: list[tuple[str, str, bytes]] = []
    broker.subscribe("s/#", _recorder(log, "late"))
    broker.pump()
    assert log == [("late", "s/state", b"v2")]


def test_an_empty_retained_message_clears_the_topic() -> None:
    broker = MemoryBroker()
    early: list[tuple[str, str, bytes]] = []
    broker.subscribe("s/#", _recorder(early, "early"))
    broker.publish(Publish("s/state", b"v1", retain=True))
    broker.publish(Publish("s/state", b"", retain=True))
    broker.pump()
    assert early == [("early", "s/state", b"v1"), ("early", "s/state", b"")]
    late: list[tuple[str, str, bytes]] = []
    broker.subscribe("s/#", _recorder(late, "late"))
    broker.pump()
    assert late == [] and "s/state" not in broker.retained


def test_handlers_can_publish_and_delivery_stays_in_order() -> None:
    broker = MemoryBroker()
    client = broker.client()
    log: list[tuple[str, str, bytes]] = []

    def echo(topic: str, payload: bytes) -> None:
        log.append(("echo", topic, payload))
        if topic == "ping":
            client.publish(Publish("pong", payload + b"!"))

    client.subscribe("#", echo)
    client.publish(Publish("ping", b"a"))
    client.publish(Publish("ping", b"b"))
    assert broker.pump() == 4
    assert [entry[1:] for entry in log] == [("ping", b"a"), ("ping", b"b"), ("pong", b"a!"),
                                            ("pong", b"b!")]


def test_pump_limit_and_byte_counts() -> None:
    broker = MemoryBroker()
    log: list[tuple[str, str, bytes]] = []
    broker.subscribe("t", _recorder(log, "a"))
    broker.subscribe("+", _recorder(log, "b"))
    for i in range(3):
        broker.publish(Publish("t", bytes(i + 1)))
    assert broker.pump(limit=4) == 4
    assert broker.pump() == 2
    assert broker.bytes_by_topic == {"t": 1 + 2 + 3}  # counted once per publish, not per copy
