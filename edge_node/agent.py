"""The device agent: ``FederationNode`` wired to MQTT and to its state directory.

The main thread drains the inbox and trains inline when a round is due; paho's own
thread keeps the connection alive meanwhile. A server message the node cannot use is
counted and dropped by the node itself (``FederationNode.rejected``); the agent reports
the counts when it stops. After each upload is acknowledged by the broker, the finished
round (and its exact bytes) is saved, so a restarted agent neither retrains nor sends the
round twice. On every (re)connect the node announces itself again (its retained status
may have been replaced by the last will, or lost with the broker).

While a round trains, its local epochs are published (signed) on the node's ``progress``
topic for the coordinator's live view, at most one message per ``progress_every`` seconds
(each costs about 130 bytes: on a slow link, as much as a sparse mask), and every epoch is
shown here: on a progress bar in a terminal, as one log line otherwise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_node.live import EpochBar
from edge_node.state import load_finished, save_finished, state_path
from mpfl.choices import Phase
from mpfl.errors import FederationError, Interrupted
from mpfl.federation.gate import NodeGate, NodeKeys
from mpfl.federation.node import FederationNode, Finished
from mpfl.logs import fields
from mpfl.maths.partition import parse_share, partition
from mpfl.ml.data import Dataset, load_dataset
from mpfl.net.endpoint import DEFAULT_CONNECT_TIMEOUT_S, BrokerAddress
from mpfl.net.inbox import Inbox
from mpfl.net.mqtt import DEFAULT_MAX_PAYLOAD, MqttTransport
from mpfl.wire import topics
from mpfl.wire.chunks import Reassembler
from mpfl.wire.protocol import Progress, Publish

log = logging.getLogger(__name__)

UPLOAD_ACK_TIMEOUT_S = 120.0
PROGRESS_EVERY_S = 10.0
EDGE_CHUNK_BYTES = 16 << 20


def load_node_data(
    dataset: str,
    data_dir: str | None,
    share: str | None = None,
    scheme: str = "iid",
    seed: int = 0,
    limit: int | None = None,
) -> tuple[Dataset, int]:
    """This node's training data and its partition index (0 without a partition).

    The share is picked on the raw labels before the images are normalised, so a node
    never holds the whole split as float32.
    """
    index, n = parse_share(share) if share is not None else (0, 1)

    def select(labels: np.ndarray) -> np.ndarray:
        picked = partition(labels, n, scheme, seed)[index] if share is not None else None
        if picked is None:
            picked = np.arange(len(labels))
        return picked[:limit] if limit is not None else picked

    return load_dataset(dataset, data_dir, "train", select=select), index


@dataclass
class AgentOptions:
    protocol: str = "auto"
    max_payload: int = DEFAULT_MAX_PAYLOAD
    state_dir: Path | None = None
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S
    # This node's key and the coordinator's public key; None: unauthenticated.
    keys: NodeKeys | None = None
    live: bool = False  # a progress bar of the local epochs (in a terminal)
    progress_every: float = PROGRESS_EVERY_S  # 0: every epoch


class EdgeAgent:
    def __init__(
        self,
        node: FederationNode,
        address: BrokerAddress,
        options: AgentOptions,
    ) -> None:
        self.node = node
        self.address = address
        self.options = options
        # The coordinator never chunks what it sends (see mpfl.wire.chunks), so chunks on
        # the server's topics are foreign: a small budget bounds what they may hold.
        self.inbox = Inbox(reassembler=Reassembler(max_bytes=EDGE_CHUNK_BYTES,
                                                   sender_bytes=EDGE_CHUNK_BYTES))
        self.stop_requested: str | None = None
        self.transport: MqttTransport | None = None
        self.gate = NodeGate(node, options.keys, say=log.warning)
        self.epochs = EpochBar() if options.live else None
        node.on_progress = self._on_progress
        self._progress_sent: float | None = None
        fed, nid = node.federation, node.node_id
        self.status_topic = topics.node_topic(fed, nid, topics.NODE_STATUS)
        self.path = state_path(options.state_dir, fed, nid) if options.state_dir else None
        if self.path is not None and node.finished is None:
            node.finished = load_finished(self.path, fed, nid)
        self._saved: tuple[int, str, str] | None = self._key(node.finished)

    @staticmethod
    def _key(finished: Finished | None) -> tuple[int, str, str] | None:
        return None if finished is None else (finished.round, finished.session, finished.run)

    def request_stop(self, reason: str) -> None:
        self.stop_requested = reason

    def run(self) -> str:
        """Take part until the federation ends; its final phase, or "stopped"."""
        node = self.node
        self.inbox.subscribe(topics.server_filter(node.federation), self._on_message)
        self.inbox.on_connected = lambda _session_present: self._publish(self.gate.on_connect())
        client_id = f"mpfl-{node.federation}-{node.node_id}"
        self.transport = MqttTransport(self.address, client_id, self.inbox, will=self.gate.will,
                                       protocol=self.options.protocol,
                                       max_payload=self.options.max_payload,
                                       should_stop=lambda: self.stop_requested)
        limit = self.options.connect_timeout
        log.info(f"node {node.node_id}: {len(node.data)} samples; connecting to "
                 f"{self.address.url} (" + ("no time limit" if limit is None else
                                            f"giving up after {limit:g} s") + ")")
        try:
            try:
                self.transport.connect(limit)
            except Interrupted as exc:
                log.warning(f"node {node.node_id}: {exc}")
                return "stopped"
            while not node.done and self.stop_requested is None:
                self.inbox.dispatch(0.5)
                self.transport.revive()
                self._count_chunk_drops()
                node.rejections.flush()
        finally:
            if self.epochs is not None:
                self.epochs.stop()
            self.transport.close(final=self.gate.goodbye())
            self._count_chunk_drops()
            node.rejections.flush(force=True)
            if node.rejected:
                counts = ", ".join(f"{reason} {n}" for reason, n in sorted(node.rejected.items()))
                log.warning(f"node {node.node_id}: dropped {node.rejected.total()} unusable "
                            f"server message(s): {counts}")
        if self.stop_requested is not None:
            return "stopped"
        assert node.state is not None
        if node.state.phase == Phase.FAILED:
            raise FederationError(f"the federation failed: {node.state.error}",
                                  node=node.node_id)
        return "done"

    def _count_chunk_drops(self) -> None:
        """Chunks the transport refused or whose sets it dropped count as rejected server
        messages."""
        for reason, count in self.inbox.new_chunk_drops("malformed-chunk").items():
            self.node.record_drop(reason, count)

    def _publish(self, messages: list[Publish]) -> None:
        assert self.transport is not None
        for message in messages:
            self.transport.publish(message)

    def _on_message(self, topic: str, payload: bytes) -> None:
        trained_before = self.node.last_metrics
        # Never raises for a message it cannot use; a hello is due when the session changed.
        out = self.gate.handle(topic, payload)
        self._publish(out)
        if all(m.topic == self.status_topic for m in out):
            return
        assert self.transport is not None
        if not self.transport.flush(UPLOAD_ACK_TIMEOUT_S):
            log.warning("upload not yet acknowledged by the broker; it stays queued")
            return
        self._save()
        metrics = self.node.last_metrics
        if metrics is trained_before:
            finished = self.node.finished
            log.info(f"resent round {finished.round if finished else '?'} (cached bytes)")
        else:
            acc = metrics.get("accuracy")
            acc_text = f"{acc:.1%}" if isinstance(acc, float) else "-"
            log.info(f"round {metrics['round']} {metrics['phase']}: trained "
                     f"{metrics['train_seconds']:.1f}s, loss {metrics['loss']:.3f}, "
                     f"acc {acc_text}, sent {metrics['upload_bytes']:,} B")

    def _on_progress(self, progress: Progress) -> None:
        """An epoch finished (or training began): tell the coordinator, show it here."""
        now = time.monotonic()
        sent = self._progress_sent
        if self.transport is not None and (
                sent is None or now - sent >= self.options.progress_every):
            self._progress_sent = now
            self.transport.publish(self.gate.seal(self.node.progress_message(progress)))
        if self.epochs is not None:
            self.epochs.show(progress)
        elif progress.epoch > 0:
            log.info(f"round {progress.round}: epoch {progress.epoch}/{progress.epochs}",
                     extra=fields(event="epoch", round=progress.round, epoch=progress.epoch,
                                  epochs=progress.epochs))

    def _save(self) -> None:
        key = self._key(self.node.finished)
        if self.path is None or self.node.finished is None or key == self._saved:
            return
        save_finished(self.path, self.node.finished)
        self._saved = key
