"""A provisioned kit works with a real Mosquitto: TLS, passwords and per-node ACLs.

The broker runs the kit's own mosquitto.conf, passwd and acl; the test only adds a
throw-away CA and server certificate and binds the listener to 127.0.0.1 on a free port.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import Broker, make_test_pki, run_mosquitto
from paho.mqtt.reasoncodes import ReasonCode

from coordinator.provision import ProvisionResult, provision
from mpfl.wire.topics import node_topic, nodes_filter, server_filter, server_topic

pytestmark = pytest.mark.integration

FEDERATION = "itest"
TIMEOUT_S = 10.0
NOT_AUTHORIZED = 0x87


@dataclass
class Kit:
    result: ProvisionResult
    broker: Broker
    cafile: Path


@dataclass
class Session:
    """A connected paho client that records what it receives and its acknowledgements."""

    client: mqtt.Client
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    acks: dict[int, ReasonCode] = field(default_factory=dict)

    def wait_for(self, topic: str, payload: bytes) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: (topic, payload) in self.messages, TIMEOUT_S)

    def received(self, topic: str) -> list[bytes]:
        with self.arrived:
            return [p for t, p in self.messages if t == topic]

    def publish_acked(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        with self.arrived:
            assert self.arrived.wait_for(lambda: info.mid in self.acks, TIMEOUT_S), "no PUBACK"
            return self.acks[info.mid]

    def subscribe(self, topic_filter: str) -> None:
        done = threading.Event()
        granted: list[ReasonCode] = []

        def on_subscribe(
            client: mqtt.Client, userdata: object, mid: int, codes: list[ReasonCode], props: object
        ) -> None:
            granted.extend(codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic_filter, qos=1)
        assert done.wait(TIMEOUT_S), "no SUBACK"
        assert not granted[0].is_failure, f"subscription refused: {granted[0]}"


OpenSession = Callable[[str, str], Session]


def _connect(
    kit: Kit, username: str | None, password: str | None, client_id: str | None = None
) -> tuple[mqtt.Client, ReasonCode]:
    """Connect over TLS; return the client (loop running) and the CONNACK reason code."""
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{username or 'anon'}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.tls_set(ca_certs=str(kit.cafile), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if username is not None:
        client.username_pw_set(username, password)
    connected = threading.Event()
    outcome: list[ReasonCode] = []

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode, props: object
    ) -> None:
        outcome.append(rc)
        connected.set()

    client.on_connect = on_connect
    client.connect(kit.broker.host, kit.broker.port, keepalive=30)
    client.loop_start()
    if not connected.wait(TIMEOUT_S):
        _close(client)
        pytest.fail(f"no CONNACK within {TIMEOUT_S} s; broker log:\n{kit.broker.log()}")
    return client, outcome[0]


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


@pytest.fixture(scope="module", params=["mosquitto_passwd", "builtin"])
def kit(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    """A kit served by a real broker; passwords hashed by the binary and by Python."""
    root = tmp_path_factory.mktemp("kit")
    out = root / "kit"
    result = provision(
        ["pi-01", "pi-02"],
        out,
        federation=FEDERATION,
        broker_host="127.0.0.1",
        broker_dir=str(out),
        persistence_dir=str(root / "data"),
        hasher=request.param,
    )
    assert result.password_tool == request.param
    (root / "data").mkdir()
    pki = make_test_pki(out / "certs")
    generated = (out / "mosquitto.conf").read_text()

    def make_config(port: int) -> str:
        # Only the listener line changes: loopback and a free port instead of 8883.
        text, count = re.subn(r"(?m)^listener 8883$", f"listener {port} 127.0.0.1", generated)
        assert count == 1, "the kit's config has no `listener 8883` line"
        return text

    with run_mosquitto(root, make_config) as broker:
        yield Kit(result, broker, pki.cafile)


@pytest.fixture
def session_for(kit: Kit) -> Iterator[OpenSession]:
    """Factory: a connected, recording session for one of the kit's users."""
    opened: list[mqtt.Client] = []

    def open_session(username: str, password: str) -> Session:
        client, rc = _connect(kit, username, password)
        opened.append(client)
        assert not rc.is_failure, f"{username} refused: {rc}\n{kit.broker.log()}"
        session = Session(client)

        def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            with session.arrived:
                session.messages.append((message.topic, bytes(message.payload)))
                session.arrived.notify_all()

        def on_publish(
            client: mqtt.Client, userdata: object, mid: int, rc: ReasonCode, props: object
        ) -> None:
            with session.arrived:
                session.acks[mid] = rc
                session.arrived.notify_all()

        client.on_message = on_message
        client.on_publish = on_publish
        return session

    yield open_session
    for client in opened:
        _close(client)


def _creds(kit: Kit, user: str) -> tuple[str, str]:
    c = kit.result.coordinator if user == "coordinator" else kit.result.nodes[user]
    return c.username, c.password


def test_node_publishes_on_its_own_topic_and_the_coordinator_receives(
    kit: Kit, session_for: OpenSession
) -> None:
    coordinator = session_for(*_creds(kit, "coordinator"))
    coordinator.subscribe(nodes_filter(FEDERATION))
    node = session_for(*_creds(kit, "pi-01"))
    topic = node_topic(FEDERATION, "pi-01", "mask")
    payload = uuid.uuid4().bytes

    assert not node.publish_acked(topic, payload).is_failure
    assert coordinator.wait_for(topic, payload), kit.broker.log()


