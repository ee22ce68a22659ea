"""The coordinator's round state machine over the in-memory transport, with a fake clock:
closing at all-answered / at the deadline with quorum, retries then failure, drops by
reason, and resuming from a snapshot without repeating or losing a round."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from coordinator.runstore import RunStore
from mpfl.config.settings import FederationConfig
from mpfl.errors import FederationError, ModelError
from mpfl.federation.node import FederationNode
from mpfl.federation.rounds import NodeInfo, NodeTable
from mpfl.federation.server import FederationServer
from mpfl.federation.transport import MemoryBroker
from mpfl.ml.data import load_dataset
from mpfl.wire import Envelope, Kind, encode_envelope, encode_mask, encode_values, topics
from mpfl.wire.protocol import Hello, Publish, decode_json, encode_update

CFG = FederationConfig(
    federation="t", model="mlp", model_args={"image_size": 8, "hidden": [16]},
    granularity="weight", final_sparsity=0.5, mask_rounds=2, train_rounds=2,
    min_nodes=3, quorum=2, round_timeout=10.0, start_timeout=30.0, retries=1, mode="rewind",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Federation:
    """A server and real nodes on a MemoryBroker; nodes can be muted (crashed)."""

    def __init__(self, cfg: FederationConfig = CFG, n: int = 3) -> None:
        self.cfg, self.clock = cfg, Clock()
        self.broker = MemoryBroker()
        self.server = FederationServer(cfg, None, self.clock)
        self.muted: set[str] = set()
        train = load_dataset("digits", None, "train")
        self.nodes = [FederationNode(f"n{i}", cfg.federation, train.subset(np.arange(i, 300, n)),
                                     seed=i) for i in range(n)]
        self.trained = {node.node_id: 0 for node in self.nodes}
        self.broker.subscribe(topics.nodes_filter(cfg.federation), self._to_server)
        for node in self.nodes:
            self.broker.subscribe(topics.server_filter(cfg.federation),
                                  lambda t, p, node=node: self._to_node(node, t, p))

    def _send(self, messages: list[Publish]) -> None:
        for message in messages:
            self.broker.publish(message)

    def _to_server(self, topic: str, payload: bytes) -> None:
        self._send(self.server.handle(topic, payload).publishes)

    def _to_node(self, node: FederationNode, topic: str, payload: bytes) -> None:
        if node.node_id in self.muted:
            return
        before = node.last_metrics
        self._send(node.handle(topic, payload))
        if node.last_metrics is not before:
            self.trained[node.node_id] += 1

    def start(self) -> None:
        self._send(self.server.start())
        for node in self.nodes:
            self.broker.publish(node.hello())
        self.broker.pump()

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self._send(self.server.tick().publishes)
        self.broker.pump()

    def swap_server(self, server: FederationServer) -> None:
        """A restarted coordinator: same broker (retained statuses), new process."""
        self.server = server
        server.clock = self.clock
        self._send(server.start())
        self.broker.pump()


def test_rounds_close_when_all_answered_and_follow_the_schedule() -> None:
    fed = Federation()
    fed.start()
    server = fed.server
    assert server.phase == "done"
    assert [e.round for e in server.log] == [1, 2, 3, 4]
    assert [e.phase for e in server.log] == ["mask", "mask", "train", "train"]
    for entry in server.log[:2]:
        assert entry.sparsity == pytest.approx(entry.target_sparsity, abs=0.01)
        assert entry.participants == ["n0", "n1", "n2"]
    assert server.log[1].target_sparsity == pytest.approx(CFG.final_sparsity)
    assert all(e.uplink_bytes > 0 and e.dense_uplink_bytes == 3 * 4 * server.unit_map.n_values
               for e in server.log)
    assert sum(n.sent_bytes for n in fed.nodes) == sum(e.uplink_bytes for e in server.log)


def test_round_closes_at_the_deadline_with_quorum() -> None:
    fed = Federation()
    fed.muted.add("n2")
    fed.start()
    assert fed.server.round == 1 and not fed.server.log  # still waiting for n2
    fed.advance(CFG.round_timeout - 0.5)
    assert not fed.server.log
    fed.advance(1.0)
    assert fed.server.log[0].participants == ["n0", "n1"]
    assert fed.server.round == 2


def test_below_quorum_retries_then_fails() -> None:
    fed = Federation()
    fed.muted |= {"n1", "n2"}
    fed.start()
    first_deadline = fed.server.deadline
    fed.advance(CFG.round_timeout + 0.1)
    assert fed.server.phase == "mask" and fed.server.current.attempts == 1
    assert fed.server.deadline > first_deadline
    fed.advance(CFG.round_timeout + 0.1)
    assert fed.server.phase == "failed"
    state = decode_json(fed.broker.retained[topics.server_topic("t", "state")], "state")
    assert state["phase"] == "failed" and "quorum" in state["error"]
    with pytest.raises(FederationError, match="quorum"):
        fed.server.require_success()


def test_waiting_times_out_without_enough_nodes() -> None:
    fed = Federation(replace(CFG, min_nodes=3, quorum=3))
    fed.muted.add("n0")
    fed.broker.publish(fed.nodes[0].hello())
    fed._send(fed.server.start())
    fed.broker.pump()
    fed.advance(CFG.start_timeout + 1)
    assert fed.server.phase == "failed" and "start timeout" in (fed.server.error or "")


def _mask_upload(server: FederationServer, node: str, t: int, fingerprint: bytes | None = None,
                 kind: Kind = Kind.LOCAL_MASK) -> bytes:
    codec, payload = encode_mask(server.mask, scope=server.mask)
    fp = server.unit_map.fingerprint if fingerprint is None else fingerprint
    return encode_envelope(Envelope(kind, t, fp, node, codec, payload))


def test_bad_messages_are_counted_by_reason_and_never_aggregated() -> None:
    fed = Federation()
    fed.muted |= {"n0", "n1", "n2"}  # the test sends every upload itself
    fed.start()
    server = fed.server
    topic = topics.node_topic("t", "n0", "mask")
    good = _mask_upload(server, "n0", 1)
    bad = {
        "garbage": (topic, b"\x00garbage" * 5),
        "truncated": (topic, good[:-7]),
        "fingerprint": (topic, _mask_upload(server, "n0", 1, fingerprint=b"\x01" * 8)),
        "stale": (topic, _mask_upload(server, "n0", 0)),
        "unknown": (topics.node_topic("t", "zz", "mask"), _mask_upload(server, "zz", 1)),
        "other-node": (topic, _mask_upload(server, "n1", 1)),
        "kind": (topic, _mask_upload(server, "n0", 1, kind=Kind.UPDATE)),
    }
    for name, (t, payload) in bad.items():
        server.handle(t, payload)
        assert not server.answered, name
    server.handle(topic, good)
    server.handle(topic, good)
    assert server.answered == {"n0"}
    assert server.dropped == {"malformed": 4, "fingerprint": 1, "stale-round": 1,
                              "unknown-node": 1, "duplicate": 1}
    assert server.traffic.uplink == len(good)


def test_updates_out_of_phase_or_non_finite_are_dropped() -> None:
    fed = Federation(replace(CFG, mask_rounds=0, train_rounds=1))
    fed.muted |= {"n0", "n1", "n2"}
    fed.start()
    server = fed.server
    assert server.phase == "train"
    sizes = server.unit_map.layer_sizes(server.mask)
    values = np.full(sum(sizes), np.nan, dtype=np.float32)
    codec, body = encode_values(values, sizes, "fp32")
    env = Envelope(Kind.UPDATE, 1, server.unit_map.fingerprint, "n0", codec,
                   encode_update(10, body))
    server.handle(topics.node_topic("t", "n0", "update"), encode_envelope(env))
    server.handle(topics.node_topic("t", "n0", "mask"), _mask_upload(server, "n0", 1))
    assert server.dropped == {"malformed": 1, "wrong-phase": 1}
    assert not server.answered


def test_resume_from_snapshot_repeats_and_loses_no_round(tmp_path: Path) -> None:
    fed = Federation()
    fed.muted.add("n2")
    fed.start()
    fed.advance(CFG.round_timeout + 0.1)  # round 1 closes at quorum; round 2 answered by 2
    fed.advance(CFG.round_timeout + 0.1)
    old = fed.server
    assert old.closed_round == 2 and old.round == 3
    store = RunStore(tmp_path / "run")
    store.save(old, {})
    # The coordinator dies here: n0 and n1 have already sent round 3 to the dead process,
    # and a write it had begun left its temp file (killed before the rename).
    fed.muted.discard("n2")
    partial = store.checkpoint_dir / ".round-0003.npz.k1ll3d"
    partial.write_bytes(b"half a checkpoint")
    arrays, meta = store.load()
    assert not partial.exists()
    restored = FederationServer.restore(CFG, arrays, meta)
    assert restored.round == 3 and restored.phase == "train" and not restored.answered
    assert restored.session != old.session and restored.run_id == old.run_id
    np.testing.assert_array_equal(restored.mask, old.mask)
    np.testing.assert_array_equal(restored.global_values, old.global_values)
    trained_before = dict(fed.trained)
    fed.swap_server(restored)
    assert restored.phase == "done"
    assert [e.round for e in restored.log] == [1, 2, 3, 4]
    # n0 and n1 resent their cached round 3 (no retraining); every node trained round 4.
    assert fed.trained["n0"] == trained_before["n0"] + 1
    assert fed.trained["n2"] == trained_before["n2"] + 2
    store.save(restored, {})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3, 4]
    assert [p.name for p in (tmp_path / "run" / "checkpoint").iterdir()] != []


def test_resume_keeps_the_server_momentum_so_the_next_step_is_the_same() -> None:
    cfg = replace(CFG, server_optimizer="fedavgm", server_momentum=0.5, train_rounds=3)
    fed = Federation(cfg)
    fed.start()
    while fed.server.closed_round < cfg.mask_rounds + 2:  # two momentum steps taken
        fed.advance(0.1)
    velocity = fed.server.weights.optimizer.state()
    assert velocity is not None and np.abs(velocity).max() > 0
    arrays, meta = fed.server.snapshot()
    restored = FederationServer.restore(cfg, arrays, json.loads(json.dumps(meta)))
    np.testing.assert_array_equal(restored.weights.optimizer.state(), velocity)
    average = fed.server.global_values + 0.01
    np.testing.assert_array_equal(restored.weights.step_towards(average),
                                  fed.server.weights.step_towards(average))
    with pytest.raises(ModelError, match="server optimizer"):
        FederationServer.restore(cfg, {**arrays, "server_state": velocity[:-1]}, meta)


def test_restore_refuses_another_model_and_resumes_a_finished_run_as_done() -> None:
    fed = Federation()
    fed.start()
    arrays, meta = fed.server.snapshot()
    with pytest.raises(ModelError, match="another model"):
        FederationServer.restore(replace(CFG, granularity="filter"), arrays, meta)
    done = FederationServer.restore(CFG, arrays, json.loads(json.dumps(meta)))
    assert done.phase == "done" and done.closed_round == 4
    with pytest.raises(ModelError):
        FederationServer.restore(CFG, {"mask": arrays["mask"][:-1], "history": arrays["history"]},
                                 meta)


def test_new_session_asks_nodes_to_resend_without_retraining() -> None:
    fed = Federation()
    fed.muted.add("n2")
    fed.start()
    server = fed.server
    answered_before = set(server.answered)
    trained_before = dict(fed.trained)
    old_session = server.session
    fed._send(server.new_session())
    fed.broker.pump()
    assert server.session != old_session
    assert server.dropped["duplicate"] == len(answered_before)
    assert fed.trained == trained_before


def test_run_store_refuses_a_changed_config(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.write_config(CFG)
    store.check_config(replace(CFG, round_timeout=99.0, quorum=1))  # operational: allowed
    with pytest.raises(Exception, match="final_sparsity"):
        store.check_config(replace(CFG, final_sparsity=0.7))


def test_nodes_going_offline_do_not_close_a_round_below_quorum() -> None:
    """A broker restart sends every last will: with one answer in and the others
    offline, nobody is left to wait for, but one answer is below the quorum of 2."""
    fed = Federation()
    fed.muted |= {"n1", "n2"}
    fed.start()
    assert fed.server.answered == {"n0"}
    for node_id in ("n1", "n2"):
        fed.broker.publish(Publish(topics.node_topic("t", node_id, "status"), b"offline"))
    fed.broker.pump()
    assert fed.server.round == 1 and not fed.server.log
    fed.advance(CFG.round_timeout + 0.1)  # deadline below quorum: a retry, not a close
    assert not fed.server.log and fed.server.current.attempts == 1
    fed.muted.clear()
    for node in fed.nodes[1:]:
        fed.broker.publish(node.hello())
    fed._send(fed.server.start())  # they came back (and missed the retained catch-up)
    fed.broker.pump()
    assert fed.server.log and len(fed.server.log[0].participants) >= CFG.quorum


def test_a_claimed_sample_count_is_clamped_to_max_samples() -> None:
    from mpfl.wire.protocol import Hello

    server = FederationServer(replace(CFG, max_samples=1000), None, Clock())
    status = topics.node_topic("t", "ghost", "status")
    server.handle(status, Hello("ghost", 0xFFFF_FFFF).encode())
    server.handle(topics.node_topic("t", "n0", "status"), Hello("n0", 50).encode())
    assert server.nodes["ghost"].samples == 1000 and server.nodes["n0"].samples == 50
    assert server.clamped_hellos == 1 and not server.dropped


def test_an_update_weighs_at_most_the_count_its_hello_claimed() -> None:
    from mpfl.federation.rounds import OpenRound
    from mpfl.federation.traffic import ByteWindow
    from mpfl.maths.aggregate import WeightedAverager
    from mpfl.maths.votes import VoteAccumulator

    fp = bytes(8)
    rnd = OpenRound(frozenset({Kind.UPDATE}), {"a", "b"}, VoteAccumulator(1),
                    WeightedAverager(4), np.ones(1, bool), [4], None, 0.0, 1.0,
                    ByteWindow(0, 0))
    for node, value, claimed in (("a", 0.0, 10), ("b", 1.0, 0xFFFF_FFFF)):
        codec, body = encode_values(np.full(4, value, np.float32), [4], "fp32")
        env = Envelope(Kind.UPDATE, 1, fp, node, codec, encode_update(claimed, body))
        assert rnd.take(env, Kind.UPDATE, 1.0, max_samples=10) is None
    np.testing.assert_allclose(rnd.values.result(), 0.5)


def test_node_table_keeps_the_online_ids_beside_the_nodes() -> None:
    table = NodeTable({"a": NodeInfo(10), "b": NodeInfo(20, online=False)})
    assert table.online == {"a"}
    table["b"] = NodeInfo(20)  # a fresh hello
    table.leave("a")
    table.leave("ghost")  # never seen: nothing to do
    assert table.online == {"b"} and not table["a"].online and set(table) == {"a", "b"}


def test_a_round_awaits_only_expected_online_nodes_that_have_not_answered() -> None:
    cfg = replace(CFG, federation="aw", mask_rounds=0, train_rounds=1, quorum=3)
    server = FederationServer(cfg)
    for i in range(3):
        server.handle(topics.node_topic("aw", f"n{i}", "status"), Hello(f"n{i}", 5).encode())
    current = server.current
    assert current is not None and current.pending == {"n0", "n1", "n2"}
    base, sizes = server.weights.published()
    codec, body = encode_values(base, sizes, "fp32")
    env = Envelope(Kind.UPDATE, 1, server.unit_map.fingerprint, "n0", codec, encode_update(5, body))
    server.handle(topics.node_topic("aw", "n0", "update"), encode_envelope(env))
    assert current.pending == {"n1", "n2"} and current.awaits_anyone({"n1", "n2"})
    assert not current.awaits_anyone({"n0"})  # answered, or offline: nobody to wait for
    assert current.waiting_for({"n0", "n2"}) == {"n2"}
