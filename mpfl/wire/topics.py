"""MQTT topic names of the v1 wire protocol, built in one place.

Every topic lives under ``mpfl/v1/<federation>``::

    server/state   server/model   server/mask                      coordinator -> all
    nodes/<id>/status   nodes/<id>/mask   nodes/<id>/update
    nodes/<id>/metrics   nodes/<id>/progress                       node -> coordinator
    nodes/<region>/partial                                         region -> root

Federation names and node ids become topic levels (and broker usernames and file names
during provisioning), so both are restricted to letters, digits, dash and underscore.
"""

from __future__ import annotations

import functools
import re

from mpfl.errors import ConfigError

PROTOCOL_LEVEL = "v1"
ROOT = "mpfl"

SERVER_STATE = "state"
SERVER_MODEL = "model"
SERVER_MASK = "mask"
SERVER_TOPICS = (SERVER_STATE, SERVER_MODEL, SERVER_MASK)

NODE_STATUS = "status"
NODE_MASK = "mask"
NODE_UPDATE = "update"
NODE_METRICS = "metrics"
NODE_PROGRESS = "progress"  # local epochs done in the round in hand, for the live views
NODE_PARTIAL = "partial"  # a regional coordinator's one upload per round
NODE_TOPICS = (NODE_STATUS, NODE_MASK, NODE_UPDATE, NODE_METRICS, NODE_PROGRESS, NODE_PARTIAL)

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_WILDCARDS = ("+", "#", "\0")


def validate_name(value: str, *, what: str = "name") -> str:
    """Return ``value`` if it is 1-64 letters, digits, dashes or underscores."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ConfigError(
            f"invalid {what}: use 1-64 letters, digits, '-' or '_'", value=repr(value)
        )
    return value


def validate_node_id(node_id: str) -> str:
    """Return ``node_id`` if it is usable as a topic level, username and file name."""
    return validate_name(node_id, what="node id")


def _validate_suffix(name: str) -> str:
    """A topic tail such as ``state`` or ``model/3``: no wildcards, no empty levels."""
    if (
        not isinstance(name, str)
        or not name
        or any(w in name for w in _WILDCARDS)
        or any(level == "" for level in name.split("/"))
    ):
        raise ConfigError("invalid topic name", name=repr(name))
    return name


@functools.lru_cache(maxsize=64)  # checked once per name, not once per message
def topic_prefix(federation: str) -> str:
    """``mpfl/v1/<federation>``: the root of every topic of one federation."""
    return f"{ROOT}/{PROTOCOL_LEVEL}/{validate_name(federation, what='federation')}"


def server_topic(federation: str, name: str) -> str:
    """A coordinator -> nodes topic, e.g. ``mpfl/v1/fed/server/state``."""
    return f"{topic_prefix(federation)}/server/{_validate_suffix(name)}"


def node_topic(federation: str, node_id: str, name: str) -> str:
    """A node -> coordinator topic, e.g. ``mpfl/v1/fed/nodes/pi-01/mask``."""
    return f"{topic_prefix(federation)}/nodes/{validate_node_id(node_id)}/{_validate_suffix(name)}"


def server_filter(federation: str) -> str:
    """Subscription filter matching every server topic of a federation."""
    return f"{topic_prefix(federation)}/server/#"


def nodes_filter(federation: str) -> str:
    """Subscription filter matching every node topic of a federation."""
    return f"{topic_prefix(federation)}/nodes/#"


def node_filter(federation: str, node_id: str) -> str:
    """Filter matching every topic of one node (used for its ACL)."""
    return f"{topic_prefix(federation)}/nodes/{validate_node_id(node_id)}/#"


def parse_node_topic(federation: str, topic: str) -> tuple[str, str] | None:
    """Split a node topic into ``(node_id, name)``; None if it is not one of ours.

    Hostile input (any string a broker delivers) never raises: a topic outside the
    federation, with an invalid node id or with an empty name gives None.
    """
    head = f"{topic_prefix(federation)}/nodes/"
    if not isinstance(topic, str) or not topic.startswith(head):
        return None
    node_id, sep, name = topic[len(head) :].partition("/")
    if not sep or not _NAME_RE.fullmatch(node_id):
        return None
    if not name or any(w in name for w in _WILDCARDS) or "" in name.split("/"):
        return None
    return node_id, name
