"""Byte-level fuzzing of both sides' handlers: ``FederationServer.handle`` on every node
topic in an open round, ``FederationNode.handle`` on every server topic, and the inbox
dispatch (chunk reassembly, then the coordinator service's and the edge agent's own
handlers). A handler never raises and never hangs on a message it cannot use, and a
message it rejects changes nothing it holds: not the round's votes or aggregate, not the
known nodes, not the node's state or finished round."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _fuzz import EXAMPLES, FUZZ, fix_envelope_crc, hostile, json_hostile, no_hang, view
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.service import CoordinatorService, ServiceOptions
from edge_node.agent import AgentOptions, EdgeAgent
from mpfl.config.settings import FederationConfig
from mpfl.federation.gate import ServerGate
from mpfl.federation.node import FederationNode
from mpfl.federation.server import FederationServer
from mpfl.ml.data import load_dataset
from mpfl.net.endpoint import parse_broker_url
from mpfl.wire import Envelope, Kind, encode_envelope, encode_mask, encode_values, topics
from mpfl.wire.chunks import HEADER_SIZE, split_payload
from mpfl.wire.protocol import Hello, Publish, encode_update

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FED = "fz"
# Joint mode: a mask round takes both a mask and an update, so one open round exercises
# both upload decoders; delta values exercise the base path.
CFG = FederationConfig(federation=FED, model="mlp", model_args={"image_size": 8, "hidden": [8]},
                       granularity="weight", final_sparsity=0.5, mask_rounds=1, train_rounds=1,
                       mode="joint", delta=True, min_nodes=3, quorum=2)
NODES = ("n0", "n1", "n2")
DATA = load_dataset("digits", None, "train").subset(np.arange(24))


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _uploads(server: FederationServer, node_id: str, seed: int) -> dict[str, list[bytes]]:
    """Valid round-1 mask and update envelopes of ``node_id``, in every codec."""
    rng = np.random.default_rng(seed)
    fp, t = server.unit_map.fingerprint, server.round
    n = server.unit_map.n_units
    mask = rng.random(n) < 0.5
    masks = [encode_envelope(Envelope(Kind.LOCAL_MASK, t, fp, node_id, int(c), p))
             for c, p in (encode_mask(mask, codec=name) for name in ("raw", "rice", "sc"))]
    base, sizes = server.weights.published()
    values = (base + rng.standard_normal(base.size)).astype(np.float32)
    updates = []
    for name in ("fp32", "fp16", "int8"):
        codec, body = encode_values(values, sizes, name, base)
        updates.append(encode_envelope(Envelope(Kind.UPDATE, t, fp, node_id, int(codec),
                                                encode_update(40, body))))
    return {topics.NODE_MASK: masks, topics.NODE_UPDATE: updates}


def open_round(clock: Clock | None = None) -> FederationServer:
    """A server in round 1 with three nodes, one of which (n1) has already answered."""
    server = FederationServer(CFG, None, clock or Clock())
    for node_id in NODES:
        hello = Hello(node_id, 40).encode()
        server.handle(topics.node_topic(FED, node_id, topics.NODE_STATUS), hello)
    assert server.round == 1 and server.phase == "mask"
    for name, payloads in _uploads(server, "n1", 1).items():
        server.handle(topics.node_topic(FED, "n1", name), payloads[0])
    assert server.answered == {"n1"}
    return server


SEED_SERVER = open_round()
SERVER_SEEDS = {
    topics.NODE_STATUS: [Hello("n0", 40).encode(), Hello("ghost", 10**9).encode(), b"offline"],
    **{name: p + _uploads(SEED_SERVER, "n1", 2)[name]
       for name, p in _uploads(SEED_SERVER, "n0", 3).items()},
    topics.NODE_METRICS: [b'{"round": 1}'],
}


@st.composite
def node_message(draw: st.DrawFn) -> tuple[str, bytes]:
    node_id = draw(st.sampled_from(["n0", "n1", "n2", "ghost", "n0/extra", "+", ""]))
    name = draw(st.sampled_from(list(SERVER_SEEDS)))
    seeds = SERVER_SEEDS[name]
    if name == topics.NODE_STATUS:
        payload = draw(json_hostile(seeds[:2]) | hostile(seeds))
    else:
        payload = draw(hostile(seeds, fix_envelope_crc))
    return f"mpfl/v1/{FED}/nodes/{node_id}/{name}", payload


def _server_view(server: FederationServer) -> object:
    current = server.current
    assert current is not None
    return view({"phase": server.phase, "round": server.round, "nodes": server.nodes,
                 "answered": current.answered, "seen": current._seen,
                 "votes": current.votes, "values": current.values,
                 "weights": server.weights, "log": len(server.log)})


@FUZZ
@given(messages=st.lists(node_message(), min_size=1, max_size=3))
def test_server_handle(messages: list[tuple[str, bytes]]) -> None:
    server = open_round()
    for topic, payload in messages:
        before, dropped = _server_view(server), server.dropped.total()
        with no_hang():
            step = server.handle(topic, payload)  # never raises
        assert server.phase != "failed"
        if server.dropped.total() > dropped:
            assert step.closed is None and not step.publishes
            assert _server_view(server) == before, (topic, payload)
        if server.phase != "mask":
            return  # a valid message closed the round: nothing more to compare


WAITING_SERVER = FederationServer(CFG)
START = WAITING_SERVER.start()  # what a node sees before round 1


def _round_state(phase: str, t: int) -> bytes:
    doc = json.loads(WAITING_SERVER.state_doc().encode())
    doc.update(phase=phase, round=t)
    return json.dumps(doc).encode()


NODE_SEEDS = {
    topics.SERVER_STATE: [_round_state("mask", 1), _round_state("waiting", 0),
                          _round_state("train", 2), _round_state("done", 2)],
    topics.SERVER_MODEL: [m.payload for m in START if m.topic.endswith("/model")],
    topics.SERVER_MASK: [m.payload for m in START if m.topic.endswith("/mask")],
}


def waiting_node() -> FederationNode:
    """A node that follows the coordinator's retained messages, before round 1."""
    node = FederationNode("n0", FED, DATA, seed=1)
    for message in START:
        assert node.handle(message.topic, message.payload) == []
    assert node.state is not None and not node.rejected
    return node


