"""Byte-level fuzzing of the signing gates in front of both state machines, with keys:
``ServerGate.handle`` on every node topic and ``NodeGate.handle`` on every server topic.

Two kinds of hostile input: signed frames mutated after signing (a forger, or a broken
link: each must be rejected, never accepted) and hostile inner payloads properly signed
by an enrolled key (a compromised node, or a buggy coordinator: the frame is good, the
content is not). Either way the gate and the handler behind it never raise or hang, and
what they reject leaves the round and the node's state as they were."""

from __future__ import annotations

from _fuzz import FUZZ, hostile, no_hang
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_handlers import (
    FED,
    NODE_SEEDS,
    SERVER_SEEDS,
    _server_view,
    node_message,
    open_round,
    server_message,
    waiting_node,
)

from mpfl.federation.gate import CoordinatorKeys, NodeGate, NodeKeys, ServerGate
from mpfl.federation.server import FederationServer
from mpfl.wire import topics
from mpfl.wire.frame import COORDINATOR
from mpfl.wire.protocol import Publish
from mpfl.wire.seal import Sealer
from mpfl.wire.signing import Keyring, SigningKey

COORDINATOR_KEY = SigningKey.generate()
NODE_KEYS = {n: SigningKey.generate() for n in ("n0", "n1", "n2")}
ENROLLED = Keyring(nodes={n: k.public_key for n, k in NODE_KEYS.items()})


def _quiet(_line: str) -> None:
    pass


def keyed_server() -> tuple[FederationServer, ServerGate]:
    server = open_round()
    return server, ServerGate(server, CoordinatorKeys(COORDINATOR_KEY, ENROLLED), say=_quiet)


def _node_of(topic: str) -> str:
    parts = topic.split("/")
    return parts[4] if len(parts) > 5 and parts[4] in NODE_KEYS else "n0"


def _sealed_node_seeds(session: str) -> list[bytes]:
    out = []
    for name, payloads in SERVER_SEEDS.items():
        sealer = Sealer(NODE_KEYS["n0"], "n0", session)
        out += [sealer.seal(Publish(topics.node_topic(FED, "n0", name), p)).payload
                for p in payloads]
    return out


@st.composite
def keyed_node_message(draw: st.DrawFn, session: str) -> tuple[str, bytes]:
    topic, payload = draw(node_message())
    if draw(st.booleans()):  # a frame mutated after signing
        topic = topics.node_topic(FED, "n0", draw(st.sampled_from(list(SERVER_SEEDS))))
        return topic, draw(hostile(_sealed_node_seeds(session)))
    node_id = _node_of(topic)  # hostile content, signed by the topic's enrolled node
    return topic, Sealer(NODE_KEYS[node_id], node_id, session).seal(
        Publish(topic, payload)).payload


@FUZZ
@given(data=st.data())
def test_server_gate(data: st.DataObject) -> None:
    server, gate = keyed_server()
    for _ in range(data.draw(st.integers(1, 3))):
        topic, payload = data.draw(keyed_node_message(server.session))
        before, dropped = _server_view(server), server.dropped.total()
        with no_hang():
            step = gate.handle(topic, payload)  # never raises
        assert server.phase != "failed"
        if server.dropped.total() > dropped:
            assert step.closed is None
            assert _server_view(server) == before, (topic, payload)
        if server.phase != "mask":
            return


def keyed_node() -> tuple[NodeGate, Sealer]:
    node = waiting_node()
    gate = NodeGate(node, NodeKeys(NODE_KEYS["n0"], COORDINATOR_KEY.public_key), say=_quiet)
    return gate, Sealer(COORDINATOR_KEY, COORDINATOR, "s1")


@FUZZ
@given(data=st.data())
def test_node_gate(data: st.DataObject) -> None:
    gate, coordinator = keyed_node()
    node = gate.node
    for _ in range(data.draw(st.integers(1, 3))):
        topic, payload = data.draw(server_message())
        sealed = coordinator.seal(Publish(topic, payload)).payload
        if data.draw(st.booleans()):  # mutated after signing
            seeds = [coordinator.seal(Publish(topic, p)).payload
                     for p in NODE_SEEDS[topic.rsplit("/", 1)[-1]]]
            sealed = data.draw(hostile(seeds))
        state, finished, rejected = node.state, node.finished, node.rejected.total()
        with no_hang():
            out = gate.handle(topic, sealed)  # never raises
        assert all(isinstance(m, Publish) for m in out)
        if node.rejected.total() > rejected:
            assert node.state is state and node.finished is finished
