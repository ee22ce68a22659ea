"""Streaming vote counts: the masks of one round, summed as they arrive.

Masks are flat bool arrays in canonical unit order; a node's mask C_n says which units it
keeps. :class:`VoteAccumulator` adds masks in memory independent of how many arrive, and
yields a :class:`VoteTally` with each unit's vote share s_u = sum_n a_n C_n[u] / sum_n a_n.
Partial counts ``merge`` exactly, so regional coordinators can forward them upstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mpfl.errors import ConfigError, FederationError, ModelError

BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]


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

    @classmethod
    def from_planes(cls, n_units: int, planes: list[bytes], n_voters: int) -> VoteAccumulator:
        """Unweighted votes of ``n_voters`` masks from their bit planes (``packed_planes``)."""
        votes = cls(n_units)
        size = votes._n_words * 8
        for plane in planes:
            if len(plane) != votes._n_bytes:
                raise ModelError("vote plane length does not fit", expected=votes._n_bytes,
                                 got=len(plane))
            words = np.zeros(size, dtype=np.uint8)
            words[: votes._n_bytes] = np.frombuffer(plane, dtype=np.uint8)
            votes._planes.append(words.view(np.uint64))
        votes.n_voters, votes.total_weight = n_voters, float(n_voters)
        return votes

    @classmethod
    def from_sums(cls, sums: FloatArray, total_weight: float, n_voters: int) -> VoteAccumulator:
        """Weighted votes: per-unit sums of the voters' weights, and their total."""
        votes = cls(sums.size, weighted=True)
        votes._sums = np.array(sums, dtype=np.float64)
        votes.n_voters, votes.total_weight = n_voters, float(total_weight)
        return votes

    def packed_planes(self) -> list[bytes]:
        """The unweighted counter, plane k holding bit k of every unit's count, each
        ``packed_size(n_units)`` bytes in ``np.packbits`` order."""
        if self.weighted:
            raise ConfigError("a weighted accumulator holds weighted sums, not bit planes")
        return [plane.view(np.uint8)[: self._n_bytes].tobytes() for plane in self._planes]

    @property
    def weighted_sums(self) -> FloatArray:
        """Per-unit sums of the voters' weights (weighted mode)."""
        if not self.weighted:
            raise ConfigError("an unweighted accumulator holds counts, not weighted sums")
        return self._sums

    def counts(self) -> NDArray[np.int64]:
        """Per-unit number of keep votes (uniform mode)."""
        if self.weighted:
            raise ConfigError("a weighted accumulator holds weighted sums, not counts")
        counts = np.zeros(self.n_units, dtype=np.int64)
        for k, plane in enumerate(self._planes):
            bits = np.unpackbits(plane.view(np.uint8), count=self.n_units)
            counts += bits.astype(np.int64) << k
        return counts

    @property
    def counter_bits(self) -> int:
        """Bits per unit the bit-sliced counter uses so far (0 in weighted mode)."""
        return len(self._planes)

    def tally(self) -> VoteTally:
        """Each unit's keep share; raises FederationError before the first vote."""
        if self.n_voters == 0:
            raise FederationError("no masks were received this round", n_units=self.n_units)
        votes = self._sums if self.weighted else self.counts().astype(np.float64)
        share = np.clip(votes / self.total_weight, 0.0, 1.0)
        return VoteTally(share=share, total_weight=self.total_weight, n_voters=self.n_voters)


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
