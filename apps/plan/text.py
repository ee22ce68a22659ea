"""A comparison as text: the headline, both protocols side by side, the assumptions."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence

from apps.plan.timing import Comparison, Timeline
from apps.plan.units import format_bytes, format_duration
from hardware import Link

_WIDTH = 100  # notes are wrapped to this many columns


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
