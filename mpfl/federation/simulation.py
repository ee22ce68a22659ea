"""Run a whole federation in one process, over the in-memory transport.

The coordinator and node logic are the same objects the MQTT services drive, so results
and byte counts match a real deployment; only the network is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from mpfl.config.settings import FederationConfig
from mpfl.errors import FederationError
from mpfl.federation.corruption import CorruptedNode
from mpfl.federation.evaluation import Evaluator
from mpfl.federation.metrics import RoundLog
from mpfl.federation.node import FederationNode
from mpfl.federation.server import FederationServer
from mpfl.federation.transport import MemoryBroker
from mpfl.ml.data import Dataset
from mpfl.wire import topics
from mpfl.wire.protocol import Publish


def run_in_process(
    cfg: FederationConfig,
    node_data: Sequence[Dataset],
    evaluate: Evaluator | None = None,
    on_round: Callable[[RoundLog], None] | None = None,
    corrupt: Mapping[int, str] | None = None,
) -> FederationServer:
    """``evaluate`` scores the global weights after each averaging (None: no evaluation);
    ``on_round`` sees each round's record as it closes; ``corrupt`` maps a node index to
    how its uploads are corrupted (``mpfl.federation.corruption``: simulation only)."""
    broker = MemoryBroker()
    server = FederationServer(cfg, evaluate)

    def publish_all(messages: list[Publish]) -> None:
        for message in messages:
            broker.publish(message)

    def server_handler(topic: str, payload: bytes) -> None:
        step = server.handle(topic, payload)
        if step.closed is not None and on_round is not None:
            on_round(step.closed)
        publish_all(step.publishes)

    broker.subscribe(topics.nodes_filter(cfg.federation), server_handler)
    publish_all(server.start())
    for i, data in enumerate(node_data):
        honest = FederationNode(f"node-{i}", cfg.federation, data, seed=cfg.seed + i)
        node: FederationNode | CorruptedNode = honest
        if corrupt and i in corrupt:
            node = CorruptedNode(honest, corrupt[i], seed=cfg.seed + i)

        def node_handler(
            topic: str, payload: bytes, node: FederationNode | CorruptedNode = node
        ) -> None:
            publish_all(node.handle(topic, payload))

        broker.subscribe(topics.server_filter(cfg.federation), node_handler)
        broker.publish(node.hello())
    while not server.finished:
        if broker.pump() == 0:
            raise FederationError("the in-process federation stalled", round=server.round,
                                  phase=server.phase)
    broker.pump()
    server.require_success()
    return server
