"""Link emulation for planning: how long a run takes on a real link, MPFL against dense FedAvg.

Input is what a run measured, one ``RoundBytes`` per round: the bytes each participating
node sent and received (exact envelope sizes, counted by the coordinator), the accuracy
after the round, and one node's local training time. A round on a fleet takes

    train seconds + max over nodes of link_time(node's bytes, node's link, messages)

because the nodes train in parallel and the coordinator waits for the slowest one; each
message pays the link's one-way latency (``hardware.profiles.link_time``). Dense FedAvg
is the same protocol with every node sending and receiving the whole fp32 model each
round. All functions here are pure: the numbers in, a ``Comparison`` out, text from
``format_plan``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hardware.profiles import Link, Profile, get_link, get_profile, link_time
from mpfl.errors import ConfigError, DataError
from mpfl.federation.metrics import RoundLog, read_metrics
from mpfl.wire import MIN_MESSAGE_SIZE

BYTES_PER_FP32 = 4
# A node's update payload starts with its sample count, a u32 (mpfl.wire.protocol.encode_update).
UPDATE_HEADER_BYTES = 4
# The coordinator's server/state JSON document is ~420 bytes for a LeNet-5 run; MPFL's
# records include its exact size, the dense FedAvg estimate adds this figure instead.
STATE_MESSAGE_BYTES = 450
# Per node and round: server/state down, the node's mask or update up, the new mask or
# model down. They follow each other, so each pays the one-way latency.
MESSAGES_PER_ROUND = 3
# Node id bytes assumed in a dense update's envelope when a record names no nodes.
DEFAULT_NODE_ID_BYTES = 7
_WIDTH = 100  # notes are wrapped to this many columns


@dataclass(frozen=True)
class RoundBytes:
    """One round as the link sees it; tuples hold one entry per participating node."""

    round: int
    phase: str
    uplink: tuple[int, ...]
    downlink: tuple[int, ...]
    accuracy: float | None
    train_seconds: float
    messages: int = MESSAGES_PER_ROUND
    n_params: int = 0  # the dense model's parameter count (0: unknown)
    node_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.uplink or len(self.uplink) != len(self.downlink):
            raise ConfigError(
                "a round needs one uplink and one downlink figure per node (at least one)",
                round=self.round,
                uplink=len(self.uplink),
                downlink=len(self.downlink),
            )
        if self.node_ids and len(self.node_ids) != len(self.uplink):
            raise ConfigError("node ids do not match the per-node figures", round=self.round)
        if min(self.uplink) < 0 or min(self.downlink) < 0:
            raise ConfigError("byte counts must not be negative", round=self.round)
        if self.messages < 0 or self.n_params < 0:
            raise ConfigError("messages and n_params must not be negative", round=self.round)
        if not (math.isfinite(self.train_seconds) and self.train_seconds >= 0):
            raise ConfigError("train seconds must be finite and >= 0", round=self.round)
        if self.accuracy is not None and not 0.0 <= self.accuracy <= 1.0:
            raise ConfigError("accuracy must be in [0, 1]", round=self.round)

    @property
    def nodes(self) -> int:
        return len(self.uplink)


# ------------------------------------------------------------------------------ inputs


def _split(total: int, parts: int) -> list[int]:
    """``total`` over ``parts`` as evenly as integers allow; the parts sum to ``total``."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def rounds_from_logs(
    logs: Iterable[RoundLog], *, nodes_train_sequentially: bool = True
) -> list[RoundBytes]:
    """Per-node records from the coordinator's round logs (totals over nodes).

    Uplink totals are split over the round's participants. The coordinator counts each
    broadcast once per known node, so downlink totals are split over the fleet (every node
    seen in any round). The in-process simulator trains its nodes one after another, so by
    default one node's training time is the round's wall time over its participants.
    """
    items = list(logs)
    fleet = len({node for log in items for node in log.participants})
    out: list[RoundBytes] = []
    for log in items:
        k = len(log.participants)
        if k == 0:
            raise DataError("a closed round has no participants", round=log.round)
        per_node_down = _split(log.downlink_bytes, max(fleet, k))[:k]
        seconds = log.seconds / k if nodes_train_sequentially else log.seconds
        out.append(
            RoundBytes(
                round=log.round,
                phase=log.phase,
                uplink=tuple(_split(log.uplink_bytes, k)),
                downlink=tuple(per_node_down),
                accuracy=log.accuracy,
                train_seconds=max(seconds, 0.0),
                n_params=log.dense_uplink_bytes // (BYTES_PER_FP32 * k),
                node_ids=tuple(log.participants),
            )
        )
    return out


