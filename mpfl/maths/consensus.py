"""Mask consensus: streaming vote counts and the rules that turn votes into a global mask.

Masks are flat bool arrays in canonical unit order; ``layers`` are contiguous slices of
that array, one per prunable layer. A node's mask C_n says which units it keeps.

:class:`VoteAccumulator` adds masks as they arrive, in memory independent of how many
arrive, and yields a :class:`VoteTally` with each unit's vote share
s_u = sum_n a_n C_n[u] / sum_n a_n. A consensus rule is one callable
``rule(VoteInput) -> mask``, registered by name in :data:`RULES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mpfl.choices import ConsensusName
from mpfl.errors import ConfigError, FederationError, ModelError, lookup
from mpfl.maths.schedules import keep_count

BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]

DEFAULT_RULE = ConsensusName.TOP_VOTES


def packed_size(n_units: int) -> int:
    """Bytes of a mask of ``n_units`` packed by ``np.packbits`` (big bit order)."""
    return (n_units + 7) // 8


def _as_packed_bytes(packed: bytes | bytearray | memoryview | NDArray[Any]) -> NDArray[np.uint8]:
    if isinstance(packed, np.ndarray):
        if packed.dtype != np.uint8 or packed.ndim != 1:
            raise ModelError(
                "a packed mask must be a flat uint8 array",
                dtype=str(packed.dtype),
                ndim=packed.ndim,
            )
        return packed
    return np.frombuffer(packed, dtype=np.uint8)


def _check_weight(weight: float) -> float:
    weight = float(weight)
    if not (math.isfinite(weight) and weight > 0.0):
        raise FederationError("a vote weight must be positive and finite", weight=weight)
    return weight


@dataclass(frozen=True, eq=False)
class VoteTally:
    """The votes of one round: each unit's keep share s_u in [0, 1] and who voted."""

    share: FloatArray
    total_weight: float
    n_voters: int