def test_node_is_refused_on_another_nodes_topic(kit: Kit, session_for: OpenSession) -> None:
    coordinator = session_for(*_creds(kit, "coordinator"))
    coordinator.subscribe(nodes_filter(FEDERATION))
    node = session_for(*_creds(kit, "pi-01"))
    foreign = node_topic(FEDERATION, "pi-02", "update")
    forged = b"forged " + uuid.uuid4().bytes

    rc = node.publish_acked(foreign, forged)
    assert rc.is_failure and rc.value == NOT_AUTHORIZED, rc

    # Messages from one client are delivered in order: once a later allowed message has
    # arrived, the forged one would have arrived before it had the broker passed it on.
    sentinel_topic = node_topic(FEDERATION, "pi-01", "metrics")
    sentinel = uuid.uuid4().bytes
    assert not node.publish_acked(sentinel_topic, sentinel).is_failure
    assert coordinator.wait_for(sentinel_topic, sentinel)
    assert forged not in coordinator.received(foreign)


def test_node_reads_server_topics_but_cannot_write_them(kit: Kit, session_for: OpenSession) -> None:
    node = session_for(*_creds(kit, "pi-01"))
    node.subscribe(server_filter(FEDERATION))
    coordinator = session_for(*_creds(kit, "coordinator"))
    state = server_topic(FEDERATION, "state")
    real = b"real " + uuid.uuid4().bytes
    forged = b"forged " + uuid.uuid4().bytes

    assert node.publish_acked(state, forged).value == NOT_AUTHORIZED
    assert not coordinator.publish_acked(state, real).is_failure
    assert node.wait_for(state, real)
    assert forged not in node.received(state)


def test_node_cannot_read_other_nodes(kit: Kit, session_for: OpenSession) -> None:
    spy = session_for(*_creds(kit, "pi-02"))
    spy.subscribe(nodes_filter(FEDERATION))  # granted, but every message is filtered
    spy.subscribe(server_filter(FEDERATION))
    node = session_for(*_creds(kit, "pi-01"))
    coordinator = session_for(*_creds(kit, "coordinator"))
    secret_topic = node_topic(FEDERATION, "pi-01", "update")

    assert not node.publish_acked(secret_topic, b"weights").is_failure
    sentinel = uuid.uuid4().bytes
    assert not coordinator.publish_acked(server_topic(FEDERATION, "mask"), sentinel).is_failure
    assert spy.wait_for(server_topic(FEDERATION, "mask"), sentinel)
    assert spy.received(secret_topic) == []


@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), ("pi-01", "wrong-password"), ("intruder", "whatever"), ("pi-01", "")],
)
def test_unauthenticated_clients_cannot_connect(
    kit: Kit, username: str | None, password: str | None
) -> None:
    client, rc = _connect(kit, username, password)
    try:
        assert rc.is_failure, f"{username!r} was let in"
        assert rc.value in (0x86, NOT_AUTHORIZED)  # bad user name or password / not authorized
    finally:
        _close(client)


def test_clients_must_trust_the_brokers_certificate(kit: Kit, tmp_path: Path) -> None:
    other_ca = make_test_pki(tmp_path / "other").cafile
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5
    )
    client.tls_set(ca_certs=str(other_ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.username_pw_set(*_creds(kit, "pi-01"))
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect(kit.broker.host, kit.broker.port, keepalive=30)


def test_a_login_cannot_knock_another_client_off(kit: Kit) -> None:
    """Issue 12: pi-01's login connecting with pi-02's (or the coordinator's) client id
    used to close their connections ("already connected, closing old connection"). The
    victims use the client ids the mpfl services ask for."""
    victims = {
        user: _connect(kit, *_creds(kit, user), client_id=client_id)[0]
        for user, client_id in (("pi-02", f"mpfl-{FEDERATION}-pi-02"),
                                ("coordinator", f"mpfl-coordinator-{FEDERATION}"))
    }
    dropped: list[str] = []
    for user, client in victims.items():
        client.on_disconnect = lambda *_args, user=user: dropped.append(user)
    try:
        for stolen in (f"mpfl-{FEDERATION}-pi-02", f"mpfl-coordinator-{FEDERATION}"):
            client, rc = _connect(kit, *_creds(kit, "pi-01"), client_id=stolen)
            try:
                assert not rc.is_failure, rc
                time.sleep(0.5)  # a take-over closes the victim's connection at once
            finally:
                _close(client)
        assert dropped == [], f"{dropped} knocked off\n{kit.broker.log()}"
    finally:
        for client in victims.values():
            client.on_disconnect = None
            _close(client)


def test_the_mpfl_transport_works_with_ids_bound_to_logins(
    kit: Kit, session_for: OpenSession
) -> None:
    """The services' own MQTT client asks for ids the broker now replaces: it still
    connects, publishes (QoS 1, acknowledged) and is received."""
    from mpfl.net.endpoint import parse_broker_url
    from mpfl.net.inbox import Inbox
    from mpfl.net.mqtt import MqttTransport
    from mpfl.wire.protocol import Publish

    coordinator = session_for(*_creds(kit, "coordinator"))
    coordinator.subscribe(nodes_filter(FEDERATION))
    user, password = _creds(kit, "pi-01")
    address = parse_broker_url(f"mqtts://{kit.broker.host}:{kit.broker.port}",
                               ca_file=str(kit.cafile), username=user, password=password)
    transport = MqttTransport(address, f"mpfl-{FEDERATION}-pi-01", Inbox())
    transport.connect(TIMEOUT_S)
    try:
        topic, payload = node_topic(FEDERATION, "pi-01", "status"), uuid.uuid4().bytes
        transport.publish(Publish(topic, payload))
        assert transport.flush(TIMEOUT_S)
        assert coordinator.wait_for(topic, payload), kit.broker.log()
    finally:
        transport.close()
