"""Regional coordinators over in-memory bridged brokers: the root's result equals a flat
federation's of the same nodes (mask identical, weights to float64 rounding: at most one
float32 ulp apart), a region that dies is a node that did not answer, and the rules whose
result needs every update at once are refused rather than approximated."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mpfl.config.settings import FederationConfig
from mpfl.errors import ConfigError
from mpfl.federation.node import FederationNode
from mpfl.federation.region import RegionalServer
from mpfl.federation.server import FederationServer
from mpfl.federation.simulation import run_in_process, run_tiered_in_process
from mpfl.federation.transport import MemoryBroker
from mpfl.ml.data import load_dataset
from mpfl.wire import Envelope, Kind, encode_envelope, topics
from mpfl.wire.partial import PartialAggregate, ValueSums, encode_partial
from mpfl.wire.protocol import OFFLINE, Publish

FED = "r"
CFG = FederationConfig(
    federation=FED, model="mlp", model_args={"image_size": 8, "hidden": [16]},
    granularity="weight", final_sparsity=0.5, mask_rounds=2, train_rounds=2,
    min_nodes=6, quorum=6, round_timeout=10.0, start_timeout=30.0, retries=1,
)
ROOT = replace(CFG, min_nodes=2, quorum=2)  # a region counts as one member at the root
REGION = replace(CFG, min_nodes=3, quorum=3)
N = 6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_nodes(cfg: FederationConfig) -> list[FederationNode]:
    train = load_dataset("digits", None, "train")
    return [FederationNode(f"n{i}", cfg.federation, train.subset(np.arange(i, 600, N)),
                           seed=i) for i in range(N)]


def attach(broker: MemoryBroker, node: FederationNode, muted: set[str]) -> None:
    def deliver(topic: str, payload: bytes) -> None:
        if node.node_id not in muted:
            for message in node.handle(topic, payload):
                broker.publish(message)
    broker.subscribe(topics.server_filter(FED), deliver)


class Flat:
    def __init__(self, cfg: FederationConfig = CFG) -> None:
        self.broker, self.clock = MemoryBroker(), Clock()
        self.server = FederationServer(cfg, None, self.clock)
        self.nodes = make_nodes(cfg)
        self.broker.subscribe(topics.nodes_filter(FED), lambda t, p: self._send(
            self.server.handle(t, p).publishes))
        for node in self.nodes:
            attach(self.broker, node, set())

    def _send(self, messages: list[Publish]) -> None:
        for message in messages:
            self.broker.publish(message)

    def run(self) -> FederationServer:
        self._send(self.server.start())
        for node in self.nodes:
            self.broker.publish(node.hello())
        self.broker.pump()
        return self.server


class Tiered:
    """A root broker and two regional brokers, each bridged like a mosquitto ``connection``:
    the root's server topics down, the region's own topics up."""

    def __init__(self, root_cfg: FederationConfig = ROOT,
                 region_cfg: FederationConfig = REGION) -> None:
        self.clock = Clock()
        self.root_broker = MemoryBroker()
        self.root = FederationServer(root_cfg, None, self.clock)
        self.root_cfg = root_cfg
        self.root_dies_after: int | None = None  # rounds closed before the root crashes
        self._subscribe_root(self.root)
        self.nodes = make_nodes(region_cfg)
        self.muted: set[str] = set()  # nodes and regions that crashed
        self.dies_after: dict[str, int] = {}  # region -> rounds the root closed before
        self.brokers: dict[str, MemoryBroker] = {}
        self.regions: dict[str, RegionalServer] = {}
        self.region_cfg = region_cfg
        for name, members in (("east", self.nodes[:3]), ("west", self.nodes[3:])):
            broker = MemoryBroker()
            self.brokers[name] = broker
            self.root_broker.subscribe(topics.server_filter(FED), lambda t, p, b=broker: (
                b.publish(Publish(t, p, retain=True))))
            broker.subscribe(topics.node_filter(FED, name), lambda t, p: self.root_broker.publish(
                Publish(t, p, retain=t.endswith("/status"))))
            self.start_region(name)
            for node in members:
                attach(broker, node, self.muted)

    def _subscribe_root(self, root: FederationServer) -> None:
        def to_root(t: str, p: bytes) -> None:
            if self.root_dies_after is not None and len(root.log) >= self.root_dies_after:
                return  # crashed: what reaches it now is lost
            if self.root is root:
                self._publish(self.root_broker, root.handle(t, p).publishes)
        self.root_broker.subscribe(topics.nodes_filter(FED), to_root)

    def restart_root(self) -> FederationServer:
        """The root resumes from its last checkpoint, in a new session."""
        arrays, meta = self.root.snapshot()
        self.root = FederationServer.restore(self.root_cfg, arrays, meta, None, self.clock)
        self.root_dies_after = None
        self._subscribe_root(self.root)
        self._publish(self.root_broker, self.root.start())
        self.pump()
        return self.root

    def start_region(self, name: str) -> None:
        """A regional coordinator process on ``name``'s broker (again, after a crash)."""
        broker, region = self.brokers[name], RegionalServer(self.region_cfg, name, self.clock)
        self.regions[name] = region
        self.muted.discard(name)

        def to_region(t: str, p: bytes) -> None:
            if len(self.root.log) >= self.dies_after.get(name, 1 << 30):
                self.muted.add(name)
                del self.dies_after[name]
            if self.regions[name] is region and name not in self.muted:
                self._publish(broker, region.handle(t, p))
        broker.subscribe(topics.server_filter(FED), to_region)
        broker.subscribe(topics.nodes_filter(FED), to_region)

    def _publish(self, broker: MemoryBroker, messages: list[Publish]) -> None:
        for message in messages:
            broker.publish(message)

    def pump(self) -> None:
        while sum(b.pump() for b in (self.root_broker, *self.brokers.values())):
            pass

    def run(self) -> FederationServer:
        self._publish(self.root_broker, self.root.start())
        for name, broker in self.brokers.items():
            for node in self.nodes[:3] if name == "east" else self.nodes[3:]:
                broker.publish(node.hello())
        self.pump()
        return self.root

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        for name, region in self.regions.items():
            if name not in self.muted:
                self._publish(self.brokers[name], region.tick())
        self._publish(self.root_broker, self.root.tick().publishes)
        self.pump()


