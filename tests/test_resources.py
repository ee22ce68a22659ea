"""Bounded resources whatever arrives: unfinished chunk sets expire by age and by a
per-sender byte budget on both sides, node metrics reach disk only from known nodes and
within limits, and rejections are logged once per reason, then summarized."""

from __future__ import annotations

import json
import logging
import secrets
import zlib
from pathlib import Path

import numpy as np
import pytest

from coordinator.runstore import RunStore
from coordinator.service import MAX_NODE_METRICS_BYTES, CoordinatorService, ServiceOptions
from edge_node.agent import EDGE_CHUNK_BYTES, AgentOptions, EdgeAgent
from mpfl.config.settings import FederationConfig
from mpfl.federation.node import FederationNode
from mpfl.federation.rejections import RejectionLog
from mpfl.ml.data import load_dataset
from mpfl.net.endpoint import parse_broker_url
from mpfl.net.inbox import Inbox
from mpfl.wire import topics
from mpfl.wire.chunks import (
    EVICTED,
    EXPIRED,
    OVER_BUDGET,
    SENDER_BYTES,
    ChunkHeader,
    Reassembler,
    split_payload,
)
from mpfl.wire.protocol import Hello

MIB = 1 << 20
DATA = bytes(MIB)  # one chunk's data, shared: the test itself stays small


def _never_completing(topic_prefix: str, megabytes: int, senders: int = 1):  # type: ignore[no-untyped-def]
    """(topic, chunk) pairs: 4-chunk sets of which only 3 chunks ever arrive."""
    total = 4 * MIB
    sent = 0
    while sent < megabytes:
        mid = secrets.token_bytes(8)
        topic = f"{topic_prefix}/n{sent % senders}/update"
        for index in range(3):
            yield topic, ChunkHeader(mid, index, 4, total, zlib.crc32(b"x")).encode() + DATA
            sent += 1


def test_100_mb_of_never_completing_chunks_stay_within_the_sender_budget() -> None:
    r = Reassembler(max_bytes=64 * MIB, sender_bytes=16 * MIB)
    peak = 0
    for topic, chunk in _never_completing("f/nodes", 100):
        assert r.feed(topic, chunk) is None
        peak = max(peak, r.held_bytes)
    assert peak <= 16 * MIB
    assert r.expired[OVER_BUDGET] > 0


def test_the_coordinator_inbox_holds_at_most_its_default_sender_budget() -> None:
    inbox = Inbox()  # the coordinator's: default budgets
    peak = 0
    for i, (topic, chunk) in enumerate(_never_completing("f/nodes", 100)):
        inbox.put(topic, chunk)
        if i % 8 == 0:
            inbox.dispatch()
            peak = max(peak, inbox.reassembler.held_bytes)
    inbox.dispatch()
    assert peak <= SENDER_BYTES and inbox.reassembler.held_bytes <= SENDER_BYTES
    assert inbox.reassembler.expired[OVER_BUDGET] > 0


def test_many_senders_stay_within_the_total_budget() -> None:
    r = Reassembler(max_bytes=32 * MIB, sender_bytes=16 * MIB)
    peak = 0
    for topic, chunk in _never_completing("f/nodes", 100, senders=25):
        r.feed(topic, chunk)
        peak = max(peak, r.held_bytes)
    assert peak <= 32 * MIB and r.expired[EVICTED] > 0


def test_a_flooding_sender_does_not_evict_an_honest_upload() -> None:
    r = Reassembler(max_bytes=64 * MIB, sender_bytes=16 * MIB)
    honest = np.random.default_rng(0).bytes(3 * MIB)
    parts = split_payload(honest, MIB)
    r.feed("f/nodes/good/update", parts[0])
    for topic, chunk in _never_completing("f/nodes/evil", 100):
        r.feed(topic, chunk)
    whole = None
    for part in parts[1:]:
        whole = r.feed("f/nodes/good/update", part)
    assert whole == honest


def test_a_set_larger_than_the_sender_budget_is_refused_at_once() -> None:
    r = Reassembler(max_bytes=64 * MIB, sender_bytes=2 * MIB)
    parts = split_payload(bytes(3 * MIB), MIB)
    assert r.feed("f/server/state", parts[0]) is None
    assert r.pending == 0 and r.held_bytes == 0 and r.expired == {OVER_BUDGET: 1}


