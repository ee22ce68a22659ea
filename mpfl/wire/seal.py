"""Signing what goes out and verifying what comes in, between a transport and a state machine.

``Sealer`` wraps each outgoing payload in a signed frame (``mpfl.wire.frame``); ``Opener``
checks each incoming one against a ``Keyring`` and returns the inner payload, or a typed
``Rejected`` with its reason. The state machines (``FederationServer``,
``FederationNode``) only ever see verified payloads and know nothing of keys.

Who may sign what follows from the topic: ``nodes/<id>/...`` only ``<id>`` (an enrolled
node), ``server/...`` only the coordinator. Freshness:

* Every sender numbers its messages from ``time.time_ns()`` at process start, one more
  per message, so counters keep increasing across restarts without being stored (as long
  as the clock does not jump back: a board without a real-time clock must sync its time
  before it starts, or its messages are replays until the clock passes its last ones).
* A receiver keeps the last counter it accepted per topic and rejects one not greater
  (a replay). Per topic rather than per sender because MQTT does not order retained
  messages of different topics: the retained ``server/model`` may arrive after a newer
  ``server/state``, and both must be taken.
* A node message must carry the coordinator's current session (each coordinator process
  has a new one), so a message captured in an earlier session never counts again; a node
  learns the session from the newest server frame it accepted.
* The frame's round must equal the round inside the payload (an envelope's header round, a
  JSON document's ``round``; 0 when the payload has none).

The last will. An MQTT will is fixed when the client connects, so a node signs its
"offline" will then, before it knows the session and before its hello (whose counter is
therefore greater). The coordinator checks a signed "offline" status against a replay slot
of its own (its counter must exceed the last "offline" accepted from that node) and not
against the session. The cost: a will can be replayed to a coordinator that has not yet
seen it (for instance a restarted one), which marks that node offline until its next
hello; the round then stops waiting for it early, but still takes its upload. An "offline"
can do nothing else, so this is the trade taken for keeping wills at all.

What signing cannot do: a retained message can be replaced on the broker by an older one
signed by the same sender, and a receiver that never saw the newer one accepts it. Nodes
then follow a past round whose uploads the coordinator rejects (wrong session or round)
until the coordinator publishes again; the broker's ACLs (only the coordinator may publish
on ``server/``) are what stops this.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from mpfl.errors import WireError
from mpfl.wire import envelope, topics
from mpfl.wire.frame import COORDINATOR, Frame, decode_frame, is_framed, seal_frame, verify_frame
from mpfl.wire.protocol import OFFLINE, Publish
from mpfl.wire.signing import Keyring, SigningKey

UNAUTHENTICATED_WARNING = (
    "WARNING: no keys configured: messages are NOT authenticated; anyone who can connect to "
    "the broker can impersonate a node or the coordinator (see `mpfl-coordinator provision`)"
)

_ENVELOPE_ROUND = struct.Struct("<I")
_ROUND_OFFSET = 8  # magic, version, kind, flags, reserved (see mpfl.wire.envelope)


class Reject(StrEnum):
    """Why an incoming message was not let through (the drop counters' keys)."""

    UNSIGNED = "unsigned"
    BAD_FRAME = "bad-frame"
    WRONG_TOPIC = "wrong-topic"
    UNKNOWN_SIGNER = "unknown-signer"
    BAD_SIGNATURE = "bad-signature"
    REPLAY = "replay"
    WRONG_SESSION = "wrong-session"
    WRONG_ROUND = "wrong-round"


@dataclass(frozen=True)
class Opened:
    payload: bytes
    frame: Frame


@dataclass(frozen=True)
class Rejected:
    reason: Reject
    detail: str


def payload_round(payload: bytes) -> int:
    """The round a payload says it belongs to: an envelope's header round, a JSON object's
    integer ``round``, else 0. Never raises."""
    if payload[: len(envelope.MAGIC)] == envelope.MAGIC:
        if len(payload) >= _ROUND_OFFSET + _ENVELOPE_ROUND.size:
            return int(_ENVELOPE_ROUND.unpack_from(payload, _ROUND_OFFSET)[0])
        return 0
    if payload[:1] != b"{":
        return 0
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return 0
    value = doc.get("round") if isinstance(doc, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF_FFFF:
        return value
    return 0


class MessageCounter:
    """Strictly increasing numbers, started at the wall clock in nanoseconds: a restarted
    process starts above everything it sent before (clocks permitting) without a file."""

    def __init__(self, start: int | None = None) -> None:
        self._next = time.time_ns() if start is None else start

    def next(self) -> int:
        value = self._next
        self._next += 1
        return value


class Sealer:
    """Signs a sender's outgoing messages. ``session`` is the coordinator session the
    messages belong to: the coordinator's own, or on a node the one its Opener learnt."""

    def __init__(self, key: SigningKey, signer: str, session: str = "",
                 counter: MessageCounter | None = None) -> None:
        self.key = key
        self.signer = signer
        self.session = session
        self.counter = counter if counter is not None else MessageCounter()

    def seal(self, message: Publish) -> Publish:
        frame = Frame(self.signer, self.session, payload_round(message.payload),
                      self.counter.next(), message.payload)
        return dataclasses.replace(message, payload=seal_frame(self.key, message.topic, frame))

    def seal_all(self, messages: list[Publish]) -> list[Publish]:
        return [self.seal(m) for m in messages]


class Opener:
    """Verifies incoming ``(topic, payload)`` for one receiver.

    On the coordinator pass ``session`` (the coordinator's current session, asked on each
    message); on a node leave it None: the node takes ``self.session`` from the newest
    server frame it accepted instead.
    """

    def __init__(self, keyring: Keyring, federation: str,
                 session: Callable[[], str] | None = None) -> None:
        self.keyring = keyring
        self.federation = federation
        self._session = session
        self.session = ""  # on a node: the coordinator's, from its newest accepted frame
        self._newest = -1
        self._server_head = topics.topic_prefix(federation) + "/server/"
        self._last: dict[tuple[str, bool], int] = {}

    def open(self, topic: str, payload: bytes) -> Opened | Rejected:
        if not is_framed(payload):
            return Rejected(Reject.UNSIGNED, "no signed frame")
        try:
            frame, body, signature = decode_frame(payload)
        except WireError as exc:
            return Rejected(Reject.BAD_FRAME, str(exc))
        expected, status = self._expected_signer(topic)
        if expected is None:
            return Rejected(Reject.WRONG_TOPIC, f"no signer may publish on {topic}")
        if frame.signer != expected:
            return Rejected(Reject.WRONG_TOPIC, f"{frame.signer!r} signed a message on "
                            f"{expected!r}'s topic")
        key = self.keyring.coordinator if self._session is None else self.keyring.node(expected)
        if key is None:
            return Rejected(Reject.UNKNOWN_SIGNER, f"{expected!r} is not enrolled")
        if not verify_frame(key, topic, body, signature):
            return Rejected(Reject.BAD_SIGNATURE, f"signature of {expected!r} does not verify")
        will = status and frame.payload == OFFLINE  # see the module docstring
        slot = (topic, will)
        if frame.counter <= self._last.get(slot, -1):
            return Rejected(Reject.REPLAY, f"counter {frame.counter} from {expected!r} is not "
                            "newer than the last one taken")
        if self._session is not None and not will:
            current = self._session()
            if frame.session != current:
                return Rejected(Reject.WRONG_SESSION, f"session {frame.session!r}, the "
                                f"coordinator's is {current!r}")
        inner = payload_round(frame.payload)
        if frame.round != inner:
            return Rejected(Reject.WRONG_ROUND, f"frame round {frame.round}, payload round "
                            f"{inner}")
        self._last[slot] = frame.counter
        if self._session is None and frame.counter > self._newest:
            self._newest, self.session = frame.counter, frame.session
        return Opened(frame.payload, frame)

    def _expected_signer(self, topic: str) -> tuple[str | None, bool]:
        """Who must have signed a message on ``topic``, and whether it is a status topic."""
        if self._session is None:  # a node: only the coordinator's server topics
            ok = topic.startswith(self._server_head)
            return (COORDINATOR if ok else None), False
        parsed = topics.parse_node_topic(self.federation, topic)
        if parsed is None:
            return None, False
        return parsed[0], parsed[1] == topics.NODE_STATUS