def assert_same_result(flat: FederationServer, root: FederationServer) -> None:
    assert flat.phase == root.phase == "done"
    assert np.array_equal(flat.mask, root.mask)
    a, b = flat.global_values, root.global_values
    assert a is not None and b is not None
    # Both sum the same float64 products in another order: at most n * 2^-52 * max |v_i|
    # apart (under 1e-12 for these weights), so the float32 averages differ by at most one
    # float32 ulp of the value plus that (most are bit-identical).
    assert np.abs(a).max() < 100.0
    assert np.all(np.abs(a - b) <= np.spacing(np.abs(a)) + 1e-12)


@pytest.mark.parametrize("changes", [
    {},
    {"vote_weighting": "samples"},
    {"mode": "joint", "delta": True, "value_codec": "int8"},
])
def test_two_regions_give_the_flat_result(changes: dict[str, object]) -> None:
    flat = Flat(replace(CFG, **changes)).run()
    tiered = Tiered(replace(ROOT, **changes), replace(REGION, **changes))
    root = tiered.run()
    assert_same_result(flat, root)
    assert [r.participants for r in root.log] == [["east", "west"]] * 4
    # the dense equivalent counts the six nodes behind the two partials
    assert [r.dense_uplink_bytes for r in root.log] == [r.dense_uplink_bytes for r in flat.log]
    for region in tiered.regions.values():
        assert [r.round for r in region.log] == [1, 2, 3, 4]
        assert all(len(r.participants) == 3 for r in region.log)
    # The root's uplink is the two partials; each region's is its three nodes' uploads.
    partials = sum(r.partial_bytes for reg in tiered.regions.values() for r in reg.log)
    assert sum(r.uplink_bytes for r in root.log) == partials
    node_up = sum(r.node_uplink_bytes for reg in tiered.regions.values() for r in reg.log)
    assert node_up == sum(n.sent_bytes for n in tiered.nodes)


def test_a_dead_region_is_a_node_that_did_not_answer() -> None:
    tiered = Tiered(replace(ROOT, quorum=1))
    tiered.dies_after["west"] = 1  # the regional coordinator crashes after round 1
    root = tiered.run()
    assert [r.participants for r in root.log] == [["east", "west"]]
    tiered.advance(ROOT.round_timeout - 0.5)
    assert len(root.log) == 1  # waiting for west until the deadline
    tiered.advance(1.0)  # the root's deadline: closes with its quorum of one
    assert root.log[1].participants == ["east"] and root.round == 3
    # Its last will, carried up the bridge: the root stops waiting for it at once.
    tiered.root_broker.publish(Publish(topics.node_topic(FED, "west", topics.NODE_STATUS),
                                       OFFLINE, retain=True))
    tiered.pump()
    assert root.phase == "done"
    assert [r.participants for r in root.log[2:]] == [["east"]] * 2


