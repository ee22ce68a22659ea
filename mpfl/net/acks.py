"""Which published messages the broker has not yet taken: what a flush waits for.

paho reports a QoS 1 message when its PUBACK arrives and a QoS 0 one when it is written
out, from its network thread; the report may come before ``publish`` has recorded the
message id, so an early report is kept until the id is recorded. A QoS 0 message still
unwritten when the connection breaks is dropped by paho without a report, so a broken
connection ends the wait for those; QoS 1 ones are resent by paho on reconnect.
"""

from __future__ import annotations

import threading


class PendingPublishes:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._pending: dict[int, int] = {}  # message id -> QoS
        self._early: set[int] = set()

    def sent(self, mid: int, qos: int) -> None:
        """``publish`` handed message ``mid`` to paho."""
        with self._changed:
            if mid in self._early:
                self._early.discard(mid)
            else:
                self._pending[mid] = qos

    def taken(self, mid: int) -> None:
        """paho's on_publish: the broker acknowledged it (QoS 1) or it was written (QoS 0)."""
        with self._changed:
            if self._pending.pop(mid, None) is None:
                self._early.add(mid)
            self._changed.notify_all()

    def connection_lost(self) -> None:
        with self._changed:
            self._pending = {mid: qos for mid, qos in self._pending.items() if qos > 0}
            self._changed.notify_all()

    def clear(self) -> None:
        """A fresh client: the old one's messages are given up."""
        with self._changed:
            self._pending.clear()
            self._early.clear()
            self._changed.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait until nothing is pending; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending, timeout)
