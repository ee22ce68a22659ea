"""What the coordinator shows while it runs, from one typed view of the federation.

Every few tenths of a second the service asks for a ``FederationView`` (taken on its own
thread, from the server it owns) and hands it to whatever watches: one log line per event
(a node joined, answered or went quiet, a round opened: debug lines under a live view,
which shows them anyway), the live view in a terminal, the ``--status-file`` a launcher
reads, and the Prometheus metrics of ``--metrics-port``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mpfl.errors import MpflError
from mpfl.federation.metrics import RoundLog
from mpfl.federation.server import FederationServer
from mpfl.federation.watch import Event, FederationView, FleetWatch, events, waiting
from mpfl.logs import fields
from mpfl.net.inbox import ByteLedger
from mpfl.wire.protocol import Progress

if TYPE_CHECKING:
    from coordinator.live import LiveView
    from coordinator.metrics import CoordinatorMetrics

log = logging.getLogger(__name__)
VIEW_INTERVAL_S = 0.25
QUIET_S = 30.0  # without a live view, no stretch longer than this goes without a line


@dataclass
class WatchOptions:
    live: bool = False  # draw the live view (the command line says so in a terminal)
    status_file: Path | None = None  # the latest view as JSON, replaced atomically
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"


class Watching:
    def __init__(self, options: WatchOptions, federation: str) -> None:
        self.options = options
        self.fleet = FleetWatch()
        # rich and prometheus_client are imported only by a service that uses them.
        self.live: LiveView | None = None
        self.metrics: CoordinatorMetrics | None = None
        if options.live:
            from coordinator.live import LiveView

            self.live = LiveView()
        if options.metrics_port is not None:
            from coordinator.metrics import CoordinatorMetrics

            self.metrics = CoordinatorMetrics(federation)
        self.last: FederationView | None = None
        self._taken = 0.0
        self._said = time.monotonic()  # the last event line
        self._told_answered: set[tuple[int, str]] = set()  # (round, node) lines logged

    def start(self, server: FederationServer) -> None:
        """Serve the metrics (a port in use fails here, before any broker is touched) and
        open the live view."""
        if self.metrics is not None:
            assert self.options.metrics_port is not None
            self.metrics.baseline(server.dropped)
            self.metrics.serve(self.options.metrics_port, self.options.metrics_address)
            log.info(f"metrics on http://{self.options.metrics_address}:"
                     f"{self.options.metrics_port}/metrics")
        if self.live is not None:
            self.live.start()

    def stop(self, server: FederationServer, ledger: ByteLedger | None) -> None:
        self.observe(server, ledger, force=True)
        if self.metrics is not None:
            self.metrics.close()
        if self.live is not None:
            self.live.stop()

    def heard(self, node_id: str, activity: str, progress: Progress | None = None) -> None:
        self.fleet.heard(node_id, activity, progress)

    def round_closed(self, record: RoundLog) -> None:
        """Before the round's own line: the answers that closed it faster than a view."""
        for node_id in record.participants:
            if (record.round, node_id) not in self._told_answered:
                self._log(Event("node-answered", f"round {record.round}: node {node_id} "
                                f"answered ({len(record.participants)} answers)",
                                {"node": node_id, "round": record.round}))
        self._told_answered = {(r, n) for r, n in self._told_answered if r > record.round}
        if self.metrics is not None:
            self.metrics.round_closed(record)

    def observe(self, server: FederationServer, ledger: ByteLedger | None,
                force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._taken < VIEW_INTERVAL_S:
            if self.live is not None:
                self.live.show(None)  # the countdown moves on
            return
        self._taken = now
        view = self.fleet.view(server)
        for event in events(self.last, view):
            if event.name == "node-answered":
                self._told_answered.add((view.round, event.fields["node"]))
            self._log(event)
        if now - self._said >= QUIET_S and self.live is None:
            quiet = waiting(view)
            if quiet is not None:
                self._log(quiet)
        self.last = view
        if self.live is not None:
            self.live.show(view, force=force)
        if self.metrics is not None:
            self.metrics.show(view, ledger)
        if self.options.status_file is not None:
            write_status(self.options.status_file, view)


    def _log(self, event: Event) -> None:
        self._said = time.monotonic()
        level = logging.DEBUG if self.live is not None else logging.INFO
        log.log(level, event.message, extra=fields(event=event.name, **event.fields))


def write_status(path: Path, view: FederationView) -> None:
    """Replace ``path`` with ``view`` atomically (no fsync: it is rewritten in a moment)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(view.encode())
    os.replace(temporary, path)


def read_status(path: Path) -> FederationView | None:
    """The last view a coordinator wrote to ``path``; None before the first (or if the
    file is not one: a launcher keeps its last good view)."""
    try:
        return FederationView.decode(path.read_bytes())
    except (OSError, MpflError):
        return None
