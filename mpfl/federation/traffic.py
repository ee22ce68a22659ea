"""The coordinator's byte count: the uplink and downlink figures every round record reports.

One owner counts them, the round state machine, from the payloads it accepts and
publishes, so the in-process simulation and the MQTT service report the same figures.
What crosses the wire (chunk headers, dropped messages) is the transport's own
measurement (``mpfl.net.inbox.ByteLedger``), kept beside it, never mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ByteWindow:
    """Bytes moved between two moments (one round, or a whole run)."""

    uplink: int
    downlink: int


class Traffic:
    """Uplink: every accepted upload's payload. Downlink: every publish times its recipients
    (a retained broadcast reaches each known node once)."""

    def __init__(self, uplink: int = 0, downlink: int = 0) -> None:
        self.uplink = uplink
        self.downlink = downlink

    def received(self, size: int) -> None:
        self.uplink += size

    def broadcast(self, size: int, recipients: int) -> None:
        self.downlink += size * recipients

    def mark(self) -> ByteWindow:
        """The totals now, to measure a window from."""
        return ByteWindow(self.uplink, self.downlink)

    def since(self, mark: ByteWindow) -> ByteWindow:
        return ByteWindow(self.uplink - mark.uplink, self.downlink - mark.downlink)
