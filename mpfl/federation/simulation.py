"""Run a whole federation in one process, over the in-memory transport.

The coordinator and node logic are the same objects the MQTT services drive, behind the
same signing gates, so results and byte counts match a real deployment; only the network
is missing. ``signed=True`` makes throwaway keys and signs every message as a keyed fleet
does; unsigned, nothing is said about it (no broker here, so nobody to impersonate anyone).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast

from mpfl.config.settings import FederationConfig
from mpfl.errors import FederationError
from mpfl.federation.corruption import CorruptedNode
from mpfl.federation.evaluation import Evaluator
from mpfl.federation.gate import CoordinatorKeys, NodeGate, NodeKeys, ServerGate
from mpfl.federation.metrics import RoundLog
from mpfl.federation.node import FederationNode
from mpfl.federation.region import RegionalServer
from mpfl.federation.region_gate import RegionGate, RegionKeys
from mpfl.federation.server import FederationServer
from mpfl.federation.transport import MemoryBroker
from mpfl.federation.watch import FederationView, FleetWatch
from mpfl.ml.data import Dataset
from mpfl.wire import topics
from mpfl.wire.protocol import Progress, Publish
from mpfl.wire.signing import Keyring, SigningKey


def _quiet(_line: str) -> None:
    pass


def run_in_process(
    cfg: FederationConfig,
    node_data: Sequence[Dataset],
    evaluate: Evaluator | None = None,
    on_round: Callable[[RoundLog], None] | None = None,
    signed: bool = False,
    corrupt: Mapping[int, str] | None = None,
    on_view: Callable[[FederationView], None] | None = None,
) -> FederationServer:
    """``evaluate`` scores the global weights after each averaging (None: no evaluation);
    ``on_round`` sees each round's record as it closes; ``corrupt`` maps a node index to
    how its uploads are corrupted (``mpfl.federation.corruption``: simulation only);
    ``on_view`` sees the federation after every message and every local epoch (a live
    view; the nodes' progress comes by callback, not over the in-memory broker)."""
    broker = MemoryBroker()
    server = FederationServer(cfg, evaluate)
    watch = FleetWatch()

    def show(node_id: str, activity: str, progress: Progress | None = None) -> None:
        if on_view is not None:
            watch.heard(node_id, activity, progress)
            on_view(watch.view(server))

    ids = [f"node-{i}" for i in range(len(node_data))]
    node_keys = {n: SigningKey.generate() for n in ids} if signed else {}
    coordinator_key = SigningKey.generate()
    enrolled = Keyring(None, {n: k.public_key for n, k in node_keys.items()})
    gate = ServerGate(server, CoordinatorKeys(coordinator_key, enrolled) if signed else None,
                      say=_quiet)

    def publish_all(messages: list[Publish]) -> None:
        for message in messages:
            broker.publish(message)

    def server_handler(topic: str, payload: bytes) -> None:
        step = gate.handle(topic, payload)
        if step.closed is not None and on_round is not None:
            on_round(step.closed)
        publish_all(step.publishes)
        parsed = topics.parse_node_topic(cfg.federation, topic)
        if parsed is not None and parsed[0] in server.nodes:
            show(*parsed)

    broker.subscribe(topics.nodes_filter(cfg.federation), server_handler)
    publish_all(gate.seal(server.start()))
    for i, (node_id, data) in enumerate(zip(ids, node_data, strict=True)):
        node = FederationNode(node_id, cfg.federation, data, seed=cfg.seed + i)
        if corrupt and i in corrupt:
            # Corrupted before it is signed, as a compromised device with its own key would.
            node = cast(FederationNode, CorruptedNode(node, corrupt[i], seed=cfg.seed + i))
        if on_view is not None:
            node.on_progress = lambda p, n=node_id: show(n, topics.NODE_PROGRESS, p)
        keys = NodeKeys(node_keys[node_id], coordinator_key.public_key) if signed else None
        node_gate = NodeGate(node, keys, say=_quiet)

        def node_handler(topic: str, payload: bytes, node_gate: NodeGate = node_gate) -> None:
            publish_all(node_gate.handle(topic, payload))

        broker.subscribe(topics.server_filter(cfg.federation), node_handler)
        publish_all(node_gate.on_connect())
    while not server.finished:
        if broker.pump() == 0:
            raise FederationError("the in-process federation stalled", round=server.round,
                                  phase=server.phase)
    broker.pump()
    server.require_success()
    return server


def publisher(broker: MemoryBroker) -> Callable[[list[Publish]], None]:
    def send(messages: list[Publish]) -> None:
        for message in messages:
            broker.publish(message)
    return send


def _bridge(to: MemoryBroker, retain_all: bool) -> Callable[[str, bytes], None]:
    """Forward to another broker as a bridge does: server topics are all retained, and of
    a region's own only its status is."""
    def forward(topic: str, payload: bytes) -> None:
        retain = retain_all or topic.endswith("/" + topics.NODE_STATUS)
        to.publish(Publish(topic, payload, retain=retain))
    return forward


def _node_handler(gate: NodeGate, send: Callable[[list[Publish]], None]
                  ) -> Callable[[str, bytes], None]:
    return lambda topic, payload: send(gate.handle(topic, payload))


def run_tiered_in_process(
    root_cfg: FederationConfig,
    region_cfg: FederationConfig,
    regions: Mapping[str, Sequence[Dataset]],
    signed: bool = False,
) -> tuple[FederationServer, dict[str, RegionalServer]]:
    """A root and one regional coordinator per entry of ``regions`` (name -> its nodes'
    data), each region on a broker of its own bridged to the root's as a mosquitto
    ``connection`` bridge is: the root's server topics down, ``nodes/<region>/#`` up. Nodes
    are numbered across regions in order (ids ``node-<i>``, seeds ``cfg.seed + i``) as in
    ``run_in_process``, so the same data gives the same nodes in both."""
    fed = root_cfg.federation
    root_broker = MemoryBroker()
    root = FederationServer(root_cfg)
    root_key = SigningKey.generate()
    region_keys = {name: SigningKey.generate() for name in regions} if signed else {}
    root_gate = ServerGate(root, CoordinatorKeys(root_key, Keyring(None, {
        name: key.public_key for name, key in region_keys.items()})) if signed else None,
        say=_quiet)

    to_root = publisher(root_broker)
    root_broker.subscribe(topics.nodes_filter(fed),
                          lambda t, p: to_root(root_gate.handle(t, p).publishes))
    to_root(root_gate.seal(root.start()))
    brokers = [root_broker]
    servers: dict[str, RegionalServer] = {}
    index = 0
    for name, node_data in regions.items():
        broker = MemoryBroker()
        brokers.append(broker)
        root_broker.subscribe(topics.server_filter(fed), _bridge(broker, retain_all=True))
        broker.subscribe(topics.node_filter(fed, name), _bridge(root_broker, retain_all=False))
        region = servers[name] = RegionalServer(region_cfg, name)
        node_keys = {f"node-{index + i}": SigningKey.generate()
                     for i in range(len(node_data))} if signed else {}
        gate = RegionGate(region, RegionKeys(region_keys[name], root_key.public_key, Keyring(
            None, {n: k.public_key for n, k in node_keys.items()})) if signed else None,
            say=_quiet)
        to_region = publisher(broker)

        def region_handler(topic: str, payload: bytes, gate: RegionGate = gate,
                           send: Callable[[list[Publish]], None] = to_region) -> None:
            opened = gate.open(topic, payload)
            send(gate.seal(gate.region.tick() if opened is None
                           else gate.region.handle(topic, opened)))

        broker.subscribe(topics.server_filter(fed), region_handler)
        broker.subscribe(topics.nodes_filter(fed), region_handler)
        for data in node_data:
            node_id = f"node-{index}"
            node = FederationNode(node_id, fed, data, seed=region_cfg.seed + index)
            keys = NodeKeys(node_keys[node_id], root_key.public_key) if signed else None
            node_gate = NodeGate(node, keys, say=_quiet)
            broker.subscribe(topics.server_filter(fed), _node_handler(node_gate, to_region))
            to_region(node_gate.on_connect())
            index += 1
    while not root.finished:
        if sum(b.pump() for b in brokers) == 0:
            raise FederationError("the in-process tiered federation stalled",
                                  round=root.round, phase=root.phase)
    while sum(b.pump() for b in brokers):
        pass
    root.require_success()
    return root, servers