def node_train_seconds(path: str | Path) -> dict[int, float]:
    """Round -> the slowest node's reported training time, from ``node_metrics.jsonl``.

    The file holds what nodes said about themselves (``train_seconds`` per round); lines
    without a usable round and time are skipped, as the figures are only a refinement.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "node_metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    slowest: dict[int, float] = {}
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        t, seconds = doc.get("round"), doc.get("train_seconds")
        if (
            isinstance(t, int)
            and not isinstance(t, bool)
            and isinstance(seconds, int | float)
            and not isinstance(seconds, bool)
            and math.isfinite(seconds)
            and seconds >= 0
        ):
            slowest[t] = max(slowest.get(t, 0.0), float(seconds))
    return slowest


def rounds_from_metrics(
    path: str | Path, *, nodes_train_sequentially: bool = True, use_node_metrics: bool = True
) -> list[RoundBytes]:
    """Records from a run's ``metrics.jsonl`` (a run directory or the file itself).

    When ``node_metrics.jsonl`` sits next to it (runs over MQTT write it), a round's
    training time is the slowest node's reported ``train_seconds``; otherwise it comes
    from the round's wall time (see ``rounds_from_logs``).
    """
    path = Path(path)
    logs = read_metrics(path)
    if not logs:
        raise DataError("metrics file holds no rounds", path=str(path))
    rounds = rounds_from_logs(logs, nodes_train_sequentially=nodes_train_sequentially)
    run_dir = path if path.is_dir() else path.parent
    reported = node_train_seconds(run_dir) if use_node_metrics else {}
    return [
        dataclasses.replace(r, train_seconds=reported[r.round]) if r.round in reported else r
        for r in rounds
    ]


# --------------------------------------------------------------------- dense FedAvg


def dense_update_bytes(n_params: int, node_id_bytes: int = DEFAULT_NODE_ID_BYTES) -> int:
    """One node's dense fp32 update as it travels: envelope + sample count + values."""
    return MIN_MESSAGE_SIZE + node_id_bytes + UPDATE_HEADER_BYTES + BYTES_PER_FP32 * n_params


def dense_model_bytes(n_params: int) -> int:
    """The coordinator's dense fp32 model message (its envelope has no node id)."""
    return MIN_MESSAGE_SIZE + BYTES_PER_FP32 * n_params


def _n_params(rounds: Sequence[RoundBytes], n_params: int | None) -> int:
    found = n_params if n_params is not None else max((r.n_params for r in rounds), default=0)
    if found <= 0:
        raise ConfigError("the dense model size is unknown: give n_params")
    return found


def dense_fedavg_rounds(
    rounds: Sequence[RoundBytes], n_params: int | None = None
) -> list[RoundBytes]:
    """The dense FedAvg run to compare with: one dense round per MPFL training round.

    FedAvg has no mask rounds, so it is assumed to reach each accuracy after as many
    rounds as MPFL's training phase did, with the same nodes and training time. A run
    without training rounds is mirrored round for round.
    """
    n = _n_params(rounds, n_params)
    source = [r for r in rounds if r.phase == "train"] or list(rounds)
    down = dense_model_bytes(n) + STATE_MESSAGE_BYTES
    out: list[RoundBytes] = []
    for index, r in enumerate(source, 1):
        id_bytes = [len(i.encode("utf-8")) for i in r.node_ids] or [DEFAULT_NODE_ID_BYTES] * r.nodes
        out.append(
            RoundBytes(
                round=index,
                phase="train",
                uplink=tuple(dense_update_bytes(n, b) for b in id_bytes),
                downlink=(down,) * r.nodes,
                accuracy=r.accuracy,
                train_seconds=r.train_seconds,
                messages=r.messages,
                n_params=n,
                node_ids=r.node_ids,
            )
        )
    return out


# ------------------------------------------------------------------------ timelines


@dataclass(frozen=True)
class RoundTiming:
    round: int
    phase: str
    comm_seconds: float  # the slowest node's communication
    train_seconds: float
    cumulative_seconds: float  # since the start, setup included
    accuracy: float | None

    @property
    def seconds(self) -> float:
        return self.comm_seconds + self.train_seconds


