"""The coordinator's round pieces: known nodes, the round in progress, the round mode.

:class:`OpenRound` gathers one round's answers as they arrive (who sent what, the votes
and the values, what was dropped, its deadline and retries), so the state machine only
decides when a round opens and closes; a :class:`Step` is what the state machine returns
for each input. A :class:`RoundMode` is the policy of the mask rounds, chosen once from
the config by name in :data:`MODES`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import numpy as np

from mpfl.choices import Mode
from mpfl.errors import lookup
from mpfl.federation.metrics import RoundLog
from mpfl.federation.traffic import ByteWindow
from mpfl.maths.aggregate import Aggregation, WeightedAverager
from mpfl.maths.agreement import AgreementVotes
from mpfl.maths.votes import VoteAccumulator
from mpfl.ml.units import UnitMap
from mpfl.wire import Envelope, Kind, decode_mask, decode_values
from mpfl.wire.partial import decode_partial
from mpfl.wire.protocol import Hello, Publish, decode_update


@dataclass(frozen=True)
class Step:
    """What one message or tick did: messages to publish, and the round it closed (whose
    record the caller makes durable before it publishes the next round's state)."""

    publishes: list[Publish] = field(default_factory=list)
    closed: RoundLog | None = None


@dataclass
class NodeInfo:
    """A node the coordinator heard from; ``online`` is the fleet's one liveness flag."""

    samples: int
    hardware: str = "unknown"
    online: bool = True

    @classmethod
    def from_hello(cls, hello: Hello, max_samples: int) -> NodeInfo:
        """An online node; its claimed sample count is clamped to ``max_samples`` (not
        refused: a large honest node still takes part, but weighs no more than that in
        FedAvg or in the votes)."""
        return cls(min(hello.samples, max_samples), hello.hardware, online=True)


class NodeTable(dict[str, NodeInfo]):
    """The known nodes by id, with the ids of those online kept beside them, so "how many
    are online" and "is anyone still awaited" cost O(1) per message, not O(nodes)."""

    def __init__(self, nodes: Mapping[str, NodeInfo] | None = None) -> None:
        super().__init__()
        self.online: set[str] = set()
        for node_id, info in (nodes or {}).items():
            self[node_id] = info

    def __setitem__(self, node_id: str, info: NodeInfo) -> None:
        super().__setitem__(node_id, info)
        if info.online:
            self.online.add(node_id)
        else:
            self.online.discard(node_id)

    def leave(self, node_id: str) -> None:
        """The node said "offline" (or the broker said it for it)."""
        if node_id in self:
            self[node_id].online = False
            self.online.discard(node_id)


def new_votes(n_units: int, weighted: bool, agreement: bool) -> VoteAccumulator | AgreementVotes:
    """One round's vote count; with ``agreement``, outlier voters are down-weighted."""
    return (AgreementVotes if agreement else VoteAccumulator)(n_units, weighted)


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


MODES: Mapping[Mode, RoundMode] = MappingProxyType({Mode.REWIND: Rewind(), Mode.JOINT: Joint()})


def get_mode(name: str) -> RoundMode:
    return lookup(MODES, name, "mode", "mode")


class OpenRound:
    """One round's answers so far. A node has answered once it sent every kind in
    ``uploads``; a second message of a kind it already sent is a duplicate.

    Masks are decoded in the scope of the mask in force (only its alive units travel),
    values by the per-tensor ``sizes`` under it, as deltas from ``base`` when one is given.
    """

    def __init__(
        self,
        uploads: frozenset[Kind],
        expected: set[str],
        votes: VoteAccumulator | AgreementVotes,
        values: Aggregation,
        scope: np.ndarray,
        sizes: list[int],
        base: np.ndarray | None,
        started: float,
        deadline: float,
        traffic_at_open: ByteWindow,
    ) -> None:
        self.uploads = uploads
        self.expected = expected  # nodes active when the round (or its retry) opened
        self.votes = votes
        self.values = values
        self.scope = scope
        self.sizes = sizes
        self._sizes = np.asarray(sizes, dtype=np.int64)  # converted once, not per upload
        self.base = base
        self.started = started
        self.deadline = deadline
        self.traffic_at_open = traffic_at_open
        self.attempts = 0
        self.answered: set[str] = set()
        self.pending = set(expected)  # expected, not answered yet
        self.dropped: Counter[str] = Counter()
        self._seen: dict[str, set[Kind]] = {}
        self.behind: dict[str, int] = {}  # a region's answer: how many nodes it sums

    def refusal(self, node_id: str, kind: Kind) -> str | None:
        """Why this round cannot take ``kind`` from ``node_id``, or None if it can."""
        if kind not in self.uploads:
            return "wrong-phase"
        if kind in self._seen.get(node_id, ()):
            return "duplicate"
        return None

    def take(
        self, env: Envelope, kind: Kind, vote_weight: float, max_samples: int = 0xFFFF_FFFF
    ) -> str | None:
        """Decode and add one upload of the round; the reason it was refused, or None.
        A payload that does not decode raises (an MpflError) before anything is added.
        An update's own sample count weighs at most ``max_samples`` (the node's hello)."""
        refusal = self.refusal(env.node_id, kind)
        if refusal is not None:
            return refusal
        if kind is Kind.LOCAL_MASK:
            local = decode_mask(env.codec, env.payload, self.votes.n_units, scope=self.scope)
            self.votes.add(local, vote_weight)
        else:
            samples, body = decode_update(env.payload)
            values = decode_values(env.codec, body, self._sizes, self.base)
            if not np.isfinite(values).all():
                return "malformed"
            self.values.add(values, float(min(samples, max_samples)))
        seen = self._seen.setdefault(env.node_id, set())
        seen.add(kind)
        if seen == self.uploads:
            self.answered.add(env.node_id)
            self.pending.discard(env.node_id)
        return None

    def take_partial(self, env: Envelope, max_samples: int) -> str | None:
        """Merge a region's partial aggregate, which answers every kind of the round at
        once; the reason it was refused, or None. Only streaming counts merge exactly: a
        round with mask agreement or a buffered aggregator refuses it ("not-mergeable").
        Each voter and update behind it weighs at most ``max_samples``, as a node would."""
        for kind in sorted(self.uploads):
            refusal = self.refusal(env.node_id, kind)
            if refusal is not None:
                return refusal
        partial = decode_partial(env.payload, self.votes.n_units, sum(self.sizes), self.scope)
        votes, values = partial.votes, partial.values
        if (votes is not None) != (Kind.LOCAL_MASK in self.uploads) or (
                values is not None) != (Kind.UPDATE in self.uploads):
            return "partial-mismatch"
        if votes is not None:
            if not isinstance(self.votes, VoteAccumulator):
                return "not-mergeable"
            if votes.weighted != self.votes.weighted:
                return "partial-mismatch"
            if votes.weight > votes.voters * max_samples:
                return "malformed"
        if values is not None:
            if not isinstance(self.values, WeightedAverager):
                return "not-mergeable"
            if values.weight > values.updates * max_samples:
                return "malformed"
        if votes is not None and isinstance(self.votes, VoteAccumulator):
            self.votes.merge(
                VoteAccumulator.from_sums(votes.sums, votes.weight, votes.voters)
                if votes.sums is not None
                else VoteAccumulator.from_planes(self.votes.n_units, list(votes.planes),
                                                 votes.voters))
        if values is not None and isinstance(self.values, WeightedAverager):
            self.values.merge(WeightedAverager.from_sums(values.sums, values.weight,
                                                         values.updates))
        self._seen[env.node_id] = set(self.uploads)
        self.behind[env.node_id] = max(votes.voters if votes else 0,
                                       values.updates if values else 0)
        self.answered.add(env.node_id)
        self.pending.discard(env.node_id)
        return None

    @property
    def nodes_answered(self) -> int:
        """Nodes whose work this round holds: each node's own, and those behind partials."""
        return len(self.answered) - len(self.behind) + sum(self.behind.values())

    def waiting_for(self, active: set[str]) -> set[str]:
        return self.pending & active

    def awaits_anyone(self, active: set[str]) -> bool:
        """``bool(waiting_for(active))``, stopping at the first one: this runs per message."""
        return any(node_id in active for node_id in self.pending)

    def retry(self, deadline: float, active: set[str]) -> None:
        """Another attempt below quorum: a new deadline, awaiting whoever is active now."""
        self.attempts += 1
        self.deadline = deadline
        self.expected = set(active)
        self.pending = self.expected - self.answered
