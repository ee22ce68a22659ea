"""The test broker helper itself: it starts, serves plain and TLS clients, and stops."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import TlsFiles, make_test_pki, start_mosquitto

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0


def _round_trip(host: str, port: int, tls: TlsFiles | None) -> bytes:
    """Subscribe and publish to ourselves; return what came back."""
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    if tls is not None:
        client.tls_set(ca_certs=str(tls.cafile), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    got: list[bytes] = []
    subscribed, arrived = threading.Event(), threading.Event()
    client.on_connect = lambda c, *_: c.subscribe("t/echo", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        got.append(bytes(message.payload))
        arrived.set()

    client.on_message = on_message
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        assert subscribed.wait(TIMEOUT_S), "no SUBACK"
        client.publish("t/echo", b"ping", qos=1)
        assert arrived.wait(TIMEOUT_S), "message did not come back"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_plain_broker_serves_and_stops(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path) as broker:
        assert broker.host == "127.0.0.1"
        assert _round_trip(broker.host, broker.port, None) == b"ping"
    assert not _port_open(broker.host, broker.port)
    assert "mosquitto version" in broker.log()


def test_tls_broker_serves_clients_that_trust_its_ca(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    with start_mosquitto(tmp_path, tls=pki) as broker:
        assert _round_trip(broker.host, broker.port, pki) == b"ping"


def test_broker_is_stopped_when_the_test_body_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), start_mosquitto(tmp_path) as broker:
        raise RuntimeError("boom")
    assert not _port_open(broker.host, broker.port)