@dataclass(frozen=True)
class Timeline:
    """One protocol's run on the planned links."""

    label: str
    rounds: tuple[RoundTiming, ...]
    setup_seconds: float  # every node downloads the dense initial model once
    uplink_bytes: int  # all nodes, all rounds
    downlink_bytes: int
    target_accuracy: float | None
    seconds_to_target: float | None  # None: target unknown or never reached
    rounds_to_target: int | None

    @property
    def total_seconds(self) -> float:
        return self.rounds[-1].cumulative_seconds if self.rounds else self.setup_seconds

    @property
    def mean_comm_seconds(self) -> float:
        return sum(r.comm_seconds for r in self.rounds) / max(len(self.rounds), 1)

    @property
    def mean_train_seconds(self) -> float:
        return sum(r.train_seconds for r in self.rounds) / max(len(self.rounds), 1)


def _links(links: Link | Sequence[Link]) -> tuple[Link, ...]:
    chosen = (links,) if isinstance(links, Link) else tuple(links)
    if not chosen:
        raise ConfigError("at least one link is needed")
    return chosen


def round_comm_seconds(record: RoundBytes, links: Link | Sequence[Link]) -> float:
    """The slowest node's communication time; node i uses ``links[i % len(links)]``."""
    fleet = _links(links)
    return max(
        link_time(up, down, fleet[i % len(fleet)], record.messages)
        for i, (up, down) in enumerate(zip(record.uplink, record.downlink, strict=True))
    )


def setup_seconds(n_params: int, links: Link | Sequence[Link]) -> float:
    """Every node fetches the dense initial model and the state once, before round 1."""
    if n_params <= 0:
        return 0.0
    down = dense_model_bytes(n_params) + STATE_MESSAGE_BYTES
    return max(link_time(0, down, link, 2) for link in _links(links))


def first_reaching(accuracies: Sequence[float | None], target: float) -> int | None:
    """Index of the first accuracy at or above ``target`` (None if none is)."""
    for index, accuracy in enumerate(accuracies):
        if accuracy is not None and accuracy >= target:
            return index
    return None


def final_accuracy(rounds: Sequence[RoundBytes]) -> float | None:
    """The last accuracy a run reported."""
    return next((r.accuracy for r in reversed(rounds) if r.accuracy is not None), None)


def timeline(
    label: str,
    rounds: Sequence[RoundBytes],
    links: Link | Sequence[Link],
    *,
    train_seconds: float | None = None,
    target_accuracy: float | None = None,
    n_params: int | None = None,
) -> Timeline:
    """Wall-clock of ``rounds`` on ``links``; ``train_seconds`` overrides each round's."""
    if train_seconds is not None and not (math.isfinite(train_seconds) and train_seconds >= 0):
        raise ConfigError("train seconds must be finite and >= 0", train_seconds=train_seconds)
    fleet = _links(links)
    size = n_params if n_params is not None else max((r.n_params for r in rounds), default=0)
    clock = setup_seconds(size, fleet)
    start = clock
    timings: list[RoundTiming] = []
    for r in rounds:
        comm = round_comm_seconds(r, fleet)
        train = r.train_seconds if train_seconds is None else train_seconds
        clock += comm + train
        timings.append(RoundTiming(r.round, r.phase, comm, train, clock, r.accuracy))
    reached = (
        None
        if target_accuracy is None
        else first_reaching([t.accuracy for t in timings], target_accuracy)
    )
    return Timeline(
        label=label,
        rounds=tuple(timings),
        setup_seconds=start,
        uplink_bytes=sum(sum(r.uplink) for r in rounds),
        downlink_bytes=sum(sum(r.downlink) for r in rounds),
        target_accuracy=target_accuracy,
        seconds_to_target=None if reached is None else timings[reached].cumulative_seconds,
        rounds_to_target=None if reached is None else reached + 1,
    )


@dataclass(frozen=True)
class Comparison:
    """MPFL and dense FedAvg on the same links, fleet and training time."""

    links: tuple[Link, ...]
    mpfl: Timeline
    dense: Timeline
    target_accuracy: float | None
    dense_assumed: bool  # True when the dense run mirrors MPFL's training rounds
    compute_note: str
    profile: Profile | None = None


