"""The signing gates in a whole in-process federation, with an attacker on the broker.

The attacker sees every message (the broker delivers them to any subscriber) and injects,
each time the coordinator opens a round: forged uploads under every honest node's topic
(unsigned, and signed with its own key), a replay of every honest upload it has captured,
a forged retained ``server/state``, and a hello from an unenrolled id claiming 2^32-1
samples. The run must end exactly as a clean one: same participants, same final model.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpfl.config.settings import FederationConfig
from mpfl.federation import simulation
from mpfl.federation.server import FederationServer
from mpfl.federation.transport import MemoryBroker
from mpfl.maths.partition import partition
from mpfl.ml.data import load_dataset
from mpfl.wire import Envelope, decode_envelope, encode_envelope, topics
from mpfl.wire.frame import COORDINATOR, decode_frame, is_framed
from mpfl.wire.protocol import Hello, Publish, decode_state
from mpfl.wire.seal import Sealer
from mpfl.wire.signing import SigningKey

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FED = "gate"
N = 3


def _config() -> FederationConfig:
    return FederationConfig(
        federation=FED, model="mlp", model_args={"image_size": 8, "hidden": [32, 16]},
        granularity="filter", final_sparsity=0.5, mask_rounds=2, train_rounds=2,
        local_epochs=1, batch_size=32, lr=0.05, min_nodes=N, quorum=N, seed=3,
    )


class AttackBroker(MemoryBroker):
    """An in-memory broker with an attacker client on it."""

    instances: list[AttackBroker] = []

    def __init__(self) -> None:
        super().__init__()
        self.captured: list[Publish] = []  # honest signed uploads, for replay
        self.key = SigningKey.generate()  # the attacker's own key
        self.injected = 0
        self._attacking = False
        AttackBroker.instances.append(self)

    def publish(self, message: Publish) -> None:
        super().publish(message)
        if self._attacking:
            return
        self._attacking = True
        try:
            self._react(message)
        finally:
            self._attacking = False

    def _inject(self, message: Publish) -> None:
        self.injected += 1
        self.publish(message)

    def _react(self, message: Publish) -> None:
        parsed = topics.parse_node_topic(FED, message.topic)
        if parsed is not None and parsed[1] in (topics.NODE_MASK, topics.NODE_UPDATE):
            self.captured.append(message)
            self._inject(message)  # (b) an immediate replay
            return
        if message.topic != topics.server_topic(FED, topics.SERVER_STATE):
            return
        frame, _, _ = decode_frame(message.payload)  # signed, not secret: readable by all
        doc = decode_state(frame.payload)
        if not doc.phase.is_round:
            return
        for old in self.captured:  # (b) replays of every earlier honest upload
            self._inject(old)
        for old in self.captured[-2:]:  # (a) forged uploads of this round, under every topic
            env = decode_envelope(decode_frame(old.payload)[0].payload)
            for i in range(N):
                node = f"node-{i}"
                forged = encode_envelope(Envelope(env.kind, doc.round, env.fingerprint, node,
                                                  env.codec, env.payload))
                topic = topics.node_topic(FED, node, parsed_name(old.topic))
                self._inject(Publish(topic, forged))
                own = Sealer(self.key, node, frame.session).seal(Publish(topic, forged))
                self._inject(own)
        # (c) a forged retained state: the next round, a wild learning rate, signed by us
        evil = doc.train.replace(lr=1e30)
        fake = type(doc)(**{**{f: getattr(doc, f) for f in doc.__struct_fields__},
                            "train": evil})
        state_topic = topics.server_topic(FED, topics.SERVER_STATE)
        self._inject(Publish(state_topic, fake.encode(), retain=True))
        self._inject(Sealer(self.key, COORDINATOR, frame.session).seal(
            Publish(state_topic, fake.encode(), retain=True)))
        # (d) a Sybil: an unenrolled id with a huge sample count
        ghost = topics.node_topic(FED, "ghost", topics.NODE_STATUS)
        hello = Hello("ghost", 0xFFFF_FFFF).encode()
        self._inject(Publish(ghost, hello, retain=True))
        self._inject(Sealer(self.key, "ghost", frame.session).seal(Publish(ghost, hello)))


def parsed_name(topic: str) -> str:
    parsed = topics.parse_node_topic(FED, topic)
    assert parsed is not None
    return parsed[1]


def _run(signed: bool, broker: type[MemoryBroker]) -> FederationServer:
    train = load_dataset("digits", None, "train")
    parts = partition(train.y, N, "iid", seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulation, "MemoryBroker", broker)
        return simulation.run_in_process(_config(), [train.subset(p) for p in parts],
                                         signed=signed)


def test_signed_run_equals_the_unsigned_one() -> None:
    signed, plain = _run(True, MemoryBroker), _run(False, MemoryBroker)
    assert signed.closed_round == plain.closed_round == 4
    np.testing.assert_array_equal(signed.mask, plain.mask)
    np.testing.assert_allclose(signed.global_values, plain.global_values, rtol=1e-6)
    assert not signed.dropped


def test_every_forgery_is_rejected_and_the_model_is_the_clean_one() -> None:
    AttackBroker.instances.clear()
    clean = _run(True, MemoryBroker)
    attacked = _run(True, AttackBroker)
    (broker,) = AttackBroker.instances
    assert broker.injected > 50
    assert set(attacked.nodes) == {f"node-{i}" for i in range(N)}  # no ghost
    assert [r.participants for r in attacked.log] == [r.participants for r in clean.log]
    np.testing.assert_array_equal(attacked.mask, clean.mask)
    np.testing.assert_allclose(attacked.global_values, clean.global_values, rtol=1e-6)
    dropped = attacked.dropped
    assert dropped["unsigned"] > 0 and dropped["bad-signature"] > 0
    assert dropped["unknown-signer"] > 0 and dropped["replay"] > 0
    # every node message the attacker sent was rejected by the gate, never by the server
    server_side = sum(n for reason, n in dropped.items() if not _gate_reason(reason))
    assert server_side == 0, dropped
    gate_side = sum(n for reason, n in dropped.items() if _gate_reason(reason))
    node_topic_forgeries = broker.injected - 2 * _rounds_attacked(attacked)
    assert gate_side == node_topic_forgeries


def _rounds_attacked(server: FederationServer) -> int:
    return server.total_rounds  # one state per round opened; each drew two forged states


def _gate_reason(reason: str) -> bool:
    return reason in {"unsigned", "bad-frame", "wrong-topic", "unknown-signer",
                      "bad-signature", "replay", "wrong-session", "wrong-round"}


def test_frames_are_on_the_wire() -> None:
    AttackBroker.instances.clear()
    _run(True, AttackBroker)
    (broker,) = AttackBroker.instances
    assert all(is_framed(m.payload) for m in broker.captured)


def test_without_keys_both_sides_say_so_once_and_pass_everything() -> None:
    from mpfl.federation.gate import NodeGate, ServerGate
    from mpfl.federation.node import FederationNode

    said: list[str] = []
    server = FederationServer(_config())
    gate = ServerGate(server, None, say=said.append)
    train = load_dataset("digits", None, "train")
    node = NodeGate(FederationNode("node-0", FED, train.subset(np.arange(20))), None,
                    say=said.append)
    assert len(said) == 2 and all("NOT authenticated" in line for line in said)
    assert gate.open("any/topic", b"raw") == b"raw"
    messages = server.start()
    assert gate.seal(messages) == messages  # unchanged: no frame
    assert [m.payload for m in node.on_connect()] == [node.node.hello().payload]


def test_rejections_are_counted_each_and_logged_once_per_reason() -> None:
    from mpfl.federation.gate import CoordinatorKeys, ServerGate
    from mpfl.wire.signing import Keyring

    said: list[str] = []
    server = FederationServer(_config())
    gate = ServerGate(server, CoordinatorKeys(SigningKey.generate(), Keyring()),
                      say=said.append)
    topic = topics.node_topic(FED, "node-0", topics.NODE_UPDATE)
    for _ in range(100):
        assert gate.open(topic, b"unsigned") is None
        step = gate.handle(topic, b"MPFS" + b"\0" * 200)
        assert step.publishes == [] and step.closed is None
    assert server.dropped == {"unsigned": 100, "bad-frame": 100}
    assert len(said) == 2 and not server.nodes
    assert all(f"dropped a message on {topic}" in line for line in said), said
    # The service's log observes the server's counter too: it must not log them again.
    gate.rejections.observe(server.dropped)
    gate.rejections.flush(force=True)
    assert gate.rejections.totals == {"unsigned": 100, "bad-frame": 100}
    assert len(said) == 3 and "198 more" in said[-1], said


def test_a_node_gate_rejection_takes_the_node_s_one_drop_path() -> None:
    from mpfl.federation.gate import NodeGate, NodeKeys
    from mpfl.federation.node import FederationNode

    said: list[str] = []
    train = load_dataset("digits", None, "train")
    node = FederationNode("node-0", FED, train.subset(np.arange(20)))
    node.rejections.emit = said.append
    gate = NodeGate(node, NodeKeys(SigningKey.generate(), SigningKey.generate().public_key),
                    say=said.append)
    state = topics.server_topic(FED, topics.SERVER_STATE)
    for _ in range(50):
        assert gate.handle(state, b'{"forged": 1}') == []
    assert node.rejected == {"unsigned": 50} and node.rejections.totals == {"unsigned": 50}
    assert len(said) == 1 and f"node node-0: dropped a message on {state}" in said[0], said
    assert node.state is None
