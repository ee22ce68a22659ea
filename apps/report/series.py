"""The numbers every plot and table of a report shows, as pure functions of a run's records.

Plots draw exactly these series and the markdown prints them, so a test that checks a
series against the run's metrics checks the picture too. Bytes are the coordinator's own
counts (``metrics.jsonl``); the dense-FedAvg equivalent is 4 bytes (fp32) per model value
per answering node per round, the same rounds sent dense.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from apps.report.rundir import KnownNode, NodeReport, RunRecord
from mpfl.federation.metrics import RoundLog

MB = 1e6
DENSE_BYTES_PER_VALUE = 4  # fp32


@dataclass(frozen=True)
class Series:
    """One line of a plot: its legend label and its points."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True)
class NodeTotals:
    """One node's share of the run: rounds it answered in and what the coordinator knew of
    it (hello, liveness), beside the rounds and upload bytes the node reported itself."""

    node: str
    rounds_answered: int
    rounds_reported: int
    reported_upload_bytes: int
    samples: int  # the coordinator's (capped) count from the hello, else the node's report
    hardware: str = "unknown"
    online: bool | None = None  # at the last checkpoint; None: not in it


def cumulative_uplink_mb(rounds: Sequence[RoundLog]) -> tuple[float, ...]:
    return tuple(total / MB for total in accumulate(r.uplink_bytes for r in rounds))


def dense_bytes(rounds: Sequence[RoundLog], parameters: int) -> tuple[int, ...]:
    """Per round: what the answering nodes would have sent as dense fp32 updates."""
    return tuple(DENSE_BYTES_PER_VALUE * parameters * len(r.participants) for r in rounds)


def _evaluated(rounds: Sequence[RoundLog], xs: Sequence[float], label: str) -> Series:
    """(x, accuracy %) at every round the coordinator evaluated the global model."""
    points = [(x, 100 * r.accuracy) for x, r in zip(xs, rounds, strict=True)
              if r.accuracy is not None]
    return Series(label, tuple(p[0] for p in points), tuple(p[1] for p in points))


def accuracy_per_round(run: RunRecord, label: str = "MPFL") -> Series:
    return _evaluated(run.rounds, [float(r.round) for r in run.rounds], label)


def accuracy_against_uplink(run: RunRecord, label: str = "MPFL (measured)") -> Series:
    return _evaluated(run.rounds, cumulative_uplink_mb(run.rounds), label)


def dense_equivalent(run: RunRecord) -> Series:
    """The run's accuracy placed at what its rounds would have cost sent dense."""
    totals = accumulate(dense_bytes(run.rounds, run.parameters))
    return _evaluated(run.rounds, [t / MB for t in totals],
                      "dense FedAvg equivalent (same rounds, fp32)")


def bits_per_parameter(rounds: Sequence[RoundLog], parameters: int) -> Series:
    """Uplink bits per model value per answering node, round by round (32 = dense fp32)."""
    points = [(float(r.round), 8 * r.uplink_bytes / (parameters * len(r.participants)))
              for r in rounds if r.participants and parameters]
    return Series("uplink bits per parameter per node-round",
                  tuple(p[0] for p in points), tuple(p[1] for p in points))


def savings(run: RunRecord) -> float | None:
    """How many times less the run sent up than the same rounds dense (None: nothing sent)."""
    sent = sum(r.uplink_bytes for r in run.rounds)
    dense = sum(dense_bytes(run.rounds, run.parameters))
    return dense / sent if sent else None


def node_totals(rounds: Sequence[RoundLog], reports: Sequence[NodeReport],
                known: Mapping[str, KnownNode] | None = None) -> list[NodeTotals]:
    """Every node the coordinator heard of, sorted by id: one that said hello and never
    answered (it crashed, or cannot train) shows with zero rounds."""
    known = known or {}
    answered = Counter(node for r in rounds for node in r.participants)
    reported: dict[str, dict[int, NodeReport]] = defaultdict(dict)
    for report in reports:
        reported[report.node][report.round] = report  # a repeated round counts once, last wins
    out = []
    for node in sorted(set(answered) | set(reported) | set(known)):
        own = reported.get(node, {})
        hello = known.get(node)
        samples = hello.samples if hello else max((r.samples for r in own.values()), default=0)
        out.append(NodeTotals(
            node, answered[node], len(own), sum(r.upload_bytes for r in own.values()), samples,
            hello.hardware if hello else "unknown", hello.online if hello else None,
        ))
    return out


def final_accuracy(run: RunRecord) -> float | None:
    evaluated = [r.accuracy for r in run.rounds if r.accuracy is not None]
    return evaluated[-1] if evaluated else None
