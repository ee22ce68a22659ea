"""What a run measured, per round and node, and the dense FedAvg run to compare it with.

Input is one ``RoundBytes`` per round: the bytes each participating node sent and received
(exact envelope sizes, counted by the coordinator), the accuracy after the round, and one
node's local training time. ``dense_fedavg_rounds`` derives the same protocol with every
node sending and receiving the whole fp32 model each round.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

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


def param_count(rounds: Sequence[RoundBytes], n_params: int | None = None) -> int:
    """The dense model's size: ``n_params`` if given, else the largest any record carries."""
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
    n = param_count(rounds, n_params)
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