def compare(
    mpfl_rounds: Sequence[RoundBytes],
    links: Link | Sequence[Link],
    *,
    dense_rounds: Sequence[RoundBytes] | None = None,
    n_params: int | None = None,
    train_seconds: float | None = None,
    target_accuracy: float | None = None,
    profile: Profile | None = None,
    compute_note: str | None = None,
) -> Comparison:
    """Plan both protocols; the target defaults to MPFL's final accuracy.

    ``dense_rounds`` is a measured dense FedAvg run (e.g. the baseline of an experiment);
    without it the dense run is derived from MPFL's rounds (``dense_fedavg_rounds``).
    """
    if not mpfl_rounds:
        raise ConfigError("no rounds to plan")
    if target_accuracy is not None and not 0.0 <= target_accuracy <= 1.0:
        raise ConfigError("target accuracy must be in [0, 1]", target=target_accuracy)
    fleet = _links(links)
    size = _n_params(list(mpfl_rounds) + list(dense_rounds or []), n_params)
    dense = dense_fedavg_rounds(mpfl_rounds, size) if dense_rounds is None else list(dense_rounds)
    if not dense:
        raise ConfigError("no dense FedAvg rounds to compare with")
    target = final_accuracy(mpfl_rounds) if target_accuracy is None else target_accuracy
    if compute_note is None:
        compute_note = (
            "as measured in the run"
            if train_seconds is None
            else f"{format_duration(train_seconds)} per round per node"
        )
    return Comparison(
        links=fleet,
        mpfl=timeline(
            "MPFL",
            mpfl_rounds,
            fleet,
            train_seconds=train_seconds,
            target_accuracy=target,
            n_params=size,
        ),
        dense=timeline(
            "dense FedAvg",
            dense,
            fleet,
            train_seconds=train_seconds,
            target_accuracy=target,
            n_params=size,
        ),
        target_accuracy=target,
        dense_assumed=dense_rounds is None,
        compute_note=compute_note,
        profile=profile,
    )


# ----------------------------------------------------------------------------- text


def format_duration(seconds: float) -> str:
    """Seconds in the largest unit that keeps the number readable: 8.0 s, 4.5 min, 2.3 d."""
    if not math.isfinite(seconds):
        return "n/a"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    if seconds >= 1:
        return f"{seconds:.1f} s"
    return f"{seconds * 1000:.0f} ms"


def format_bytes(n: float) -> str:
    """Decimal units, as link speeds are quoted: 1.2 kB, 3.4 MB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _pct(accuracy: float) -> str:
    return f"{100 * accuracy:.1f}%"


def _links_label(links: Sequence[Link]) -> str:
    names = list(dict.fromkeys(link.name for link in links))
    return names[0] if len(names) == 1 else f"a {'/'.join(names)} mix"


def headline(comparison: Comparison) -> str:
    """One line: 'on lte-m, MPFL reaches 97.1% in 1.2 h, dense FedAvg in 2.3 d'."""
    c = comparison
    where = f"on {_links_label(c.links)}"
    if c.profile is not None:
        where += f" ({c.profile.name})"
    if c.target_accuracy is None:
        return (
            f"{where}, MPFL's {len(c.mpfl.rounds)} rounds take "
            f"{format_duration(c.mpfl.total_seconds)}, dense FedAvg's {len(c.dense.rounds)} "
            f"take {format_duration(c.dense.total_seconds)}"
        )

    def reach(t: Timeline) -> str:
        if t.seconds_to_target is None:
            return (
                f"does not reach it in {len(t.rounds)} rounds ({format_duration(t.total_seconds)})"
            )
        return f"in {format_duration(t.seconds_to_target)}"

    mpfl = reach(c.mpfl)
    if c.mpfl.seconds_to_target is not None:
        mpfl = f"reaches {_pct(c.target_accuracy)} {mpfl}"
    else:
        mpfl = f"targets {_pct(c.target_accuracy)} but {mpfl}"
    return f"{where}, MPFL {mpfl}, dense FedAvg {reach(c.dense)}"


def _phase_counts(t: Timeline) -> str:
    phases: dict[str, int] = {}
    for r in t.rounds:
        phases[r.phase] = phases.get(r.phase, 0) + 1
    if len(phases) == 1:
        return str(len(t.rounds))
    return f"{len(t.rounds)} ({' + '.join(f'{n} {p}' for p, n in phases.items())})"


def _side_by_side(c: Comparison) -> str:
    def reach(t: Timeline) -> str:
        if t.seconds_to_target is None:
            return "not reached"
        return f"{format_duration(t.seconds_to_target)} (round {t.rounds_to_target})"

    label = "time to target" if c.target_accuracy is None else f"time to {_pct(c.target_accuracy)}"
    def both(name: str, cell: Callable[[Timeline], str]) -> tuple[str, str, str]:
        return name, cell(c.mpfl), cell(c.dense)

    rows = [
        ("", c.mpfl.label, c.dense.label),
        both("rounds", _phase_counts),
        both("sent, all nodes", lambda t: format_bytes(t.uplink_bytes)),
        both("received, all nodes", lambda t: format_bytes(t.downlink_bytes)),
        both("communication per round", lambda t: format_duration(t.mean_comm_seconds)),
        both("training per round", lambda t: format_duration(t.mean_train_seconds)),
        both("setup (initial model)", lambda t: format_duration(t.setup_seconds)),
        both(label, reach),
        both("total wall-clock", lambda t: format_duration(t.total_seconds)),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"  {a:<{widths[0]}}  {b:>{widths[1]}}  {d:>{widths[2]}}".rstrip() for a, b, d in rows
    )


def _round_table(t: Timeline) -> str:
    rows = [("ROUND", "PHASE", "COMM", "TRAIN", "ELAPSED", "ACCURACY")]
    for r in t.rounds:
        rows.append(
            (
                str(r.round),
                r.phase,
                format_duration(r.comm_seconds),
                format_duration(r.train_seconds),
                format_duration(r.cumulative_seconds),
                "-" if r.accuracy is None else _pct(r.accuracy),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    body = [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join([f"{t.label}, round by round:", *body])


def _link_line(link: Link) -> str:
    return (
        f"{link.name}: {link.uplink_kbps:g} kbit/s up, {link.downlink_kbps:g} kbit/s down, "
        f"{link.latency_ms:g} ms per message"
    )


def format_plan(comparison: Comparison, *, per_round: bool = False) -> str:
    """The headline, the two protocols side by side, and the assumptions behind them."""
    c = comparison
    links = list(dict.fromkeys(c.links))
    notes = ["links: " + "; ".join(_link_line(link) for link in links)]
    if len(c.links) > 1:
        notes.append(
            f"node i uses link i mod {len(c.links)}; each round waits for the slowest node"
        )
    notes.append(f"training time: {c.compute_note}")
    if c.dense_assumed:
        notes.append(
            "dense FedAvg: every node sends and receives the whole fp32 model each round and "
            "is assumed to need as many rounds as MPFL's training phase (no mask rounds)"
        )
    if c.profile is not None and not c.profile.trains:
        notes.append(
            f"note: profile {c.profile.label} is inference-only; these figures assume its "
            "nodes trained anyway"
        )
    lines = [headline(c), "", _side_by_side(c), ""]
    lines += [textwrap.fill(note, width=_WIDTH, subsequent_indent="  ") for note in notes]
    if per_round:
        lines += ["", _round_table(c.mpfl), _round_table(c.dense)]
    return "\n".join(lines)


def _configured_epochs(run_dir: Path) -> int:
    """``local_epochs`` from the run's config.json, or 1."""
    try:
        doc = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 1
    epochs = doc.get("local_epochs") if isinstance(doc, dict) else None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else 1