def test_a_restarted_region_joins_the_next_round() -> None:
    tiered = Tiered(replace(ROOT, quorum=1))
    tiered.dies_after["west"] = 1
    root = tiered.run()
    assert root.round == 2 and len(root.log) == 1  # west's nodes uploaded to a dead region
    tiered.start_region("west")  # keeps nothing: follows the root's retained round 2
    tiered.pump()
    assert len(root.log) == 1  # round 2's uploads are gone with the old process
    tiered.advance(ROOT.round_timeout + 0.1)
    assert root.phase == "done"
    assert [r.participants for r in root.log] == [
        ["east", "west"], ["east"], ["east", "west"], ["east", "west"]]


def test_a_restarted_root_resumes_with_its_regions_and_gives_the_flat_result() -> None:
    flat = Flat().run()
    tiered = Tiered()
    tiered.root_dies_after = 2  # the root crashes after closing round 2
    stalled = tiered.run()
    assert stalled.round == 3 and len(stalled.log) == 2
    root = tiered.restart_root()  # the regions re-announce; nodes resend their cached uploads
    assert root.phase == "done" and root.session != stalled.session
    assert [r.participants for r in root.log] == [["east", "west"]] * 4
    assert_same_result(flat, root)
    assert all(n.last_metrics["round"] == 4 for n in tiered.nodes)


def test_a_region_below_its_quorum_sends_nothing_before_its_deadline() -> None:
    tiered = Tiered()
    tiered.muted.add("n5")
    root = tiered.run()
    assert root.round == 1 and not root.log  # west waits for n5
    tiered.advance(REGION.round_timeout * 0.95)  # west's deadline: below its quorum of 3
    assert not tiered.regions["west"].log
    tiered.advance(ROOT.round_timeout)
    assert root.current is not None and root.current.attempts == 1  # the root retried


@pytest.mark.parametrize("changes", [{"aggregator": "median"},
                                     {"aggregator": "trimmed-mean"},
                                     {"aggregator": "norm-clip"},
                                     {"vote_agreement": True}])
def test_a_region_refuses_rules_that_do_not_add_up(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="cannot run"):
        RegionalServer(replace(REGION, **changes), "east")


def test_the_root_refuses_a_partial_it_cannot_merge_exactly() -> None:
    tiered = Tiered(replace(ROOT, aggregator="median", mask_rounds=0))
    root = tiered.run()
    assert root.round == 1 and not root.log
    assert root.dropped["not-mergeable"] == 2


def test_forged_partials_are_dropped_by_reason() -> None:
    tiered = Tiered()
    tiered.muted.add("n5")  # keeps round 1 open: west waits for n5
    root = tiered.run()
    assert root.round == 1 and root.answered == {"east"}
    fp = root.unit_map.fingerprint
    west = topics.node_topic(FED, "west", topics.NODE_PARTIAL)
    values_only = encode_partial(PartialAggregate(
        root.unit_map.n_units, None, ValueSums(1, 1.0, np.zeros(root.unit_map.n_values))))
    forged = [
        (west, b"junk"),  # not an envelope
        (west, encode_envelope(Envelope(Kind.PARTIAL, 1, fp, "west", 0, b"\x01" * 40))),
        (west, encode_envelope(Envelope(Kind.PARTIAL, 1, fp, "west", 0, values_only))),
        (topics.node_topic(FED, "east", topics.NODE_PARTIAL),  # east already answered
         encode_envelope(Envelope(Kind.PARTIAL, 1, fp, "east", 0, values_only))),
        (topics.node_topic(FED, "ghost", topics.NODE_PARTIAL), b"x"),
    ]
    for topic, payload in forged:
        tiered.root_broker.publish(Publish(topic, payload))
    tiered.pump()
    assert root.round == 1 and root.answered == {"east"}
    assert dict(root.current.dropped) == {"malformed": 2, "partial-mismatch": 1,
                                          "duplicate": 1, "unknown-node": 1}


def test_a_signed_tiered_simulation_gives_the_flat_result() -> None:
    train = load_dataset("digits", None, "train")
    data = [train.subset(np.arange(i, 400, 4)) for i in range(4)]
    flat = run_in_process(replace(CFG, min_nodes=4, quorum=4), data, signed=True)
    root, regions = run_tiered_in_process(ROOT, replace(REGION, min_nodes=2, quorum=2),
                                          {"east": data[:2], "west": data[2:]}, signed=True)
    assert_same_result(flat, root)
    assert not root.dropped and not any(r.dropped for r in regions.values())
    assert [len(r.participants) for r in regions["west"].log] == [2, 2, 2, 2]