class VoteAccumulator:
    """Streaming vote counts over ``n_units`` units.

    Uniform mode (a_n = 1, the reference code) keeps a bit-sliced counter: plane k holds
    bit k of every unit's count, as packed uint64 words, and adding a mask is a ripple-carry
    add over whole words that stops at the first plane where the carry is all zero. Memory
    is ceil(log2(N + 1)) bits per unit for N masks plus two scratch bits: 12 bits at 1,000
    masks, against 32 for a uint32 counter. Weighted mode (a_n = sample count) keeps one
    float64 sum per unit.

    Packed masks use ``np.packbits`` order: unit i is bit ``7 - i % 8`` of byte ``i // 8``
    (big bit order); bits past ``n_units`` in the last byte are ignored.
    """

    def __init__(self, n_units: int, weighted: bool = False) -> None:
        if n_units < 0:
            raise ModelError("a mask cannot have a negative number of units", n_units=n_units)
        self.n_units = n_units
        self.weighted = weighted
        self.n_voters = 0
        self.total_weight = 0.0
        self._n_bytes = packed_size(n_units)
        self._n_words = (self._n_bytes + 7) // 8
        # The bits of the last byte that hold units; pad bits are cleared on input.
        spare = self._n_bytes * 8 - n_units
        self._last_byte_mask = np.uint8((0xFF << spare) & 0xFF)
        self._planes: list[NDArray[np.uint64]] = []
        self._carry = np.zeros(self._n_words, dtype=np.uint64)
        self._spare = np.zeros(self._n_words, dtype=np.uint64)
        self._sums = np.zeros(n_units if weighted else 0, dtype=np.float64)

    # -- adding votes -------------------------------------------------------------------

    def add(self, mask: BoolArray, weight: float = 1.0) -> None:
        """Count one node's keep mask (a flat bool array of ``n_units``)."""
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 1:
            raise ModelError(
                "a mask must be a flat bool array",
                dtype=str(getattr(mask, "dtype", type(mask).__name__)),
            )
        if mask.size != self.n_units:
            raise ModelError("mask length does not fit", expected=self.n_units, got=mask.size)
        if self.weighted:
            weight = _check_weight(weight)
            np.add(self._sums, weight, out=self._sums, where=mask)
            self._count(weight)
        else:
            self.add_packed(np.packbits(mask), weight)

    def add_packed(
        self, packed: bytes | bytearray | memoryview | NDArray[Any], weight: float = 1.0
    ) -> None:
        """Count one node's keep mask as it arrives off the wire, bit-packed."""
        data = _as_packed_bytes(packed)
        if data.size != self._n_bytes:
            raise ModelError(
                "packed mask length does not fit", expected=self._n_bytes, got=data.size
            )
        if self.weighted:
            weight = _check_weight(weight)
            bits = np.unpackbits(data, count=self.n_units).view(np.bool_)
            np.add(self._sums, weight, out=self._sums, where=bits)
            self._count(weight)
            return
        if weight != 1.0:
            raise ConfigError(
                "vote weights need a weighted accumulator", weight=weight, weighted=False
            )
        if self._n_bytes:
            self._ripple_add(data)
        self._count(1.0)

    def _count(self, weight: float) -> None:
        self.n_voters += 1
        self.total_weight += weight

    def _ripple_add(self, data: NDArray[np.uint8]) -> None:
        carry, spare = self._carry, self._spare
        carry_bytes = carry.view(np.uint8)
        carry_bytes[: self._n_bytes] = data
        carry_bytes[self._n_bytes :] = 0
        carry_bytes[self._n_bytes - 1] &= self._last_byte_mask
        for plane in self._planes:
            np.bitwise_and(plane, carry, out=spare)
            np.bitwise_xor(plane, carry, out=plane)
            carry, spare = spare, carry
            # max() is a cheaper all-zero test than any() on uint64 words.
            if not carry.max():
                return
        if carry.max():
            self._planes.append(carry.copy())

    # -- combining and reading ------------------------------------------------------------

    def merge(self, other: VoteAccumulator) -> None:
        """Add another accumulator's votes to this one (regional partial tallies add up)."""
        if other.n_units != self.n_units:
            raise ModelError(
                "cannot merge votes over different units",
                expected=self.n_units,
                got=other.n_units,
            )
        if other.weighted != self.weighted:
            raise ConfigError(
                "cannot merge weighted and unweighted votes",
                weighted=self.weighted,
                other_weighted=other.weighted,
            )
        if self.weighted:
            self._sums += other._sums
        else:
            self._planes = _add_bit_sliced(self._planes, other._planes, self._n_words)
        self.n_voters += other.n_voters
        self.total_weight += other.total_weight

    def counts(self) -> NDArray[np.int64]:
        """Per-unit number of keep votes (uniform mode)."""
        if self.weighted:
            raise ConfigError("a weighted accumulator holds weighted sums, not counts")
        counts = np.zeros(self.n_units, dtype=np.int64)
        for k, plane in enumerate(self._planes):
            bits = np.unpackbits(plane.view(np.uint8), count=self.n_units)
            counts += bits.astype(np.int64) << k
        return counts

    def tally(self) -> VoteTally:
        """Each unit's keep share; raises FederationError before the first vote."""
        if self.n_voters == 0:
            raise FederationError("no masks were received this round", n_units=self.n_units)
        votes = self._sums if self.weighted else self.counts().astype(np.float64)
        share = np.clip(votes / self.total_weight, 0.0, 1.0)
        return VoteTally(share=share, total_weight=self.total_weight, n_voters=self.n_voters)

    # -- checkpoints ----------------------------------------------------------------------

    def state(self) -> dict[str, NDArray[Any]]:
        """Plain arrays for a checkpoint (``np.savez``, no pickle).

        Uniform mode stores the counter planes as packed bytes (one row per plane, in
        ``np.packbits`` order), so the checkpoint does not depend on the machine's byte order.
        """
        planes = (
            np.stack([p.view(np.uint8)[: self._n_bytes] for p in self._planes])
            if self._planes
            else np.zeros((0, self._n_bytes), dtype=np.uint8)
        )
        return {
            "n_units": np.array(self.n_units, dtype=np.int64),
            "weighted": np.array(self.weighted, dtype=np.bool_),
            "n_voters": np.array(self.n_voters, dtype=np.int64),
            "total_weight": np.array(self.total_weight, dtype=np.float64),
            "planes": planes,
            "sums": self._sums.copy(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, NDArray[Any]]) -> VoteAccumulator:
        """Rebuild an accumulator from :meth:`state`; ModelError if the arrays do not fit."""
        try:
            n_units = int(state["n_units"])
            weighted = bool(state["weighted"])
            n_voters = int(state["n_voters"])
            total_weight = float(state["total_weight"])
            planes = np.asarray(state["planes"])
            sums = np.asarray(state["sums"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError("vote checkpoint is incomplete", reason=str(exc)) from None
        acc = cls(n_units, weighted=weighted)
        if n_voters < 0 or not math.isfinite(total_weight) or total_weight < 0:
            raise ModelError(
                "vote checkpoint has bad totals", n_voters=n_voters, total_weight=total_weight
            )
        if sums.shape != acc._sums.shape or sums.dtype != np.float64:
            raise ModelError(
                "vote checkpoint sums do not fit",
                expected=acc._sums.shape,
                got=sums.shape,
            )
        if planes.dtype != np.uint8 or planes.ndim != 2 or planes.shape[1] != acc._n_bytes:
            raise ModelError(
                "vote checkpoint planes do not fit",
                expected=("k", acc._n_bytes),
                got=planes.shape,
            )
        if weighted and planes.shape[0]:
            raise ModelError("a weighted vote checkpoint has no counter planes")
        if planes.shape[0] > 63:
            raise ModelError("vote checkpoint has too many counter planes", got=planes.shape[0])
        for row in planes:
            word = np.zeros(acc._n_words, dtype=np.uint64)
            word.view(np.uint8)[: acc._n_bytes] = row
            acc._planes.append(word)
        acc._sums[:] = sums
        acc.n_voters = n_voters
        acc.total_weight = total_weight
        return acc


def _add_bit_sliced(
    a: list[NDArray[np.uint64]], b: list[NDArray[np.uint64]], n_words: int
) -> list[NDArray[np.uint64]]:
    """Sum of two bit-sliced counters, plane by plane with a full adder."""
    zero = np.zeros(n_words, dtype=np.uint64)
    carry = zero
    out: list[NDArray[np.uint64]] = []
    for k in range(max(len(a), len(b))):
        x = a[k] if k < len(a) else zero
        y = b[k] if k < len(b) else zero
        x_xor_y = x ^ y
        out.append(x_xor_y ^ carry)
        carry = (x & y) | (carry & x_xor_y)
    if carry.any():
        out.append(carry)
    return out


# -- consensus rules ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VoteInput:
    """Everything a consensus rule may look at.

    ``share``: each unit's keep share; ``alive``: units alive in the current global mask
    (a rule never revives a pruned unit); ``layers``: contiguous slices covering the units;
    ``target``: this round's sparsity r_t; ``n_voters``: masks counted; ``history``:
    optional cumulative shares of earlier rounds, used only to break ties.
    """

    share: FloatArray
    alive: BoolArray
    layers: tuple[slice, ...]
    target: float
    n_voters: int
    history: FloatArray | None = None

    def __post_init__(self) -> None:
        n = self.alive.size
        if self.alive.dtype != np.bool_ or self.alive.ndim != 1:
            raise ModelError("the alive mask must be a flat bool array")
        if self.share.ndim != 1 or self.share.size != n:
            raise ModelError("vote shares do not fit the mask", expected=n, got=self.share.size)
        if not np.all(np.isfinite(self.share)):
            raise ModelError("vote shares must be finite")
        if self.history is not None and (self.history.ndim != 1 or self.history.size != n):
            raise ModelError(
                "vote history does not fit the mask", expected=n, got=self.history.size
            )
        if not (0.0 <= self.target < 1.0):
            raise ConfigError("target sparsity must be in [0, 1)", target=self.target)
        if self.n_voters < 1:
            raise FederationError("a consensus needs at least one vote", n_voters=self.n_voters)
        check_layers(self.layers, n)

    @classmethod
    def from_tally(
        cls,
        tally: VoteTally,
        alive: BoolArray,
        layers: Sequence[slice],
        target: float,
        history: FloatArray | None = None,
    ) -> VoteInput:
        return cls(
            share=tally.share,
            alive=alive,
            layers=tuple(layers),
            target=target,
            n_voters=tally.n_voters,
            history=history,
        )


def check_layers(layers: Sequence[slice], n_units: int) -> None:
    """Raise ModelError unless ``layers`` are contiguous unit-step slices covering n_units."""
    position = 0
    for i, layer in enumerate(layers):
        start = 0 if layer.start is None else layer.start
        if layer.step not in (None, 1) or start != position or layer.stop is None:
            raise ModelError("layers must be contiguous slices", layer=i, expected_start=position)
        if layer.stop < start:
            raise ModelError("a layer slice runs backwards", layer=i)
        position = layer.stop
    if position != n_units:
        raise ModelError("layers do not cover the mask", expected=n_units, got=position)


ConsensusRule = Callable[[VoteInput], BoolArray]


def threshold_scan(votes: VoteInput) -> BoolArray:
    """The reference code's rule.

    Per layer, try tau = 1, (N-1)/N, ..., 1/N and keep the first candidate
    ``alive & (share >= tau)`` whose pruned fraction of the layer (pruned / all the layer's
    units) reaches the target; if none does, the last candidate (tau = 1/N) stands.
    Lowering tau only keeps more, so in practice: "prune if any node prunes" (tau = 1) when
    that reaches r_t, else "prune only if all prune" (tau = 1/N). Like the reference, it
    does not guarantee a unit per layer.
    """
    n = votes.n_voters
    taus = (n - np.arange(n)) / n  # 1, (N-1)/N, ..., 1/N, as the reference computes them
    out = np.zeros(votes.alive.size, dtype=np.bool_)
    for layer in votes.layers:
        share, alive = votes.share[layer], votes.alive[layer]
        size = share.size
        if size == 0:
            continue
        alive_sorted = np.sort(share[alive])
        kept = alive_sorted.size - np.searchsorted(alive_sorted, taus, side="left")
        reaches = (size - kept) / size >= votes.target
        chosen = taus[int(np.argmax(reaches))] if reaches.any() else taus[-1]
        out[layer] = alive & (share >= chosen)
    return out


def _rank_alive(votes: VoteInput, layer: slice) -> NDArray[np.intp]:
    """Indices (within the layer) of its alive units, best-voted first.

    Ties go to the higher cumulative history, then to the lower index.
    """
    alive_idx = np.flatnonzero(votes.alive[layer])
    share = votes.share[layer][alive_idx]
    if votes.history is None:
        order = np.lexsort((alive_idx, -share))
    else:
        order = np.lexsort((alive_idx, -votes.history[layer][alive_idx], -share))
    return alive_idx[order]


def top_votes(votes: VoteInput) -> BoolArray:
    """Keep exactly ceil((1 - r_t) * n_layer) alive units per layer, the best-voted.

    n_layer counts all the layer's units, alive or not, so the layer hits r_t exactly.
    Never revives a pruned unit: with fewer alive units than the keep count, all alive
    units stay. Keeps at least one unit per layer while the layer has any alive, since a
    layer with no units cuts the network.
    """
    out = np.zeros(votes.alive.size, dtype=np.bool_)
    for layer in votes.layers:
        size = layer.stop - (layer.start or 0)
        if size == 0:
            continue
        keep = max(1, keep_count(size, votes.target))
        ranked = _rank_alive(votes, layer)
        out[layer][ranked[:keep]] = True
    return out


def majority(votes: VoteInput) -> BoolArray:
    """Keep a unit iff it is alive and at least half the vote keeps it.

    A layer whose alive units all fall below half keeps its best-voted unit (same tie
    break as top-votes), so no layer is cut.
    """
    out = votes.alive & (votes.share >= 0.5)
    for layer in votes.layers:
        if votes.alive[layer].any() and not out[layer].any():
            out[layer][_rank_alive(votes, layer)[0]] = True
    return out


RULES: Mapping[ConsensusName, ConsensusRule] = MappingProxyType({
    ConsensusName.THRESHOLD_SCAN: threshold_scan,
    ConsensusName.TOP_VOTES: top_votes,
    ConsensusName.MAJORITY: majority,
})


def get_rule(name: str) -> ConsensusRule:
    """Look a consensus rule up by its config name."""
    return lookup(RULES, name, "consensus rule", "rule")


def consensus_mask(
    tally: VoteTally,
    alive: BoolArray,
    layers: Sequence[slice],
    target: float,
    rule: str = DEFAULT_RULE,
    history: FloatArray | None = None,
) -> BoolArray:
    """The next global mask from one round's votes, by the named rule."""
    return get_rule(rule)(VoteInput.from_tally(tally, alive, layers, target, history))
