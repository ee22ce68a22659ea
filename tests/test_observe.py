"""The pieces an operator watches, without a broker: log renderings, the typed view of a
federation and the events between two views, the live view's text, the progress topic,
and the Prometheus names the Grafana dashboard may use."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from coordinator.live import MAX_NODE_ROWS, render
from coordinator.metrics import CoordinatorMetrics
from coordinator.service import CoordinatorService, ServiceOptions
from coordinator.watching import QUIET_S, Watching, WatchOptions, read_status
from mpfl.choices import LogFormat, Phase
from mpfl.config.settings import FederationConfig
from mpfl.errors import DocumentError
from mpfl.federation.gate import CoordinatorKeys, NodeGate, NodeKeys
from mpfl.federation.node import FederationNode
from mpfl.federation.server import FederationServer
from mpfl.federation.simulation import run_in_process
from mpfl.federation.transport import MemoryBroker
from mpfl.federation.watch import Event, FederationView, FleetWatch, events, waiting
from mpfl.logs import fields, replay, setup_logging
from mpfl.ml.data import load_dataset
from mpfl.wire import topics
from mpfl.wire.protocol import Hello, Progress
from mpfl.wire.seal import Sealer
from mpfl.wire.signing import Keyring, SigningKey

CFG = FederationConfig(federation="watch", model="mlp",
                       model_args={"image_size": 8, "hidden": [16]}, granularity="weight",
                       final_sparsity=0.5, mask_rounds=1, train_rounds=1, local_epochs=2,
                       min_nodes=2, quorum=2).validate()
DASHBOARD = Path(__file__).resolve().parents[1] / "coordinator" / "deploy" / \
    "grafana-dashboard.json"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writing to a string; restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


# -- logging ------------------------------------------------------------------------------


def test_json_lines_carry_level_logger_message_and_the_event_fields(
    captured: io.StringIO,
) -> None:
    setup_logging(LogFormat.JSON, 0, stream=captured)
    log = logging.getLogger("coordinator.service")
    log.info("round 1/4 closed", extra=fields(event="round-closed", round=1, sparsity=0.5))
    log.debug("not at the default level")
    log.warning("a drop")
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["round 1/4 closed", "a drop"]
    first = lines[0]
    assert first["level"] == "info" and first["logger"] == "coordinator.service"
    assert first["event"] == "round-closed" and first["round"] == 1 and first["sparsity"] == 0.5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])


@pytest.mark.parametrize(("verbosity", "shown"), [(-1, ["w"]), (0, ["i", "w"]),
                                                  (1, ["d", "i", "w"])])
def test_quiet_and_verbose_choose_the_level(captured: io.StringIO, verbosity: int,
                                            shown: list[str]) -> None:
    setup_logging(LogFormat.TEXT, verbosity, stream=captured)
    log = logging.getLogger("edge_node.agent")
    log.debug("d")
    log.info("i")
    log.warning("w")
    lines = captured.getvalue().splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == shown
    assert all(re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z (DEBUG|INFO|WARNING) +edge_node.agent: ",
                        line) for line in lines)


def test_a_childs_json_line_is_logged_again_as_its_own_record(captured: io.StringIO) -> None:
    setup_logging(LogFormat.JSON, 0, stream=captured)
    replay(json.dumps({"time": "t", "level": "warning", "logger": "coordinator.service",
                       "message": "stopped", "event": "x", "round": 3}), "coordinator")
    replay(json.dumps({"level": "debug", "logger": "c", "message": "hidden"}), "coordinator")
    replay("Traceback (most recent call last):", "coordinator")
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert lines[0]["logger"] == "coordinator.service" and lines[0]["level"] == "warning"
    assert lines[0]["message"] == "stopped" and lines[0]["round"] == 3
    assert lines[1]["logger"] == "coordinator" and lines[1]["level"] == "warning"
    assert lines[1]["message"].startswith("Traceback")
    assert len(lines) == 2  # the debug line stays below the level


# -- the view of a federation ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fleet(clock: Clock) -> tuple[FederationServer, FleetWatch, list[FederationNode]]:
    train = load_dataset("digits", None, "train")
    server = FederationServer(CFG, clock=clock)
    nodes = [FederationNode(f"n{i}", CFG.federation, train.subset(np.arange(i, 120, 2)),
                            seed=i) for i in range(2)]
    return server, FleetWatch(clock), nodes


def test_the_view_follows_a_round_and_names_its_events(one_torch_thread: None) -> None:
    clock = Clock()
    server, watch, nodes = _fleet(clock)
    before = watch.view(server)
    assert before.phase == Phase.WAITING and before.nodes == () and before.deadline == 0.0
    for node in nodes:
        server.handle(topics.node_topic(CFG.federation, node.node_id, topics.NODE_STATUS),
                      node.hello().payload)
        watch.heard(node.node_id, topics.NODE_STATUS)
    opened = watch.view(server)
    assert (opened.phase, opened.round, opened.online, opened.answered) == (Phase.MASK, 1, 2, 0)
    assert opened.seconds_left(clock.now + 20) == pytest.approx(CFG.round_timeout - 20)
    assert [e.name for e in events(before, opened)] == ["node-online", "node-online",
                                                        "round-opened"]
    watch.heard("n0", topics.NODE_PROGRESS, Progress(1, 1, 2))
    training = watch.view(server)
    n0 = training.nodes[0]
    assert (n0.activity, n0.epoch, n0.epochs, n0.training_in(1)) == ("progress", 1, 2, True)
    clock.now += CFG.round_timeout + 1  # past the deadline with nobody: a retry, both late
    server.tick()
    late = watch.view(server)
    assert late.late == 2
    assert [e.name for e in events(training, late)] == ["node-late", "node-late"]
    assert FederationView.decode(late.encode()) == late  # the status file's round trip


def test_a_status_file_that_is_not_a_view_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    assert read_status(path) is None
    path.write_text('{"phase": "mask"}')
    assert read_status(path) is None
    with pytest.raises(DocumentError):
        FederationView.decode(b'{"phase": "mask"}')


def test_the_live_view_shows_every_field(one_torch_thread: None) -> None:
    clock = Clock()
    server, watch, nodes = _fleet(clock)
    for node in nodes:
        server.handle(topics.node_topic(CFG.federation, node.node_id, topics.NODE_STATUS),
                      node.hello().payload)
        watch.heard(node.node_id, "status")
    watch.heard("n1", topics.NODE_PROGRESS, Progress(1, 1, 2))
    console = Console(file=io.StringIO(), width=110, color_system=None)
    console.print(render(watch.view(server), now=clock.now + 30))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "federation watch  phase mask  round 1/2  deadline in 90s" in text
    assert "nodes 2 online, 0 answered, 0 late  sparsity 0.0% (target 50.0%)  accuracy -" in text
    assert re.search(r"n0\s+waiting\s+status\s+30s ago", text)
    assert re.search(r"n1\s+training\s+progress\s+30s ago\s+#####\.\.\.\.\. 1/2", text)
    for heading in ("this round", "total", "dense fp32", "saved", "up", "down"):
        assert heading in text


# -- the progress topic -------------------------------------------------------------------


def test_progress_is_a_strict_document() -> None:
    assert Progress.decode(Progress(3, 1, 2).encode()) == Progress(3, 1, 2)
    for bad in (b'{"round": 3, "epoch": 3, "epochs": 2}', b'{"round": 0, "epoch": 0, '
                b'"epochs": 2}', b'{"round": 1, "epoch": 0, "epochs": 2, "x": 1}', b"[]"):
        with pytest.raises(DocumentError):
            Progress.decode(bad)


def test_a_node_reports_each_epoch_signed_and_the_coordinator_takes_only_verified_ones(
    tmp_path: Path, one_torch_thread: None,
) -> None:
    node_key, coordinator_key, stranger = (SigningKey.generate() for _ in range(3))
    keys = CoordinatorKeys(coordinator_key, Keyring(None, {"n0": node_key.public_key}))
    service = CoordinatorService(CFG, ServiceOptions(tmp_path, keys=keys, watch=WatchOptions()))
    server = service.server = service._make_server()
    broker = MemoryBroker()
    service.transport = broker  # type: ignore[assignment]  # publish() is all it needs
    sent: list[Progress] = []
    train = load_dataset("digits", None, "train")
    node = FederationNode("n0", CFG.federation, train.subset(np.arange(60)))
    gate = NodeGate(node, NodeKeys(node_key, coordinator_key.public_key))

    def report(progress: Progress) -> None:
        sent.append(progress)
        broker.publish(gate.seal(node.progress_message(progress)))

    node.on_progress = report
    broker.subscribe(topics.nodes_filter(CFG.federation), service._on_message)
    broker.subscribe(topics.server_filter(CFG.federation),
                     lambda t, p: [broker.publish(m) for m in gate.handle(t, p)])
    service._publish_all(server.start())
    server.handle(topics.node_topic(CFG.federation, "n1", topics.NODE_STATUS),
                  Hello("n1", 10).encode())  # a second node, so round 1 stays open
    broker.pump()
    assert sent == [Progress(1, 0, 2), Progress(1, 1, 2), Progress(1, 2, 2)]
    n0 = service.watching.fleet.view(server).nodes[0]
    assert (n0.progress_round, n0.epoch, n0.epochs) == (1, 2, 2)
    forged = Sealer(stranger, "n0", server.session).seal(node.progress_message(Progress(1, 0, 2)))
    service._on_message(forged.topic, forged.payload)
    assert service.watching.fleet.view(server).nodes[0].epoch == 2  # unchanged
    assert sum(server.dropped.values()) == 1


# -- Prometheus names and the Grafana dashboard ----------------------------------------------


def _exported_names() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "info": ("_info",), "gauge": ("",)}
    registry = CoordinatorMetrics("f").registry
    return {family.name + suffix for family in registry.collect()
            for suffix in suffixes[family.type]}


def test_every_dashboard_query_uses_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {name for expr in exprs for name in re.findall(r"mpfl_\w+", expr)}
    exported = _exported_names()
    assert used and used <= exported, used - exported
    # and every exported series has a place on the dashboard
    assert {n.removesuffix("_bucket") for n in exported if not n.endswith(("_sum", "_count"))} \
        <= {n.removesuffix("_bucket") for n in used}


def test_the_in_process_federation_hands_its_views_to_a_live_view(
    one_torch_thread: None,
) -> None:
    train = load_dataset("digits", None, "train")
    views: list[FederationView] = []
    run_in_process(CFG, [train.subset(np.arange(i, 200, 2)) for i in range(2)],
                   signed=True, on_view=views.append)
    epochs = {(n.node_id, n.progress_round, n.epoch) for v in views for n in v.nodes}
    assert {(f"node-{i}", t, e) for i in range(2) for t in (1, 2) for e in range(3)} <= epochs
    assert views[-1].phase == Phase.DONE and views[-1].rounds_closed == 2
    assert max(v.answered for v in views) == 1  # the second answer closes the round at once


def test_a_large_fleet_shows_the_nodes_needing_attention_and_counts_the_rest(
    one_torch_thread: None,
) -> None:
    clock = Clock()
    server, watch, _ = _fleet(clock)
    for i in range(40):
        server.handle(topics.node_topic(CFG.federation, f"p{i:02d}", topics.NODE_STATUS),
                      Hello(f"p{i:02d}", 10).encode())
    server.handle(topics.node_topic(CFG.federation, "p07", topics.NODE_STATUS), b"offline")
    console = Console(file=io.StringIO(), width=110, color_system=None)
    console.print(render(watch.view(server), now=clock.now))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    rows = re.findall(r"^p\d\d ", text, flags=re.MULTILINE)
    assert len(rows) == MAX_NODE_ROWS - 1
    assert re.search(r"^p07\s+offline", text, flags=re.MULTILINE)  # attention first
    assert f"... and {40 - MAX_NODE_ROWS + 1} more: " in text


def test_a_quiet_stretch_gets_one_line_saying_what_the_round_waits_for(
    one_torch_thread: None, caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    server, watch, nodes = _fleet(clock)
    assert waiting(watch.view(server)) == Event(
        "waiting", "waiting for nodes: 0 online", {"online": 0})
    for node in nodes:
        server.handle(topics.node_topic(CFG.federation, node.node_id, topics.NODE_STATUS),
                      node.hello().payload)
    watch.heard("n0", topics.NODE_PROGRESS, Progress(1, 1, 2))
    quiet = waiting(watch.view(server))
    assert quiet is not None and quiet.message == (
        "round 1: 0/2 answered; waiting for n0 (epoch 1/2), n1; deadline in 120s")
    watching = Watching(WatchOptions(), CFG.federation)
    watching.fleet = watch
    caplog.set_level(logging.INFO, logger="coordinator.watching")
    watching.observe(server, None, force=True)
    assert not any(r.getMessage().startswith("round 1: 0/2") for r in caplog.records)
    watching._said -= QUIET_S  # thirty seconds without a line
    watching.observe(server, None, force=True)
    assert [r.getMessage() for r in caplog.records][-1] == quiet.message
