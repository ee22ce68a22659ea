"""The signing layer of a regional coordinator: two receivers and one sender in one process.

Upstream the region is a node: it verifies the root's server messages (bridged down) with
the root coordinator's public key, and it signs its hello, last will and partial
aggregates with its own key, enrolled at the root like a node's. Downstream it is a
coordinator: it verifies its own nodes' messages against its own enrolment list, within
the root's session (its nodes learn that session from the root's frames they verify
themselves, so every tier checks the same one). A rejection is counted in the region's
``dropped`` by reason and logged once per reason; without keys everything passes, after
one loud warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from mpfl.federation.region import RegionalServer
from mpfl.federation.rejections import RejectionLog
from mpfl.wire import topics
from mpfl.wire.protocol import OFFLINE, Publish
from mpfl.wire.seal import UNAUTHENTICATED_WARNING, Opened, Opener, Sealer
from mpfl.wire.signing import Keyring, PublicKey, SigningKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionKeys:
    key: SigningKey  # the region's own, enrolled at the root under the region's name
    root: PublicKey  # the root coordinator's
    enrolled: Keyring  # the region's nodes


class RegionGate:
    def __init__(self, region: RegionalServer, keys: RegionKeys | None,
                 say: Callable[[str], None] = log.warning) -> None:
        self.region = region
        self.rejections = RejectionLog(say, f"region {region.region}")
        federation = region.cfg.federation
        self._server_head = topics.topic_prefix(federation) + "/server/"
        self._sealer: Sealer | None = None
        self._up: Opener | None = None
        self._down: Opener | None = None
        if keys is None:
            say(UNAUTHENTICATED_WARNING)
        else:
            self._sealer = Sealer(keys.key, region.region)
            self._up = Opener(Keyring(keys.root, {}), federation)
            self._down = Opener(keys.enrolled, federation, session=lambda: region.session)

    def will(self) -> Publish:
        """The region's "offline", signed at connect (see ``mpfl.wire.seal``): the root then
        stops waiting for the region as it would for a node."""
        status = topics.node_topic(self.region.cfg.federation, self.region.region,
                                   topics.NODE_STATUS)
        return self._seal(Publish(status, OFFLINE, retain=True, qos=1))

    def open(self, topic: str, payload: bytes) -> bytes | None:
        """The verified payload, or None (the region's own echoed messages, or a rejection
        once it is counted)."""
        if self.region.own_topic(topic):
            return None
        opener = self._up if topic.startswith(self._server_head) else self._down
        if opener is None:
            return payload
        result = opener.open(topic, payload)
        if isinstance(result, Opened):
            return result.payload
        self.region.record_drop(result.reason)
        self.rejections.note(result.reason, topic, result.detail)
        return None

    def seal(self, messages: list[Publish]) -> list[Publish]:
        return [self._seal(m) for m in messages]

    def _seal(self, message: Publish) -> Publish:
        if self._sealer is None:
            return message
        self._sealer.session = self.region.session
        return self._sealer.seal(message)
