"""The coordinator service's rule: a closed round is durable before the next is announced.

The service runs over the in-memory broker here (a fake transport in place of MQTT), so
every publish can be checked against what is on disk at that moment.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from coordinator.service import CoordinatorService, ServiceOptions
from mpfl.config.settings import FederationConfig
from mpfl.federation.node import FederationNode
from mpfl.federation.transport import MemoryBroker
from mpfl.ml.data import load_dataset
from mpfl.wire import topics
from mpfl.wire.protocol import Publish, decode_json

CFG = FederationConfig(
    federation="svc", model="mlp", model_args={"image_size": 8, "hidden": [16]},
    granularity="weight", final_sparsity=0.5, mask_rounds=2, train_rounds=2,
    min_nodes=2, quorum=2,
)


class CheckingTransport:
    """Publishes into a MemoryBroker and notes, for each state document, the round it
    announces and the last round the checkpoint on disk holds at that moment."""

    def __init__(self, broker: MemoryBroker, run_dir: Path) -> None:
        self.broker = broker
        self.state_path = run_dir / "checkpoint" / "state.json"
        self.announced: list[tuple[str, int, int]] = []  # (phase, round, closed on disk)

    def publish(self, message: Publish) -> None:
        if message.topic == topics.server_topic(CFG.federation, topics.SERVER_STATE):
            doc = decode_json(message.payload, "state")
            on_disk = (json.loads(self.state_path.read_text())["closed_round"]
                       if self.state_path.is_file() else 0)
            self.announced.append((doc["phase"], doc["round"], on_disk))
        self.broker.publish(message)


def test_a_closed_round_is_checkpointed_before_the_next_round_is_announced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
    service = CoordinatorService(CFG, ServiceOptions(run_dir))
    broker = MemoryBroker()
    transport = CheckingTransport(broker, run_dir)
    service.transport = transport  # type: ignore[assignment]
    server = service.server = service._make_server()
    broker.subscribe(topics.nodes_filter(CFG.federation), service._on_message)
    train = load_dataset("digits", None, "train")
    service._publish_all(server.start())
    for i in range(2):
        node = FederationNode(f"n{i}", CFG.federation, train.subset(np.arange(i, 200, 2)),
                              seed=i)
        broker.subscribe(topics.server_filter(CFG.federation),
                         lambda t, p, node=node: [broker.publish(m) for m in node.handle(t, p)])
        broker.publish(node.hello())
    broker.pump()
    assert server.phase == "done" and server.closed_round == 4
    opened = [(r, on_disk) for phase, r, on_disk in transport.announced
              if phase in ("mask", "train")]
    assert [r for r, _ in opened] == [1, 2, 3, 4]
    assert all(on_disk == r - 1 for r, on_disk in opened)  # never a round ahead of the disk
    assert transport.announced[-1] == ("done", 4, 4)
    lines = [r.getMessage() for r in caplog.records if r.name == "coordinator.service"]
    assert sum(line.startswith("round ") for line in lines) == 4
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in metrics] == [1, 2, 3, 4]
    assert all(json.loads(line)["wire"] == {"sent": {}, "received": {}} for line in metrics)
