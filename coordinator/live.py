"""The live view of a federation in a terminal (rich), drawn from a ``FederationView``.

Phase, round and the deadline's countdown; nodes online, answered and late, each with its
last activity and local epoch progress; bytes up and down this round and in total against
the dense fp32 equivalent; the consensus sparsity and the last accuracy. The coordinator
shows it when its output is a terminal; ``mpfl simulate`` shows the same, fed from the
coordinator's ``--status-file``. Log lines keep scrolling above it (one shared console).

Refreshed by the caller's thread (``show``), never by a thread of rich's own: the view is
a value taken on the thread that owns the state, so nothing is read while it changes.
"""

from __future__ import annotations

import time
from collections import Counter
from types import TracebackType

import msgspec
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mpfl.choices import Phase
from mpfl.federation.watch import FederationView, NodeView
from mpfl.logs import console

PHASE_STYLE = {Phase.WAITING: "yellow", Phase.MASK: "cyan", Phase.TRAIN: "green",
               Phase.DONE: "bold green", Phase.FAILED: "bold red"}
REFRESH_S = 0.5  # a redraw costs rich ~30 ms (benchmarks/bench_observe.py): 6% of the loop
TICK_S = 1.0
BAR_WIDTH = 10
# Drawing a table row costs rich about 2 ms (benchmarks/bench_observe.py): a large fleet
# shows the nodes that need attention first, and counts the rest.
MAX_NODE_ROWS = 12
_ATTENTION = {"late": 0, "offline": 1, "waiting": 2, "training": 3, "idle": 4, "answered": 5}


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} B"


def _ratio(dense: int, sent: int) -> str:
    return f"{dense / sent:.1f}x less" if sent > 0 and dense > 0 else "-"


def _ago(seen: float, now: float) -> str:
    return f"{max(0.0, now - seen):.0f}s ago" if seen > 0 else "-"


def _bar(done: int, total: int) -> str:
    filled = round(BAR_WIDTH * done / total) if total else 0
    return "#" * filled + "." * (BAR_WIDTH - filled)


def _node_state(node: NodeView, view: FederationView) -> Text:
    if not node.online:
        return Text("offline", "dim")
    if node.answered:
        return Text("answered", "green")
    if node.late:
        return Text("late", "bold red")
    if view.phase.is_round and node.training_in(view.round):
        return Text("training", "cyan")
    return Text("waiting" if view.phase.is_round else "idle", "yellow")


def _epochs(node: NodeView, view: FederationView) -> str:
    if not node.epochs or node.progress_round != view.round:
        return ""
    return f"{_bar(node.epoch, node.epochs)} {node.epoch}/{node.epochs}"


def render(view: FederationView, now: float | None = None) -> RenderableType:
    """The whole view as one rich renderable (plain text when captured without colour)."""
    now = time.time() if now is None else now
    phase = Text(str(view.phase), PHASE_STYLE.get(view.phase, ""))
    head = Text.assemble(f"federation {view.federation}  phase ", phase,
                         f"  round {view.round}/{view.total_rounds}")
    left = view.seconds_left(now)
    if left is not None:
        head.append(f"  deadline in {left:.0f}s")
    if view.error:
        head.append(f"  error: {view.error}", "bold red")
    accuracy = f"{view.accuracy:.2%}" if view.accuracy is not None else "-"
    summary = Text(f"nodes {view.online} online, {view.answered} answered, {view.late} late"
                   f"  sparsity {view.sparsity:.1%} (target {view.target_sparsity:.1%})"
                   f"  accuracy {accuracy}")
    traffic = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("bytes", "this round", "total", "dense fp32", "saved"):
        traffic.add_column(column, justify="right")
    traffic.add_row("up", _bytes(view.round_up), _bytes(view.total_up),
                    _bytes(view.total_dense), _ratio(view.total_dense, view.total_up))
    traffic.add_row("down", _bytes(view.round_down), _bytes(view.total_down), "", "")
    nodes = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("node", "state", "last activity", "seen", "local epochs"):
        nodes.add_column(column)
    states = sorted(((_node_state(node, view), node) for node in view.nodes),
                    key=lambda pair: (_ATTENTION.get(pair[0].plain, 9), pair[1].node_id))
    shown = states if len(states) <= MAX_NODE_ROWS else states[:MAX_NODE_ROWS - 1]
    for state, node in sorted(shown, key=lambda pair: pair[1].node_id):
        nodes.add_row(node.node_id, state, node.activity, _ago(node.seen, now),
                      _epochs(node, view))
    parts: list[RenderableType] = [head, summary, traffic, nodes]
    if len(shown) < len(states):
        rest = Counter(state.plain for state, _ in states[len(shown):])
        parts.append(Text(f"... and {len(states) - len(shown)} more: " + ", ".join(
            f"{n} {state}" for state, n in sorted(rest.items()))))
    if view.dropped:
        parts.append(Text("dropped " + ", ".join(f"{k} {v}" for k, v in view.dropped.items()),
                          "yellow"))
    return Group(*parts)


def _moved(old: FederationView, new: FederationView) -> bool:
    """Anything but the moment the view was taken differs."""
    return msgspec.structs.replace(old, time=new.time) != new


class LiveView:
    """A rich ``Live`` region the owner feeds with views; a no-op once stopped."""

    def __init__(self) -> None:
        self._live = Live(console=console(), auto_refresh=False, transient=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._view: FederationView | None = None
        self._drawn = 0.0
        self._changed = False

    def start(self) -> None:
        self._live.start()

    def __enter__(self) -> LiveView:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def show(self, view: FederationView | None, force: bool = False) -> None:
        """Draw ``view`` when it changed (at most every 0.5 s), else redraw the last one
        each second for the countdown and the "seen" column."""
        if view is not None and (self._view is None or _moved(self._view, view)):
            self._changed = True  # drawn at the next slot, even if nothing changes then
        if view is not None:
            self._view = view
        now = time.monotonic()
        due = REFRESH_S if self._changed else TICK_S
        if self._view is None or (not force and now - self._drawn < due):
            return
        self._drawn, self._changed = now, False
        self._live.update(render(self._view), refresh=True)

    def stop(self) -> None:
        if self._live.is_started:
            self.show(None, force=True)
            self._live.stop()
