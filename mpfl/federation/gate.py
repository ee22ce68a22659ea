"""The signing layer between a transport and each side's state machine.

``ServerGate`` stands in front of ``FederationServer``: node messages are verified
(``mpfl.wire.seal.Opener``) before the server sees them, and what the server publishes is
signed with the coordinator's key under its current session. ``NodeGate`` wraps
``FederationNode`` the same way, and owns the node's hello and last will, because both
depend on the session: a node announces itself once it knows the coordinator's session
(from the first server message it could verify), and again whenever that session changes
(a restarted coordinator rejects hellos of the old one).

A rejected message never reaches the state machine. It takes the same one path as every
other drop on its side: counted by reason (the server's ``dropped``, the node's
``rejected``) and logged by a ``RejectionLog`` (the first of each reason with its topic and
detail, then periodic summaries), never by the gate itself. Built
without keys, both gates pass everything through unchanged (the toolkit as it was) and
say once, loudly, that nothing is authenticated.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from mpfl.federation.node import FederationNode
from mpfl.federation.rejections import RejectionLog
from mpfl.federation.server import FederationServer, Step
from mpfl.wire import topics
from mpfl.wire.frame import COORDINATOR
from mpfl.wire.protocol import OFFLINE, Publish
from mpfl.wire.seal import UNAUTHENTICATED_WARNING, Opened, Opener, Reject, Sealer
from mpfl.wire.signing import Keyring, PublicKey, SigningKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorKeys:
    key: SigningKey
    enrolled: Keyring  # the nodes' public keys


@dataclass(frozen=True)
class NodeKeys:
    key: SigningKey
    coordinator: PublicKey


class ServerGate:
    """``rejections``: the coordinator's log of drops, which also observes the server's
    ``dropped`` counter (the service's); by default one of the gate's own."""

    def __init__(self, server: FederationServer, keys: CoordinatorKeys | None,
                 say: Callable[[str], None] = log.warning,
                 rejections: RejectionLog | None = None) -> None:
        self.server = server
        self.keys = keys
        self.rejections = rejections or RejectionLog(say, "coordinator")
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        if keys is None:
            say(UNAUTHENTICATED_WARNING)
        else:
            self._sealer = Sealer(keys.key, COORDINATOR, server.session)
            self._opener = Opener(keys.enrolled, server.cfg.federation,
                                  session=lambda: self.server.session)

    def open(self, topic: str, payload: bytes) -> bytes | None:
        """The verified payload, or None once the rejection is counted."""
        if self._opener is None:
            return payload
        result = self._opener.open(topic, payload)
        if isinstance(result, Opened):
            return result.payload
        self.server.record_drop(result.reason)
        self.rejections.note_counted(result.reason, topic, result.detail)
        return None

    def seal(self, messages: list[Publish]) -> list[Publish]:
        if self._sealer is None:
            return messages
        self._sealer.session = self.server.session  # new_session() changes it
        return self._sealer.seal_all(messages)

    def handle(self, topic: str, payload: bytes) -> Step:
        """``server.handle`` behind the gate; the step's publishes come back signed."""
        opened = self.open(topic, payload)
        step = self.server.tick() if opened is None else self.server.handle(topic, opened)
        return self.seal_step(step)

    def seal_step(self, step: Step) -> Step:
        step.publishes[:] = self.seal(step.publishes)
        return step


class NodeGate:
    def __init__(self, node: FederationNode, keys: NodeKeys | None,
                 say: Callable[[str], None] = log.warning) -> None:
        self.node = node
        self.keys = keys
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._announced: str | None = None  # the session the last hello was signed for
        self._sealing = threading.Lock()
        if keys is None:
            say(UNAUTHENTICATED_WARNING)
        else:
            self._sealer = Sealer(keys.key, node.node_id)
            self._opener = Opener(Keyring(keys.coordinator, {}), node.federation)

    @property
    def session(self) -> str:
        return self._opener.session if self._opener is not None else ""

    def will(self) -> Publish:
        """The "offline" status for the broker to publish if this node vanishes. Signed now,
        at each (re)connect, since nothing can sign it later (see ``mpfl.wire.seal``); a
        will from an earlier connection would be a replay. Called from the MQTT thread."""
        status = topics.node_topic(self.node.federation, self.node.node_id, topics.NODE_STATUS)
        return self._seal(Publish(status, OFFLINE, retain=True, qos=1))

    def goodbye(self) -> Publish:
        return self.will()  # an explicit "offline" when this node stops on its own

    def on_connect(self) -> list[Publish]:
        """What to send on every (re)connect: the hello, once a session is known."""
        self._announced = None
        return self._hello_if_due()

    def _hello_if_due(self) -> list[Publish]:
        if self._opener is not None and not self._opener.session:
            return []  # unsigned with no session would be rejected: wait for the server
        if self._announced == self.session:
            return []
        self._announced = self.session
        return [self._seal(self.node.hello())]

    def handle(self, topic: str, payload: bytes) -> list[Publish]:
        """``node.handle`` behind the gate; returns what to publish, signed."""
        if self._opener is not None:
            result = self._opener.open(topic, payload)
            if not isinstance(result, Opened):
                self._reject(topic, result.reason, result.detail)
                return []
            payload = result.payload
        return self._hello_if_due() + [self._seal(m) for m in self.node.handle(topic, payload)]

    def _reject(self, topic: str, reason: Reject, detail: str) -> None:
        self.node.record_drop(reason, where=topic, detail=detail)

    def seal(self, message: Publish) -> Publish:
        """One message of this node's own (its training progress), signed."""
        return self._seal(message)

    def _seal(self, message: Publish) -> Publish:
        if self._sealer is None:
            return message
        with self._sealing:  # the will is sealed on the MQTT thread, the rest on the main one
            self._sealer.session = self.session
            return self._sealer.seal(message)