def test_unfinished_sets_expire_by_age_even_on_a_quiet_link() -> None:
    now = [0.0]
    r = Reassembler(clock=lambda: now[0], max_age=30.0)
    inbox = Inbox(reassembler=r)
    inbox.put("f/nodes/n0/update", split_payload(bytes(5000), 2000)[0])
    inbox.dispatch()
    assert r.pending == 1 and r.held_bytes > 0
    now[0] = 29.0
    inbox.dispatch()
    assert r.pending == 1
    now[0] = 31.0
    inbox.dispatch()  # nothing arrives: the age check still runs
    assert r.pending == 0 and r.held_bytes == 0 and r.expired == {EXPIRED: 1}


def test_the_edge_counts_foreign_chunks_and_holds_at_most_its_budget() -> None:
    data = load_dataset("digits", None, "train").subset(np.arange(20))
    node = FederationNode("pi-01", "f", data)
    agent = EdgeAgent(node, parse_broker_url("mqtt://127.0.0.1:1"), AgentOptions())
    state = topics.server_topic("f", topics.SERVER_STATE)
    peak = 0
    for i, (_topic, chunk) in enumerate(_never_completing("x", 100)):
        agent.inbox.put(state, chunk)
        if i % 10 == 0:
            agent.inbox.dispatch()
            peak = max(peak, agent.inbox.reassembler.held_bytes)
    agent.inbox.put(state, b"MPCK" + bytes(10))  # a malformed chunk
    agent.inbox.dispatch()
    agent._count_chunk_drops()
    assert peak <= EDGE_CHUNK_BYTES
    assert node.rejected[OVER_BUDGET] > 0 and node.rejected["malformed-chunk"] == 1
    assert node.state is None  # nothing reached the state machine


def test_rejections_are_logged_once_per_reason_then_summarized() -> None:
    now = [0.0]
    lines: list[str] = []
    rejections = RejectionLog(lines.append, "coordinator", interval=60.0,
                              clock=lambda: now[0])
    for i in range(10_000):
        now[0] = i * 0.01  # 100 s of flood
        rejections.note("malformed", "t/a", "bad bytes")
        rejections.note("unknown-node")
    firsts = [line for line in lines if "further drops" in line]
    assert len(firsts) == 2 and "(malformed): bad bytes" in firsts[0]
    summaries = [line for line in lines if "more message(s)" in line]
    assert len(summaries) == 1 and len(lines) == 3
    rejections.flush(force=True)
    assert "malformed" in lines[-1] and rejections.totals == {"malformed": 10_000,
                                                             "unknown-node": 10_000}


CFG = FederationConfig(
    federation="svc", model="mlp", model_args={"image_size": 8, "hidden": [16]},
    granularity="weight", mask_rounds=1, train_rounds=1, min_nodes=2, quorum=1,
)


def _metrics_topic(node_id: str) -> str:
    return topics.node_topic(CFG.federation, node_id, topics.NODE_METRICS)


def test_node_metrics_reach_disk_only_from_known_nodes_and_within_limits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    service = CoordinatorService(CFG, ServiceOptions(tmp_path))
    service.store = RunStore(tmp_path, node_metrics_limit=4096)
    server = service.server = service._make_server()
    status = topics.node_topic(CFG.federation, "n0", topics.NODE_STATUS)
    server.handle(status, Hello("n0", 10).encode())
    service._on_message(_metrics_topic("ghost"), b'{"round": 1}')
    service._on_message(_metrics_topic("n0"), b'{"round": 1, "node": "n9"}')
    service._on_message(_metrics_topic("n0"), b"[1]")
    big = json.dumps({"pad": "x" * MAX_NODE_METRICS_BYTES}).encode()
    service._on_message(_metrics_topic("n0"), big)
    for _ in range(200):  # ~20 B a line: the 4 KiB run limit is reached
        service._on_message(_metrics_topic("n0"), b'{"round": 2}')
    path = tmp_path / "node_metrics.jsonl"
    written = path.read_text().splitlines()
    assert json.loads(written[0]) == {"node": "n0", "round": 1}
    assert path.stat().st_size <= 4096 and len(written) < 201
    assert server.dropped["metrics-unknown-node"] == 1
    assert server.dropped["metrics-too-large"] == 1 and server.dropped["malformed"] == 1
    assert server.dropped["metrics-quota"] == 201 - len(written)
    service.rejections.observe(server.dropped)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("dropped a message" in line for line in lines) == 4  # one per reason
