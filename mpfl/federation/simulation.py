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
