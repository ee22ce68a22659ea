"""The coordinator service: the round state machine wired to MQTT and the run directory.

One thread does the work: it drains the inbox (messages paho's thread received), feeds
``FederationServer``, ticks it for deadlines, and applies each ``Step`` it returns: when a
round closed, first the checkpoint and one progress line, then the publishes (so a crash
can never leave nodes a round ahead of the checkpoint they resume from). A stop request
(SIGTERM or SIGINT) ends the loop between messages; the checkpoint of the last closed
round stays, and running again with the same run directory resumes from it.

Everything it says goes through this module's logger; what an operator watches (events,
the live view, the status file, Prometheus metrics) is ``coordinator.watching``'s.

Node liveness is the server's (``active_nodes``); the service keeps no copy of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.broker import EmbeddedBroker, start_embedded_broker
from coordinator.runstore import RunStore
from coordinator.watching import Watching, WatchOptions
from mpfl.config.settings import FederationConfig
from mpfl.errors import Interrupted, MpflError
from mpfl.federation.evaluation import Evaluator, dataset_evaluator
from mpfl.federation.gate import CoordinatorKeys, ServerGate
from mpfl.federation.metrics import RoundLog
from mpfl.federation.rejections import RejectionLog
from mpfl.federation.server import FederationServer, Step
from mpfl.logs import fields
from mpfl.ml.data import load_dataset
from mpfl.ml.models import build_model
from mpfl.ml.train import check_fits
from mpfl.net.endpoint import DEFAULT_CONNECT_TIMEOUT_S, BrokerAddress, parse_broker_url
from mpfl.net.inbox import Inbox
from mpfl.net.mqtt import DEFAULT_MAX_PAYLOAD, MqttTransport
from mpfl.wire import topics
from mpfl.wire.protocol import Progress, Publish, decode_json

log = logging.getLogger(__name__)

TICK_S = 0.2
# nodes/<id>/metrics is informational: a line of a few hundred bytes per round. Anything
# larger is refused, and the whole file is capped so no client can fill the disk.
MAX_NODE_METRICS_BYTES = 16 << 10
LINGER_S = 15.0  # with an embedded broker: time for nodes to read "done" before it stops


@dataclass
class ServiceOptions:
    run_dir: Path
    broker: BrokerAddress | None = None  # None: start an embedded broker
    embedded: str = "auto"  # auto | mosquitto | amqtt
    protocol: str = "auto"
    max_payload: int = DEFAULT_MAX_PAYLOAD
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S
    # Called with the embedded broker's URL once it is up (``--ready-file`` writes it out).
    on_broker_ready: Callable[[str], None] | None = None
    # The coordinator's key and the enrolled nodes' public keys; None: unauthenticated.
    keys: CoordinatorKeys | None = None
    watch: WatchOptions = field(default_factory=WatchOptions)
    embedded_port: int = 0  # 0: any free port


def load_evaluator(cfg: FederationConfig) -> Evaluator | None:
    """Scores the global model on the configured test split (None without one)."""
    if not cfg.eval_dataset:
        return None
    data = load_dataset(cfg.eval_dataset, cfg.eval_data_dir or None, "test")
    # Before round 1: a model that cannot take these images would fail every round.
    check_fits(build_model(cfg.model_spec), data, model_name=cfg.model, dataset=cfg.eval_dataset)
    return dataset_evaluator(cfg.model_spec, data)


def format_progress(log: RoundLog, total: int, nodes: int) -> str:
    acc = f"{log.accuracy:.2%}" if log.accuracy is not None else "-"
    dropped = ",".join(f"{k}={v}" for k, v in sorted(log.dropped.items())) or "0"
    return (f"round {log.round}/{total} {log.phase:<5} target {log.target_sparsity:.1%} "
            f"sparsity {log.sparsity:.1%} accuracy {acc} answers {len(log.participants)}/{nodes} "
            f"up {log.uplink_bytes:,} B down {log.downlink_bytes:,} B "
            f"(dense {log.dense_uplink_bytes:,} B) dropped {dropped} {log.seconds:.1f}s")


class CoordinatorService:
    def __init__(
        self,
        cfg: FederationConfig,
        options: ServiceOptions,
        evaluate: Evaluator | None = None,
    ) -> None:
        self.cfg = cfg
        self.options = options
        self.evaluate = evaluate
        self.store = RunStore(options.run_dir)
        self.inbox = Inbox()
        self.stop_requested: str | None = None
        self.broker: EmbeddedBroker | None = None
        self.transport: MqttTransport | None = None
        self.server: FederationServer | None = None
        self.gate: ServerGate | None = None
        self._connects = 0
        self.rejections = RejectionLog(log.warning, "coordinator")
        self.watching = Watching(options.watch, cfg.federation)

    def request_stop(self, reason: str) -> None:
        """Safe from a signal handler: the loop ends after the message in hand."""
        self.stop_requested = reason

    # -- setup ----------------------------------------------------------------------------

    def _make_server(self) -> FederationServer:
        if self.store.has_checkpoint():
            self.store.check_config(self.cfg)
            arrays, meta = self.store.load()
            server = FederationServer.restore(self.cfg, arrays, meta, self.evaluate)
            log.info(f"resuming {self.options.run_dir}: {server.closed_round} of "
                     f"{server.total_rounds} rounds closed, phase {server.phase}")
        else:
            self.store.check_config(self.cfg)
            server = FederationServer(self.cfg, self.evaluate)
        self.store.write_config(self.cfg)
        self.rejections.baseline(server.dropped)  # a resumed run's drops were logged before
        self.gate = ServerGate(server, self.options.keys, say=log.warning,
                               rejections=self.rejections)
        return server

    def _connect(self) -> MqttTransport:
        address, protocol = self.options.broker, self.options.protocol
        if address is None:
            self.broker = start_embedded_broker(self.options.embedded, self.options.embedded_port)
            if self.broker.kind == "amqtt" and protocol == "auto":
                protocol = "3.1.1"  # amqtt speaks nothing else
            log.info(f"embedded broker ({self.broker.kind}) listening on {self.broker.url}")
            if self.options.on_broker_ready is not None:
                self.options.on_broker_ready(self.broker.url)
            address = parse_broker_url(self.broker.url)
        client_id = f"mpfl-coordinator-{self.cfg.federation}"
        transport = MqttTransport(address, client_id, self.inbox, protocol=protocol,
                                  max_payload=self.options.max_payload,
                                  should_stop=lambda: self.stop_requested)
        self.inbox.subscribe(topics.nodes_filter(self.cfg.federation), self._on_message)
        self.inbox.on_connected = self._on_connected
        transport.connect(self.options.connect_timeout)
        return transport

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> FederationServer:
        self.server = server = self._make_server()
        try:
            self.watching.start(server)
            try:
                self.transport = self._connect()
            except Interrupted as exc:
                log.warning(str(exc))
                return server
            self._publish_all(server.start())
            cfg = self.cfg
            log.info(f"federation '{cfg.federation}': {server.total_rounds} rounds "
                     f"({cfg.mask_rounds} mask + {cfg.train_rounds} train), waiting for "
                     f"{cfg.min_nodes} node(s); run dir {self.options.run_dir}")
            while not server.finished and self.stop_requested is None:
                self.inbox.dispatch(TICK_S)
                self.transport.revive()
                self._apply(server.tick())
                self._count_chunk_drops()
                self.rejections.observe(server.dropped)
                self.watching.observe(server, self.inbox.ledger)
            self._count_chunk_drops()
            self.rejections.observe(server.dropped)
            self.rejections.flush(force=True)
            self.watching.observe(server, self.inbox.ledger, force=True)
            if server.finished:
                self._finish()
            else:
                log.warning(f"stopped ({self.stop_requested}) in round {server.round}; the "
                            "checkpoint is kept: run again with the same --run-dir to resume")
        finally:
            self.watching.stop(server, self.inbox.ledger)
            if self.transport is not None:
                self.transport.close()
            if self.broker is not None:
                self.broker.stop()
        return server

    def _apply(self, step: Step) -> None:
        if step.closed is not None:
            # Durable before the next round is announced: a crash can never leave nodes a
            # round ahead of the checkpoint they resume from.
            self._close(step.closed)
        self._publish_all(step.publishes)

    def _publish_all(self, messages: list[Publish]) -> None:
        assert self.transport is not None and self.gate is not None
        for message in self.gate.seal(messages):
            self.transport.publish(message)

    def _on_message(self, topic: str, payload: bytes) -> None:
        assert self.server is not None and self.gate is not None
        # Verified first: an unenrolled or forged sender never reaches the server or disk.
        opened = self.gate.open(topic, payload)
        if opened is None:
            return
        payload = opened
        parsed = topics.parse_node_topic(self.cfg.federation, topic)
        if parsed is None:
            return
        node_id, name = parsed
        if name == topics.NODE_METRICS:
            self._record_node_metrics(node_id, payload)
        elif name == topics.NODE_PROGRESS:
            self._record_progress(node_id, payload)
        else:
            self._apply(self.server.handle(topic, payload))
            if node_id in self.server.nodes:
                self.watching.heard(node_id, name)

    def _record_progress(self, node_id: str, payload: bytes) -> None:
        """A node's epoch count, for the live view only: from a node that said hello."""
        assert self.server is not None
        if node_id not in self.server.nodes:
            self.server.record_drop("progress-unknown-node")
            return
        try:
            progress = Progress.decode(payload)
        except MpflError:
            self.server.record_drop("malformed")
            return
        self.watching.heard(node_id, topics.NODE_PROGRESS, progress)
        log.debug(f"node {node_id}: round {progress.round} epoch "
                  f"{progress.epoch}/{progress.epochs}",
                  extra=fields(event="node-progress", node=node_id, round=progress.round,
                               epoch=progress.epoch, epochs=progress.epochs))

    def _record_node_metrics(self, node_id: str, payload: bytes) -> None:
        """Append a node's report to node_metrics.jsonl: only from a node that said hello,
        within a size per message and per run."""
        server = self.server
        assert server is not None
        if node_id not in server.nodes:
            server.record_drop("metrics-unknown-node")
            return
        if len(payload) > MAX_NODE_METRICS_BYTES:
            server.record_drop("metrics-too-large")
            return
        try:
            doc = decode_json(payload, "node metrics")
        except MpflError:
            server.record_drop("malformed")
            return
        if not self.store.append_node_metrics(node_id, doc):
            server.record_drop("metrics-quota")
            return
        self.watching.heard(node_id, topics.NODE_METRICS)

    def _on_connected(self, session_present: bool) -> None:
        self._connects += 1
        if self._connects == 1 or session_present or self.server is None:
            return
        # The broker lost our session (restarted): its retained messages and uploads in
        # flight may be gone. Re-publish everything under a new session id, which also
        # asks nodes to resend the open round's cached upload.
        log.warning("reconnected to a broker without our session: re-publishing state")
        self._publish_all(self.server.new_session())

    def _count_chunk_drops(self) -> None:
        """Chunks the transport refused or whose sets it dropped count as dropped messages."""
        assert self.server is not None
        for reason, count in self.inbox.new_chunk_drops("malformed").items():
            self.server.record_drop(reason, count)

    def _close(self, record: RoundLog) -> None:
        """A round closed: its wire bytes, one progress line, then the checkpoint."""
        server = self.server
        assert server is not None
        self.inbox.reassembler.drop_incomplete()
        self._count_chunk_drops()
        record.wire = self.inbox.ledger.window()
        # The views and metrics catch up with the wire first, so no one reads a round as
        # closed beside byte counters that do not have it yet.
        self.watching.observe(server, self.inbox.ledger, force=True)
        self.watching.round_closed(record)
        log.info(format_progress(record, server.total_rounds, len(server.nodes)),
                 extra=fields(event="round-closed", **record.to_dict()))
        self.store.save(server, {"wire": self.inbox.ledger.as_dict()})

    def _finish(self) -> None:
        server = self.server
        assert server is not None and self.transport is not None
        self.store.save(server, {"wire": self.inbox.ledger.as_dict()})
        if server.phase == "done":
            path = self.store.save_final(server, {"run_dir": str(self.options.run_dir)})
            last = server.log[-1] if server.log else None
            acc = f"{last.accuracy:.2%}" if last and last.accuracy is not None else "n/a"
            log.info(f"done: {server.closed_round} rounds, sparsity {server.sparsity():.1%}, "
                      f"accuracy {acc}; final model in {path}")
        else:
            log.error(f"failed: {server.error}")
        self.transport.flush()
        if self.broker is not None:
            self._linger()

    def _linger(self) -> None:
        """Keep the embedded broker up until the nodes have read the end and gone offline."""
        assert self.server is not None
        deadline = time.monotonic() + LINGER_S
        while time.monotonic() < deadline and self.stop_requested is None:
            if not self.server.active_nodes():
                return
            self.inbox.dispatch(TICK_S)
