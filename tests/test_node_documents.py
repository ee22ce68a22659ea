"""A node never dies on a server message it cannot use: each defect is counted by reason,
logged in one line and dropped; the node keeps its last good state, and a good document
that follows still runs the federation to its end. Over the in-memory transport."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mpfl.config.settings import FederationConfig
from mpfl.federation.node import FederationNode
from mpfl.federation.server import FederationServer
from mpfl.federation.transport import MemoryBroker
from mpfl.ml.data import load_dataset
from mpfl.wire import Envelope, Kind, encode_envelope, topics
from mpfl.wire.protocol import Publish

FED = "docs"
CFG = FederationConfig(federation=FED, model="mlp", model_args={"image_size": 8, "hidden": [8]},
                       granularity="filter", final_sparsity=0.5, mask_rounds=1, train_rounds=1,
                       min_nodes=1, quorum=1)
STATE = topics.server_topic(FED, topics.SERVER_STATE)
MASK = topics.server_topic(FED, topics.SERVER_MASK)
MODEL = topics.server_topic(FED, topics.SERVER_MODEL)

Doc = dict[str, Any]


def _set(path: str, value: Any) -> Callable[[Doc], Doc]:
    *parents, leaf = path.split(".")

    def change(doc: Doc) -> Doc:
        inner = doc
        for key in parents:
            inner = inner[key]
        inner[leaf] = value
        return doc

    return change


def _drop(key: str) -> Callable[[Doc], Doc]:
    def change(doc: Doc) -> Doc:
        del doc[key]
        return doc

    return change


# Every kind of state document the issue saw end an mpfl-edge process, and more; each is
# a valid round-1 document with one thing wrong.
STATE_DEFECTS: list[tuple[str, Callable[[Doc], Doc] | bytes, str]] = [
    ("bad JSON", b'{"protocol": 1, "round":', "not-json"),
    ("not an object", b"[1, 2, 3]", "wrong-type"),
    ("another protocol version", _set("protocol", 2), "protocol-version"),
    ("unknown key", _set("surprise", 1), "unknown-field"),
    ("unknown training key", _set("train.nesterov", True), "unknown-field"),
    ("missing key", _drop("round"), "missing-field"),
    ("wrong type", _set("round", "x"), "wrong-type"),
    ("bool for an int", _set("round", True), "wrong-type"),
    ("unknown phase", _set("phase", "paused"), "unknown-value"),
    ("unknown model name", _set("model.name", "vgg99"), "unknown-value"),
    ("bad model args", _set("model.args", {"bogus": 1}), "model"),
    ("negative model size", _set("model.args", {"image_size": 8, "hidden": [-3]}), "model"),
    ("fingerprint mismatch", _set("fingerprint", "00" * 8), "fingerprint"),
    ("negative round", _set("round", -1), "out-of-range"),
    ("absurd learning rate", _set("train.lr", 1e9), "out-of-range"),
    ("absurd epochs", _set("train.epochs", 10**9), "out-of-range"),
    ("zero batch size", _set("train.batch_size", 0), "out-of-range"),
    ("round past the end", _set("round", 99), "invalid"),
    ("another federation", _set("federation", "other"), "wrong-federation"),
]

FP = bytes(8)
ENVELOPE_DEFECTS: list[tuple[str, str, bytes, str]] = [
    ("garbage mask", MASK, b"\x00garbage\xff" * 4, "envelope"),
    ("model envelope on the mask topic", MASK,
     encode_envelope(Envelope(Kind.MODEL, 0, FP, "", 1, b"")), "envelope"),
    ("truncated model", MODEL, encode_envelope(Envelope(Kind.MODEL, 0, FP, "", 1, b"ab"))[:-3],
     "envelope"),
]


class Fleet:
    """One coordinator and one node on a MemoryBroker, plus a hostile publisher."""

    def __init__(self) -> None:
        self.broker = MemoryBroker()
        self.server = FederationServer(CFG)
        train = load_dataset("digits", None, "train")
        self.node = FederationNode("n0", FED, train.subset(np.arange(0, 200)), seed=1)
        self.broker.subscribe(topics.nodes_filter(FED), lambda t, p: self._send(
            self.server.handle(t, p).publishes))
        self.broker.subscribe(topics.server_filter(FED), lambda t, p: self._send(
            self.node.handle(t, p)))

    def _send(self, messages: list[Publish]) -> None:
        for message in messages:
            self.broker.publish(message)

    def inject(self, topic: str, payload: bytes) -> None:
        """A retained message from anyone who can publish on the server's topics."""
        self.broker.publish(Publish(topic, payload, retain=True))
        self.broker.pump()


def _round_one_doc(server: FederationServer) -> Doc:
    """A well-formed document of an open round 1, as the coordinator would send it."""
    doc: Doc = json.loads(server.state_doc().encode())
    doc.update(phase="mask", round=1)
    return doc


def test_every_defect_is_counted_logged_and_survived_then_a_round_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = Fleet()
    node, server = fleet.node, fleet.server
    fleet._send(server.start())  # waiting: the node's last good state
    fleet.broker.pump()
    assert node.state is not None and node.state.phase == "waiting" and not node.rejected
    good_state = node.state

    caplog.set_level(logging.WARNING, logger="mpfl.federation.node")
    for name, defect, reason in STATE_DEFECTS:
        before = node.rejected.copy()
        caplog.clear()
        payload = defect if isinstance(defect, bytes) else json.dumps(
            defect(_round_one_doc(server))).encode()
        fleet.inject(STATE, payload)  # must not raise
        assert node.rejected - before == {reason: 1}, name
        assert node.state is good_state, name  # the last good state is kept
        assert not node.done and node.finished is None, name
        if before[reason]:  # logged once per reason, then only in periodic summaries
            assert not caplog.records, name
            continue
        [record] = caplog.records
        line = record.getMessage()
        assert "\n" not in line and reason in line and STATE in line, name
    for name, topic, payload, reason in ENVELOPE_DEFECTS:
        before = node.rejected.copy()
        fleet.inject(topic, payload)
        assert node.rejected - before == {reason: 1}, name
    assert node.rejected.total() == len(STATE_DEFECTS) + len(ENVELOPE_DEFECTS)

    # The coordinator's own messages come next: the node joins and the run completes.
    fleet._send(server.start())
    fleet.broker.publish(node.hello())
    fleet.broker.pump()
    assert server.phase == "done", server.error
    assert [entry.participants for entry in server.log] == [["n0"], ["n0"]]
    assert node.done and node.finished is not None and node.finished.round == 2
    assert node.rejected.total() == len(STATE_DEFECTS) + len(ENVELOPE_DEFECTS)


def test_a_mask_payload_that_does_not_fit_is_dropped_and_a_fresh_one_is_used() -> None:
    fleet = Fleet()
    node, server = fleet.node, fleet.server
    good = server.start()
    fleet._send(good)
    fleet.broker.pump()
    mask = next(m for m in good if m.topic == MASK)
    # A mask envelope of the right model whose payload decodes to the wrong number of bits.
    bad = encode_envelope(Envelope(Kind.MASK, 0, server.unit_map.fingerprint, "", 1,
                                   b"\x01\x02\x03"))
    fleet.inject(MASK, bad)
    fleet.inject(STATE, json.dumps(_round_one_doc(server)).encode())
    assert node.rejected["payload"] >= 1 and node.finished is None
    fleet.inject(MASK, mask.payload)  # the coordinator's own mask: round 1 can be done
    assert node.finished is not None and node.finished.round == 1
