"""A hardware profile changes what a node does: threads, batch size, or a refusal."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from edge_node.cli import main as edge_main
from hardware import get_profile, memory_guard
from mpfl.config.settings import FederationConfig
from mpfl.errors import HardwareError
from mpfl.federation.node import FederationNode
from mpfl.federation.server import FederationServer
from mpfl.federation.transport import MemoryBroker
from mpfl.ml.data import load_dataset
from mpfl.wire import topics

CFG = FederationConfig(federation="hw", model="mlp", model_args={"image_size": 8},
                       mask_rounds=1, train_rounds=0, batch_size=64, min_nodes=1)


def _first_round(fit_batch: object) -> FederationNode:
    data = load_dataset("digits", None, "train")
    broker = MemoryBroker()
    server = FederationServer(CFG)
    node = FederationNode("n0", "hw", data, fit_batch=fit_batch)  # type: ignore[arg-type]
    broker.subscribe(topics.nodes_filter("hw"),
                     lambda t, p: [broker.publish(m) for m in server.handle(t, p).publishes])
    broker.subscribe(topics.server_filter("hw"), lambda t, p: [broker.publish(m)
                                                               for m in node.handle(t, p)])
    for message in [*server.start(), node.hello()]:
        broker.publish(message)
    broker.pump()
    return node


def test_memory_guard_sets_the_batch_size_the_node_trains_with() -> None:
    asked: list[tuple[int, int]] = []

    def fit(parameters: int, wanted: int) -> int:
        asked.append((parameters, wanted))
        return 8

    node = _first_round(fit)
    assert asked and asked[0][1] == CFG.batch_size
    assert node.batch_size == 8
    assert node.finished is not None and node.finished.round == 1


def test_a_model_the_budget_cannot_hold_is_refused() -> None:
    tiny = dataclasses.replace(get_profile("rpi3b+"), train_memory_budget_mb=1)

    def fit(parameters: int, wanted: int) -> int:
        return memory_guard(tiny, parameters, (1, 8, 8), wanted)

    with pytest.raises(HardwareError, match="even with batch size 1"):
        _first_round(fit)


def test_edge_cli_refuses_an_inference_only_board_in_one_line() -> None:
    result = CliRunner().invoke(edge_main, ["start", "--broker", "mqtt://127.0.0.1:1",
                                            "--federation", "f", "--node-id", "pi-01",
                                            "--dataset", "digits", "--hardware", "rpi-zero2w"])
    assert result.exit_code == HardwareError.exit_code
    assert result.output.count("\n") == 1 and "rpi-zero2w" in result.output


def test_edge_cli_lists_known_profiles_for_an_unknown_one() -> None:
    result = CliRunner().invoke(edge_main, ["start", "--broker", "mqtt://127.0.0.1:1",
                                            "--federation", "f", "--node-id", "pi-01",
                                            "--dataset", "digits", "--hardware", "pi99"])
    assert result.exit_code == HardwareError.exit_code
    assert "rpi4" in result.output
