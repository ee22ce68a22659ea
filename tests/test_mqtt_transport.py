"""The paho-backed transports against real brokers: multi-MB payloads through both
embedded brokers (amqtt forces the v3.1.1 fallback), chunking under a broker's announced
packet limit, and reconnecting with re-subscription after a broker restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from brokers import require_mosquitto, start_mosquitto

from coordinator.broker import AmqttBroker, MosquittoBroker, mosquitto_binary
from mpfl.errors import ConfigError
from mpfl.net.endpoint import parse_broker_url
from mpfl.net.inbox import Inbox
from mpfl.net.mqtt import MqttTransport
from mpfl.wire.protocol import Publish

pytestmark = pytest.mark.integration

UPLOAD = "mpfl/v1/f/nodes/n1/update"
MB = 1 << 20


def _wait(inbox: Inbox, done: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        inbox.dispatch(0.1)


def _pair(url: str, **kwargs: object) -> tuple[MqttTransport, MqttTransport, Inbox,
                                                list[bytes]]:
    address = parse_broker_url(url)
    got: list[bytes] = []
    rx_inbox = Inbox()
    rx_inbox.subscribe("mpfl/v1/f/nodes/#", lambda _t, p: got.append(p))
    rx = MqttTransport(address, "rx", rx_inbox)
    rx.connect(20)
    tx = MqttTransport(address, "tx", Inbox(), **kwargs)  # type: ignore[arg-type]
    tx.connect(20)
    return tx, rx, rx_inbox, got


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_embedded_brokers_carry_a_20_mb_upload(kind: str) -> None:
    if kind == "mosquitto":
        require_mosquitto()
        binary = mosquitto_binary()
        assert binary is not None
        broker: MosquittoBroker | AmqttBroker = MosquittoBroker(binary).start()
    else:
        broker = AmqttBroker().start()
    try:
        tx, rx, inbox, got = _pair(broker.url, max_payload=64 * MB)
        assert tx.protocol == ("5" if kind == "mosquitto" else "3.1.1")
        payload = bytes(range(256)) * (20 * MB // 256)
        started = time.monotonic()
        tx.publish(Publish(UPLOAD, payload, qos=1))
        assert tx.flush(30)
        _wait(inbox, lambda: bool(got))
        seconds = time.monotonic() - started
        assert got == [payload]
        assert inbox.ledger.received["nodes/update"] == len(payload)
        print(f"{kind}: 20 MB in {seconds:.2f} s ({20 / seconds:.0f} MB/s)")
        tx.close()
        rx.close()
    finally:
        broker.stop()


def test_chunks_follow_the_broker_packet_limit(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path, "max_packet_size 65536") as broker:
        tx, rx, inbox, got = _pair(f"mqtt://{broker.host}:{broker.port}")
        assert tx.protocol == "5" and tx.broker_max_packet == 65536
        payload = bytes(range(256)) * 4096  # 1 MiB: would get the client disconnected whole
        tx.publish(Publish(UPLOAD, payload, qos=1))
        assert tx.flush(20)
        _wait(inbox, lambda: bool(got))
        assert got == [payload]
        assert tx.inbox.ledger.sent_messages["nodes/update"] >= 16
        assert inbox.ledger.received["nodes/update"] == tx.inbox.ledger.sent["nodes/update"]
        with pytest.raises(ConfigError, match="maximum packet size"):
            rx.publish(Publish("mpfl/v1/f/server/model", payload, retain=True))
        tx.close()
        rx.close()


def test_clients_reconnect_and_resubscribe_after_a_broker_restart() -> None:
    require_mosquitto()
    binary = mosquitto_binary()
    assert binary is not None
    broker = MosquittoBroker(binary).start()
    try:
        tx, rx, inbox, got = _pair(broker.url)
        events: list[bool] = []
        inbox.on_connected = events.append
        inbox.dispatch(0.2)
        broker.stop()
        time.sleep(0.5)
        broker.start()  # same port, empty: no sessions, no subscriptions
        _wait(inbox, lambda: len(events) >= 2)
        assert events[-1] is False  # the broker lost our session
        assert tx.connected.wait(20)
        _deliver(tx, inbox, got, b"after the restart")
        tx.close()
        rx.close()
    finally:
        broker.stop()


def test_a_client_whose_reconnects_stall_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    require_mosquitto()
    binary = mosquitto_binary()
    assert binary is not None
    monkeypatch.setattr("mpfl.net.mqtt.STALLED_S", 1.0)
    broker = MosquittoBroker(binary).start()
    try:
        tx, rx, inbox, got = _pair(broker.url)
        wedged = tx._client
        assert wedged is not None
        broker.stop()
        assert not _connected_within(tx, 5)  # the loss is noticed
        wedged.loop_stop()  # paho's loop is gone: it would never reconnect by itself
        broker.start()
        time.sleep(1.5)
        assert not tx.connected.is_set()
        tx.revive()
        assert tx._client is not wedged and tx.connected.is_set()
        assert rx.connected.wait(20)
        _deliver(tx, inbox, got, b"after the revival")
        tx.close()
        rx.close()
    finally:
        broker.stop()


def _deliver(tx: MqttTransport, inbox: Inbox, got: list[bytes], payload: bytes) -> None:
    """Publish until the receiver gets ``payload``: after a broker restart the receiver's
    re-subscription races the sender's first publish (a broker drops a message nobody is
    subscribed to yet), and what is tested is that both clients work again."""
    deadline = time.monotonic() + 30
    while not got:
        assert time.monotonic() < deadline, "nothing was delivered after the restart"
        tx.publish(Publish(UPLOAD, payload, qos=1))
        inbox.dispatch(1.0)
    assert set(got) == {payload}


def _connected_within(transport: MqttTransport, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not transport.connected.is_set():
            return False
        time.sleep(0.05)
    return True


def test_a_reconnecting_node_sets_a_freshly_signed_will_each_time() -> None:
    """The node's connection drops twice without a DISCONNECT; the broker publishes the
    will each time, and the coordinator's check takes both (a will kept from the first
    connect would be the same frame again: a replay)."""
    import socket

    import numpy as np

    from mpfl.federation.gate import NodeGate, NodeKeys
    from mpfl.federation.node import FederationNode
    from mpfl.ml.data import load_dataset
    from mpfl.wire import topics
    from mpfl.wire.seal import Opened, Opener
    from mpfl.wire.signing import Keyring, SigningKey

    require_mosquitto()
    binary = mosquitto_binary()
    assert binary is not None
    node_key, coordinator_key = SigningKey.generate(), SigningKey.generate()
    data = load_dataset("digits", None, "train").subset(np.arange(20))
    gate = NodeGate(FederationNode("pi-01", "f", data),
                    NodeKeys(node_key, coordinator_key.public_key), say=lambda _line: None)
    opener = Opener(Keyring(coordinator_key.public_key, {"pi-01": node_key.public_key}),
                    "f", session=lambda: "current")
    broker = MosquittoBroker(binary).start()
    try:
        address = parse_broker_url(broker.url)
        wills: list[bytes] = []
        watcher_inbox = Inbox()
        watcher_inbox.subscribe(topics.node_topic("f", "pi-01", topics.NODE_STATUS),
                                lambda _t, payload: wills.append(payload))
        watcher = MqttTransport(address, "coordinator", watcher_inbox)
        watcher.connect(20)
        node = MqttTransport(address, "mpfl-f-pi-01", Inbox(), will=gate.will)
        node.connect(20)
        for drop in (1, 2):
            client = node._client
            assert client is not None and node.connected.is_set()
            sock = client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)  # the network drops: no DISCONNECT is sent
            _wait(watcher_inbox, lambda n=drop: len(wills) >= n)  # type: ignore[misc]
            assert node.connected.wait(20)  # paho reconnects by itself, promptly
        results = [opener.open(topics.node_topic("f", "pi-01", topics.NODE_STATUS), w)
                   for w in wills]
        assert all(isinstance(r, Opened) for r in results), results
        node.close()
        watcher.close()
    finally:
        broker.stop()
