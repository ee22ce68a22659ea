"""Topic names of the v1 protocol: building, parsing, validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpfl.errors import ConfigError
from mpfl.wire.topics import (
    NODE_TOPICS,
    SERVER_TOPICS,
    node_filter,
    node_topic,
    nodes_filter,
    parse_node_topic,
    server_filter,
    server_topic,
    topic_prefix,
    validate_node_id,
)

names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    min_size=1,
    max_size=64,
)
suffixes = st.lists(names, min_size=1, max_size=3).map("/".join)


def test_topics_follow_the_design_table() -> None:
    assert topic_prefix("lab") == "mpfl/v1/lab"
    assert [server_topic("lab", n) for n in SERVER_TOPICS] == [
        "mpfl/v1/lab/server/state",
        "mpfl/v1/lab/server/model",
        "mpfl/v1/lab/server/mask",
    ]
    assert node_topic("lab", "pi-01", "update") == "mpfl/v1/lab/nodes/pi-01/update"
    assert set(NODE_TOPICS) == {"status", "mask", "update", "metrics", "progress", "partial"}
    assert server_filter("lab") == "mpfl/v1/lab/server/#"
    assert nodes_filter("lab") == "mpfl/v1/lab/nodes/#"
    assert node_filter("lab", "pi-01") == "mpfl/v1/lab/nodes/pi-01/#"


@given(federation=names, node_id=names, name=suffixes)
def test_node_topic_round_trips(federation: str, node_id: str, name: str) -> None:
    topic = node_topic(federation, node_id, name)
    assert parse_node_topic(federation, topic) == (node_id, name)


@given(topic=st.text(max_size=120))
def test_parse_never_raises_on_arbitrary_topics(topic: str) -> None:
    parsed = parse_node_topic("lab", topic)
    if parsed is not None:
        assert node_topic("lab", *parsed) == topic


@pytest.mark.parametrize(
    "topic",
    [
        "mpfl/v1/other/nodes/pi-01/mask",
        "mpfl/v1/lab/server/state",
        "mpfl/v1/lab/nodes/pi-01",
        "mpfl/v1/lab/nodes/pi-01/",
        "mpfl/v1/lab/nodes/pi 01/mask",
        "mpfl/v1/lab/nodes/pi-01/mask//x",
        "mpfl/v1/lab/nodes/+/mask",
        "mpfl/v1/lab/nodes/pi-01/#",
        "mpfl/v1/lab/nodes//mask",
    ],
)
def test_parse_rejects_foreign_or_malformed_topics(topic: str) -> None:
    assert parse_node_topic("lab", topic) is None


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "pi 01", "x" * 65, "pi.01", "é", "a\0"])
def test_invalid_ids_and_federations_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        validate_node_id(bad)
    with pytest.raises(ConfigError):
        topic_prefix(bad)


@pytest.mark.parametrize("bad", ["", "a//b", "/a", "a/", "a/+", "#"])
def test_invalid_topic_names_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        server_topic("lab", bad)
    with pytest.raises(ConfigError):
        node_topic("lab", "pi-01", bad)
