"""The coordinator's Prometheus metrics, served on ``--metrics-port``.

A private ``CollectorRegistry`` per service (no process-wide state: two services, or two
tests, never share counters). The service's main thread updates the metrics from what it
already counts (the server's view, drops by reason, the transport's byte ledger) after
each message or tick; ``prometheus_client``'s own thread only serves them.

Counters follow the source totals by adding what they gained since the last update, so a
resumed run's earlier totals (kept in its checkpoint) are not counted twice by this process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, Histogram, Info, start_http_server
from prometheus_client import Counter as PromCounter

from mpfl.errors import PortInUse
from mpfl.federation.metrics import RoundLog
from mpfl.federation.watch import FederationView
from mpfl.net.inbox import ByteLedger

PREFIX = "mpfl_coordinator_"
ROUND_SECONDS_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_Inc = Callable[[str, int], None]


class CoordinatorMetrics:
    def __init__(self, federation: str) -> None:
        self.registry = reg = CollectorRegistry(auto_describe=True)
        Info(PREFIX + "federation", "The federation this coordinator runs",
             registry=reg).info({"federation": federation})
        self.rounds_closed = PromCounter(PREFIX + "rounds_completed",
                                         "Rounds closed by this process", registry=reg)
        self.round = Gauge(PREFIX + "round", "The round in progress (or the last one)",
                           registry=reg)
        self.online = Gauge(PREFIX + "nodes_online", "Nodes whose last status said online",
                            registry=reg)
        self.answered = Gauge(PREFIX + "nodes_answered", "Nodes that answered the open round",
                              registry=reg)
        self.received = PromCounter(PREFIX + "messages_received", "Messages received, by kind",
                                    ["kind"], registry=reg)
        self.sent = PromCounter(PREFIX + "messages_sent", "Messages published, by kind",
                                ["kind"], registry=reg)
        self.rejected = PromCounter(PREFIX + "messages_rejected",
                                    "Messages counted and dropped, by reason", ["reason"],
                                    registry=reg)
        self.bytes = PromCounter(PREFIX + "bytes", "Bytes on the wire (chunk headers "
                                 "included), by direction and kind", ["direction", "kind"],
                                 registry=reg)
        self.duration = Histogram(PREFIX + "round_duration_seconds", "Seconds per closed round",
                                  registry=reg, buckets=ROUND_SECONDS_BUCKETS)
        self.accuracy = Gauge(PREFIX + "accuracy", "Test accuracy of the global model (last "
                              "evaluated round)", registry=reg)
        self.sparsity = Gauge(PREFIX + "sparsity", "Sparsity of the consensus mask",
                              registry=reg)
        self.target = Gauge(PREFIX + "target_sparsity", "This round's target sparsity",
                            registry=reg)
        self.uplink = PromCounter(PREFIX + "uplink_bytes", "Accepted upload payload bytes "
                                  "(the round records' protocol figure)", registry=reg)
        self.dense = PromCounter(PREFIX + "dense_uplink_bytes", "What dense fp32 FedAvg "
                                 "uploads would have cost for the same answers", registry=reg)
        self._seen: dict[str, Counter[str]] = {}
        self._server: WSGIServer | None = None

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics; a port in use is PortInUse (exit 15), not a traceback."""
        try:
            self._server, _thread = start_http_server(port, addr=address,
                                                      registry=self.registry)
        except OSError as exc:
            raise PortInUse(f"cannot serve metrics on {address}:{port}: "
                            f"{exc.strerror or exc}", flag="--metrics-port") from None

    def close(self) -> None:
        """Stop serving: a scrape while the interpreter tears down could read a registry
        half gone (counters back at zero), so the endpoint closes with the service."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def show(self, view: FederationView, ledger: ByteLedger | None = None) -> None:
        """The state now: gauges set, counters advanced by what their sources gained."""
        self.round.set(view.round)
        self.online.set(view.online)
        self.answered.set(view.answered)
        self.sparsity.set(view.sparsity)
        self.target.set(view.target_sparsity)
        if view.accuracy is not None:
            self.accuracy.set(view.accuracy)
        self._advance("rejected", view.dropped, lambda k, n: self.rejected.labels(k).inc(n))
        if ledger is None:
            return
        self._advance("received", ledger.received_messages,
                      lambda k, n: self.received.labels(k).inc(n))
        self._advance("sent", ledger.sent_messages, lambda k, n: self.sent.labels(k).inc(n))
        self._advance("bytes-in", ledger.received,
                      lambda k, n: self.bytes.labels("received", k).inc(n))
        self._advance("bytes-out", ledger.sent,
                      lambda k, n: self.bytes.labels("sent", k).inc(n))

    def round_closed(self, record: RoundLog) -> None:
        self.rounds_closed.inc()
        self.duration.observe(record.seconds)
        self.uplink.inc(record.uplink_bytes)
        self.dense.inc(record.dense_uplink_bytes)
        if record.accuracy is not None:
            self.accuracy.set(record.accuracy)
        self.sparsity.set(record.sparsity)

    def baseline(self, dropped: Mapping[str, int]) -> None:
        """Drops a resumed run counted before this process: not counted again."""
        self._seen["rejected"] = Counter(dropped)

    def _advance(self, name: str, totals: Mapping[str, int], inc: _Inc) -> None:
        seen = self._seen.setdefault(name, Counter())
        # A copy first: paho's thread adds the ledger's keys while this one reads them.
        for key, total in dict(totals).items():
            gained = total - seen[key]
            if gained > 0:
                inc(key, gained)
                seen[key] = total