@st.composite
def server_message(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(list(NODE_SEEDS)))
    seeds = NODE_SEEDS[name]
    if name == topics.SERVER_STATE:
        payload = draw(json_hostile(seeds))
    else:
        payload = draw(hostile(seeds, fix_envelope_crc))
    return topics.server_topic(FED, name), payload


@FUZZ
@given(messages=st.lists(server_message(), min_size=1, max_size=3))
def test_node_handle(messages: list[tuple[str, bytes]]) -> None:
    node = waiting_node()
    for topic, payload in messages:
        state, finished, rejected = node.state, node.finished, node.rejected.total()
        model_env, mask_env = node._model_env, node._mask_env
        with no_hang():
            out = node.handle(topic, payload)  # never raises
        assert all(isinstance(m, Publish) for m in out)
        if node.rejected.total() > rejected:
            assert out == [] and node.state is state and node.finished is finished
            # An envelope whose payload fails to decode is forgotten (the node waits for
            # the coordinator's next one); nothing else may change.
            assert node._model_env in (model_env, None) and node._mask_env in (mask_env, None)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[Publish] = []

    def publish(self, message: Publish) -> None:
        self.sent.append(message)

    def flush(self, timeout: float = 10.0) -> bool:
        return True


def _chunked(payloads: list[bytes]) -> list[bytes]:
    return [c for p in payloads for c in split_payload(p + bytes(1100), HEADER_SIZE + 1024)]


@st.composite
def inbox_message(draw: st.DrawFn) -> tuple[str, bytes]:
    if draw(st.booleans()):
        topic, payload = draw(node_message())
    else:
        topic, payload = draw(server_message())
    if draw(st.integers(0, 3)) == 0:  # a chunk of a (valid or mutated) large message
        payload = draw(hostile(_chunked(SERVER_SEEDS[topics.NODE_UPDATE][:1]
                                        + NODE_SEEDS[topics.SERVER_MODEL])))
    return topic, payload


@FUZZ
@given(messages=st.lists(inbox_message(), min_size=1, max_size=6))
def test_inbox_dispatch(tmp_path_factory: pytest.TempPathFactory,
                        messages: list[tuple[str, bytes]]) -> None:
    """Both services' inbox paths: chunk reassembly, node metrics to disk, the handlers."""
    run_dir: Path = tmp_path_factory.mktemp("run")
    service = CoordinatorService(CFG, ServiceOptions(run_dir))
    service.transport = FakeTransport()  # type: ignore[assignment]
    service.server = open_round()
    service.gate = ServerGate(service.server, None, say=lambda _line: None)  # unkeyed
    service.inbox.subscribe(topics.nodes_filter(FED), service._on_message)
    agent = EdgeAgent(waiting_node(), parse_broker_url("mqtt://127.0.0.1:1"), AgentOptions())
    agent.transport = FakeTransport()  # type: ignore[assignment]
    agent.inbox.subscribe(topics.server_filter(FED), agent._on_message)
    for topic, payload in messages:
        service.inbox.put(topic, payload)
        agent.inbox.put(topic, payload)
    with no_hang():
        assert service.inbox.dispatch() == len(messages)  # never raises
        assert agent.inbox.dispatch() == len(messages)
    service._count_chunk_drops()
    assert service.server.phase != "failed"


@settings(FUZZ, max_examples=max(EXAMPLES // 5, 20))  # each example builds two models
@given(image_size=st.integers(1, 24), channels=st.integers(1, 3), classes=st.integers(1, 12),
       hidden=st.lists(st.integers(1, 32), max_size=2))
def test_node_survives_a_model_that_does_not_fit_its_data(
    image_size: int, channels: int, classes: int, hidden: list[int]
) -> None:
    """A coordinator (or a forger) whose model, fingerprint, weights and mask are all
    consistent, but for other images or fewer classes than this node's data: the node
    refuses the state (reason "model") before it trains, instead of dying in torch."""
    args = {"image_size": image_size, "in_channels": channels, "num_classes": classes,
            "hidden": hidden}
    other = FederationServer(replace(CFG, model_args=args))
    messages = other.start()
    doc = json.loads(other.state_doc().encode())
    doc.update(phase="mask", round=1)
    messages.append(Publish(topics.server_topic(FED, topics.SERVER_STATE),
                            json.dumps(doc).encode()))
    node = FederationNode("n0", FED, DATA, seed=1)
    for message in messages:
        with no_hang():
            node.handle(message.topic, message.payload)  # never raises
    fits = image_size == 8 and channels == 1 and classes >= DATA.num_classes
    if fits:
        assert node.finished is not None and not node.rejected
    else:
        assert node.finished is None and node.rejected["model"] >= 1
        assert node.state is None or node.state.model.args != args
