"""The coordinator's round pieces: known nodes, the round in progress, the round mode.

:class:`OpenRound` gathers one round's answers as they arrive (who sent what, the votes
and the values, what was dropped, its deadline and retries), so the state machine only
decides when a round opens and closes. A :class:`RoundMode` is the policy of the mask
rounds, chosen once from the config by name in :data:`MODES`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import numpy as np

from mpfl.errors import lookup
from mpfl.federation.traffic import ByteWindow
from mpfl.maths.aggregate import Aggregation
from mpfl.maths.votes import VoteAccumulator
from mpfl.ml.units import UnitMap
from mpfl.wire import Kind


@dataclass
class NodeInfo:
    """A node the coordinator heard from; ``online`` is the fleet's one liveness flag."""

    samples: int
    hardware: str = "unknown"
    online: bool = True


class RoundMode(Protocol):
    """What a node sends in a mask round and what the round's close does with values."""

    @property
    def mask_uploads(self) -> frozenset[Kind]: ...

    def values_after_consensus(
        self, values: Aggregation, unit_map: UnitMap, before: np.ndarray, after: np.ndarray
    ) -> np.ndarray | None:
        """The alive values (under ``after``) the next round starts from; None: from w0."""
        ...


class Rewind:
    """The reference code: nodes send masks only, every mask round restarts from w0 * C."""

    mask_uploads = frozenset({Kind.LOCAL_MASK})

    def values_after_consensus(
        self, values: Aggregation, unit_map: UnitMap, before: np.ndarray, after: np.ndarray
    ) -> np.ndarray | None:
        return None


class Joint:
    """Mask rounds also send and average the masked weights; the next round starts there."""

    mask_uploads = frozenset({Kind.LOCAL_MASK, Kind.UPDATE})

    def values_after_consensus(
        self, values: Aggregation, unit_map: UnitMap, before: np.ndarray, after: np.ndarray
    ) -> np.ndarray | None:
        # The average is over the units alive before this round's consensus; the next
        # round starts from it under the new mask.
        state = unit_map.state_from_values(values.result(), before)
        return unit_map.alive_values(state, after)


MODES: Mapping[str, RoundMode] = MappingProxyType({"rewind": Rewind(), "joint": Joint()})


def get_mode(name: str) -> RoundMode:
    return lookup(MODES, name, "mode", "mode")


class OpenRound:
    """One round's answers so far. A node has answered once it sent every kind in
    ``uploads``; a second message of a kind it already sent is a duplicate."""

    def __init__(
        self,
        number: int,
        uploads: frozenset[Kind],
        expected: set[str],
        votes: VoteAccumulator,
        values: Aggregation,
        sizes: list[int],
        started: float,
        deadline: float,
        traffic_at_open: ByteWindow,
    ) -> None:
        self.number = number
        self.uploads = uploads
        self.expected = expected  # nodes active when the round (or its retry) opened
        self.votes = votes
        self.values = values
        self.sizes = sizes  # alive values per tensor under this round's mask
        self.started = started
        self.deadline = deadline
        self.traffic_at_open = traffic_at_open
        self.attempts = 0
        self.answered: set[str] = set()
        self.dropped: Counter[str] = Counter()
        self._seen: dict[str, set[Kind]] = {}

    def refusal(self, node_id: str, kind: Kind) -> str | None:
        """Why this round cannot take ``kind`` from ``node_id``, or None if it can."""
        if kind not in self.uploads:
            return "wrong-phase"
        if kind in self._seen.get(node_id, ()):
            return "duplicate"
        return None

    def accepted(self, node_id: str, kind: Kind) -> None:
        seen = self._seen.setdefault(node_id, set())
        seen.add(kind)
        if seen == self.uploads:
            self.answered.add(node_id)

    def waiting_for(self, active: set[str]) -> set[str]:
        return (self.expected & active) - self.answered

    def retry(self, deadline: float, active: set[str]) -> None:
        """Another attempt below quorum: a new deadline, awaiting whoever is active now."""
        self.attempts += 1
        self.deadline = deadline
        self.expected = set(active)
