"""What an operator watches: a typed snapshot of a federation, and the events between two.

:class:`FleetWatch` sits beside a ``FederationServer`` (it reads, never changes it) and
remembers what the server does not keep: each node's last activity and its local epoch
progress. :meth:`FleetWatch.view` makes a :class:`FederationView`, a frozen value the
live views render and the coordinator writes to ``--status-file`` for a launcher (JSON,
decoded strictly); :func:`events` compares two views and names what happened in between
(a node joined or left, answered, a round opened or closed), one log line each when no
terminal shows the live view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from mpfl.choices import Phase
from mpfl.federation.server import FederationServer
from mpfl.wire.protocol import Progress
from mpfl.wire.strict import decode_document


class NodeView(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    node_id: str
    online: bool
    answered: bool  # the round in progress
    late: bool  # expected in this round, missed its first deadline, still not answered
    activity: str  # the last thing heard: hello, mask, update, metrics, progress, offline
    seen: float  # when (Unix time; 0: not since this process started)
    progress_round: int = 0
    epoch: int = 0
    epochs: int = 0

    def training_in(self, round_: int) -> bool:
        return self.progress_round == round_ and not self.answered


class FederationView(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A federation at one moment. Bytes are the protocol's (``mpfl.federation.traffic``);
    ``dense`` is what dense fp32 FedAvg uploads would have cost for the same answers."""

    federation: str
    phase: Phase
    round: int
    total_rounds: int
    mask_rounds: int
    deadline: float  # Unix time; 0 outside a round
    time: float  # when the view was taken
    target_sparsity: float
    sparsity: float
    accuracy: float | None
    nodes: tuple[NodeView, ...]
    round_up: int
    round_down: int
    round_dense: int
    total_up: int
    total_down: int
    total_dense: int
    dropped: dict[str, int]
    rounds_closed: int
    error: str | None = None

    @property
    def online(self) -> int:
        return sum(n.online for n in self.nodes)

    @property
    def answered(self) -> int:
        return sum(n.answered for n in self.nodes)

    @property
    def late(self) -> int:
        return sum(n.late for n in self.nodes)

    def seconds_left(self, now: float) -> float | None:
        """Until the round's deadline; None outside a round."""
        return max(0.0, self.deadline - now) if self.phase.is_round else None

    def encode(self) -> bytes:
        # msgspec's own encoder: 100x faster than canonical JSON at 1,000 nodes
        # (benchmarks/bench_observe.py); nothing signs or compares a status file's bytes.
        return msgspec.json.encode(self)

    @staticmethod
    def decode(payload: bytes) -> FederationView:
        return decode_document(payload, FederationView, "federation view")


@dataclass
class _Heard:
    activity: str = ""
    seen: float = 0.0
    progress: Progress | None = None


class FleetWatch:
    """The per-node facts a view needs that the server does not keep."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._heard: dict[str, _Heard] = {}

    def heard(self, node_id: str, activity: str, progress: Progress | None = None) -> None:
        """A verified message from ``node_id`` (``activity``: its topic's last level)."""
        entry = self._heard.setdefault(node_id, _Heard())
        entry.activity, entry.seen = activity, self.clock()
        if progress is not None:
            entry.progress = progress

    def view(self, server: FederationServer) -> FederationView:
        now = self.clock()
        current = server.current if server.phase.is_round else None
        answered = current.answered if current is not None else set()
        late = (current.expected - answered) if current is not None and current.attempts else set()
        nodes = []
        for node_id, info in sorted(server.nodes.items()):
            heard = self._heard.get(node_id, _Heard())
            progress = heard.progress
            activity = heard.activity or ("hello" if info.online else "offline")
            if not info.online:
                activity = "offline"
            nodes.append(NodeView(
                node_id, info.online, node_id in answered, node_id in late, activity, heard.seen,
                progress.round if progress else 0, progress.epoch if progress else 0,
                progress.epochs if progress else 0,
            ))
        if current is not None:
            moved = server.traffic.since(current.traffic_at_open)
            round_up, round_down = moved.uplink, moved.downlink
            round_dense = 4 * server.unit_map.n_values * len(answered)
        else:
            round_up = round_down = round_dense = 0
        last_accuracy = next((log.accuracy for log in reversed(server.log)
                              if log.accuracy is not None), None)
        return FederationView(
            server.cfg.federation, server.phase, server.round, server.total_rounds,
            server.cfg.mask_rounds, server.deadline if current is not None else 0.0, now,
            server.target(), server.sparsity(), last_accuracy, tuple(nodes),
            round_up, round_down, round_dense, server.traffic.uplink, server.traffic.downlink,
            sum(log.dense_uplink_bytes for log in server.log) + round_dense,
            dict(sorted(server.dropped.items())), server.closed_round, server.error,
        )


@dataclass(frozen=True)
class Event:
    """Something that happened between two views: one log line's message and fields."""

    name: str
    message: str
    fields: dict[str, Any]


def events(before: FederationView | None, after: FederationView) -> list[Event]:
    """What changed from ``before`` to ``after`` (everything notable, for the first view)."""
    out: list[Event] = []
    old = {n.node_id: n for n in before.nodes} if before is not None else {}
    for node in after.nodes:
        was = old.get(node.node_id)
        if node.online and (was is None or not was.online):
            out.append(Event("node-online", f"node {node.node_id} online "
                             f"({after.online} online)", {"node": node.node_id}))
        elif not node.online and was is not None and was.online:
            out.append(Event("node-offline", f"node {node.node_id} went offline "
                             f"({after.online} online)", {"node": node.node_id}))
        same_round = before is not None and before.round == after.round
        if node.answered and not (was is not None and was.answered and same_round):
            out.append(Event("node-answered", f"round {after.round}: node {node.node_id} "
                             f"answered ({after.answered}/{len(after.nodes)})",
                             {"node": node.node_id, "round": after.round}))
        if node.late and not (was is not None and was.late):
            out.append(Event("node-late", f"round {after.round}: node {node.node_id} missed "
                             "the deadline", {"node": node.node_id, "round": after.round}))
    opened = after.phase.is_round and (before is None or (before.round, before.phase)
                                       != (after.round, after.phase))
    if opened:
        out.append(Event("round-opened", f"round {after.round}/{after.total_rounds} "
                         f"{after.phase} open: target sparsity {after.target_sparsity:.1%}, "
                         f"deadline in {after.deadline - after.time:.0f}s, "
                         f"{after.online} node(s) online",
                         {"round": after.round, "phase": str(after.phase),
                          "deadline": after.deadline}))
    return out


def waiting(view: FederationView) -> Event | None:
    """What the federation waits for now (a line for a quiet stretch), None when done."""
    if view.phase is Phase.WAITING:
        return Event("waiting", f"waiting for nodes: {view.online} online",
                     {"online": view.online})
    if not view.phase.is_round:
        return None
    pending = [n for n in view.nodes if n.online and not n.answered]
    names = ", ".join(
        n.node_id + (f" (epoch {n.epoch}/{n.epochs})" if n.progress_round == view.round
                     and n.epochs else "") for n in pending[:5])
    more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
    return Event("waiting", f"round {view.round}: {view.answered}/{view.online} answered; "
                 f"waiting for {names or 'nobody online'}{more}; deadline in "
                 f"{max(0.0, view.deadline - view.time):.0f}s",
                 {"round": view.round, "answered": view.answered,
                  "waiting_for": [n.node_id for n in pending]})

