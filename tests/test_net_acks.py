"""What a flush waits for: early reports, QoS 0 lost with the connection, fresh clients."""

from __future__ import annotations

from mpfl.net.acks import PendingPublishes


def test_a_flush_waits_until_every_message_is_taken() -> None:
    pending = PendingPublishes()
    pending.sent(1, qos=1)
    pending.sent(2, qos=0)
    assert not pending.wait(0.0)
    pending.taken(1)
    pending.taken(2)
    assert pending.wait(0.0)


def test_a_report_before_the_id_is_recorded_counts() -> None:
    pending = PendingPublishes()
    pending.taken(7)  # paho's thread was faster than publish
    pending.sent(7, qos=1)
    assert pending.wait(0.0)


def test_a_broken_connection_ends_the_wait_for_qos0_only() -> None:
    """paho drops unwritten QoS 0 messages on disconnect without a report; QoS 1 ones it
    resends, so their acknowledgement is still awaited."""
    pending = PendingPublishes()
    pending.sent(1, qos=0)
    pending.sent(2, qos=1)
    pending.connection_lost()
    assert not pending.wait(0.0)
    pending.taken(2)
    assert pending.wait(0.0)


def test_a_fresh_client_gives_up_the_old_ones() -> None:
    pending = PendingPublishes()
    pending.sent(1, qos=1)
    pending.taken(9)
    pending.clear()
    assert pending.wait(0.0)
    pending.sent(9, qos=1)  # an id reused by the new client is not taken by the old report
    assert not pending.wait(0.0)