def plan_from_run_dir(
    run_dir: str | Path,
    link_names: Sequence[str],
    profile: Profile | str | None = None,
    *,
    seconds_per_epoch: float | None = None,
    local_epochs: int | None = None,
    target_accuracy: float | None = None,
    per_round: bool = False,
    nodes_train_sequentially: bool = True,
) -> str:
    """The formatted comparison for a finished run directory (``mpfl simulate --link``).

    ``link_names`` are assigned to nodes in turn (one name: the whole fleet); without any,
    the profile's default link is used. ``seconds_per_epoch`` (measured on the board, e.g.
    by benchmarks/bench_edge.py) replaces the training time the run measured on this host;
    ``local_epochs`` defaults to the run's ``config.json`` (1 if it has none).
    """
    chosen = get_profile(profile) if isinstance(profile, str) else profile
    names = list(link_names) or ([chosen.link] if chosen is not None else [])
    if not names:
        raise ConfigError("name a link (--link) or a hardware profile")
    links = [get_link(name) for name in names]
    folder = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent
    if local_epochs is None:
        local_epochs = _configured_epochs(folder)
    if local_epochs < 1:
        raise ConfigError("local epochs must be at least 1", local_epochs=local_epochs)
    rounds = rounds_from_metrics(run_dir, nodes_train_sequentially=nodes_train_sequentially)
    train_seconds = None if seconds_per_epoch is None else seconds_per_epoch * local_epochs
    if train_seconds is not None:
        note = (
            f"{format_duration(train_seconds)} per round per node "
            f"({local_epochs} epoch(s) x {format_duration(seconds_per_epoch or 0.0)})"
        )
    elif node_train_seconds(folder):
        note = "the slowest node's reported training time in each round of the run on this host"
    else:
        note = "one node's share of each round's wall time in the run on this host"
    comparison = compare(
        rounds,
        links,
        train_seconds=train_seconds,
        target_accuracy=target_accuracy,
        profile=chosen,
        compute_note=note,
    )
    return format_plan(comparison, per_round=per_round)
