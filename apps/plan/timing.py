"""Wall-clock of a run on planned links: per round, the slowest node's bytes plus training.

A round on a fleet takes

    train seconds + max over nodes of link_time(node's bytes, node's link, messages)

because the nodes train in parallel and the coordinator waits for the slowest one; each
message pays the link's one-way latency (``hardware.link_time``). All functions here are
pure: ``RoundBytes`` in, a ``Timeline`` or a ``Comparison`` out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from apps.plan.rounds import (
    STATE_MESSAGE_BYTES,
    RoundBytes,
    dense_fedavg_rounds,
    dense_model_bytes,
    param_count,
)
from apps.plan.units import format_duration
from hardware import Link, Profile, link_time
from mpfl.errors import ConfigError


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
    size = param_count(list(mpfl_rounds) + list(dense_rounds or []), n_params)
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

