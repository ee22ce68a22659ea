"""A regional coordinator's partial aggregate: one round of its nodes, summed, going upstream.

Votes and weighted sums add up, so a region forwards what it counted instead of what its
nodes sent, and the root merges it exactly (``mpfl.maths.votes.VoteAccumulator.merge``,
``mpfl.maths.aggregate.WeightedAverager.merge``). It travels as the payload of an envelope
of kind ``PARTIAL`` (codec 0) on ``nodes/<region>/partial``, signed like any node message.

All integers are little-endian and unsigned, floats IEEE-754 binary64. The layout:

    offset  size     field
    0       1        contents      bit 0: votes, bit 1: values, bit 2: votes are weighted
    1       1        planes        P: bit planes of an unweighted vote count (else 0)
    2       2        reserved      must be 0
    4       4        units         U: units the votes count (the alive units of the mask in
                                   force: votes for pruned units are 0 and do not travel)
    8       4        voters        masks counted (0 without votes)
    12      8        vote weight   sum of the voters' weights (= voters when unweighted)
    20      4        updates       value updates summed (0 without values)
    24      4        values        V: length of the value sums (0 without values)
    28      8        value weight  sum of the updates' weights (their sample counts)
    36      ...      votes         unweighted: P planes of ceil(U / 8) bytes, plane k holding
                                   bit k of every counted unit's keep count (``np.packbits``
                                   order, the last byte's spare bits 0); weighted: U float64
                                   sums
    ...     8 V      value sums    sum over updates of weight x value, per alive value

An unweighted count costs ceil(log2(N + 1)) bits per unit for N voters; the value sums are
float64, so the root's result equals the flat federation's to float64 rounding whatever
the number of nodes behind the region. Decoding is strict: sizes are checked against the
receiver's model, every count against the voters, and one byte too many is an error.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mpfl.errors import WireError

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

HAS_VOTES = 0x01
HAS_VALUES = 0x02
WEIGHTED_VOTES = 0x04
MAX_PLANES = 32  # a u32 count of voters needs at most 32 bits per unit

_HEADER = struct.Struct("<BBHIIdIId")
HEADER_SIZE = _HEADER.size  # 36
_F64 = np.dtype("<f8")


@dataclass(frozen=True, eq=False)
class VoteCounts:
    """Keep votes of ``voters`` masks: bit planes when unweighted, float64 sums when not."""

    voters: int
    weight: float
    planes: tuple[bytes, ...] = ()
    sums: FloatArray | None = None

    @property
    def weighted(self) -> bool:
        return self.sums is not None


@dataclass(frozen=True, eq=False)
class ValueSums:
    """Sum over ``updates`` updates of weight x alive values, and the weights' total."""

    updates: int
    weight: float
    sums: FloatArray


@dataclass(frozen=True, eq=False)
class PartialAggregate:
    n_units: int
    votes: VoteCounts | None = None
    values: ValueSums | None = None


def _positive(weight: float, what: str) -> None:
    if not (math.isfinite(weight) and weight > 0.0):
        raise WireError(f"partial aggregate: {what} must be positive and finite", got=weight)


def _scoped(plane: bytes, scope: BoolArray | None, n_units: int) -> bytes:
    if scope is None:
        return plane
    bits = np.unpackbits(np.frombuffer(plane, dtype=np.uint8), count=n_units)
    return np.packbits(bits[scope]).tobytes()


def _unscoped(plane: bytes, scope: BoolArray | None, n_counted: int) -> bytes:
    if scope is None:
        return plane
    bits = np.zeros(scope.size, dtype=np.uint8)
    bits[scope] = np.unpackbits(np.frombuffer(plane, dtype=np.uint8), count=n_counted)
    return np.packbits(bits).tobytes()


def encode_partial(partial: PartialAggregate, scope: BoolArray | None = None) -> bytes:
    """The payload; with ``scope`` (the mask in force), only its alive units' votes."""
    votes, values = partial.votes, partial.values
    n_counted = partial.n_units if scope is None else int(scope.sum())
    contents = (HAS_VOTES if votes else 0) | (HAS_VALUES if values else 0)
    parts: list[bytes] = []
    n_planes = 0
    if votes is not None:
        _positive(votes.weight, "the vote weight")
        if votes.sums is not None:
            contents |= WEIGHTED_VOTES
            sums = votes.sums if scope is None else votes.sums[scope]
            parts.append(np.asarray(sums, dtype=_F64).tobytes())
        else:
            n_planes = len(votes.planes)
            if n_planes > MAX_PLANES:
                raise WireError("partial aggregate: too many vote planes", planes=n_planes)
            parts.extend(_scoped(p, scope, partial.n_units) for p in votes.planes)
    if values is not None:
        _positive(values.weight, "the value weight")
        parts.append(np.asarray(values.sums, dtype=_F64).tobytes())
    header = _HEADER.pack(
        contents, n_planes, 0, n_counted,
        votes.voters if votes else 0, votes.weight if votes else 0.0,
        values.updates if values else 0, values.sums.size if values else 0,
        values.weight if values else 0.0,
    )
    return header + b"".join(parts)


def decode_partial(payload: bytes, n_units: int, n_values: int,
                   scope: BoolArray | None = None) -> PartialAggregate:
    """A partial aggregate for a model of ``n_units`` units and ``n_values`` alive values
    (the round's), with votes over ``scope``'s alive units (None: all), or a WireError
    saying what does not fit. Its votes come back over all ``n_units`` units."""
    data = bytes(payload)
    if scope is not None and scope.size != n_units:
        raise WireError("partial aggregate: the scope does not fit the model",
                        expected=n_units, got=scope.size)
    n_counted = n_units if scope is None else int(scope.sum())
    if len(data) < HEADER_SIZE:
        raise WireError("partial aggregate shorter than its header", got=len(data))
    (contents, n_planes, reserved, units, voters, vote_weight, updates, values_len,
     value_weight) = _HEADER.unpack_from(data)
    if reserved or contents & ~(HAS_VOTES | HAS_VALUES | WEIGHTED_VOTES):
        raise WireError("partial aggregate: reserved bits set", contents=contents)
    if units != n_counted:
        raise WireError("partial aggregate counts another mask", expected=n_counted, got=units)
    pos = HEADER_SIZE
    votes = None
    if contents & HAS_VOTES:
        votes, pos = _decode_votes(data, pos, contents, n_planes, units, voters, vote_weight)
        if scope is not None:
            votes = _expand(votes, scope, units)
    elif n_planes or voters or vote_weight or contents & WEIGHTED_VOTES:
        raise WireError("partial aggregate: vote fields set without votes")
    values = None
    if contents & HAS_VALUES:
        if values_len != n_values:
            raise WireError("partial aggregate: value sums do not fit the round",
                            expected=n_values, got=values_len)
        if updates < 1:
            raise WireError("partial aggregate: value sums of no update")
        _positive(value_weight, "the value weight")
        sums = _floats(data, pos, n_values, "value sums")
        pos += 8 * n_values
        values = ValueSums(updates, value_weight, sums)
    elif updates or values_len or value_weight:
        raise WireError("partial aggregate: value fields set without values")
    if pos != len(data):
        raise WireError("partial aggregate: trailing bytes", extra=len(data) - pos)
    if votes is None and values is None:
        raise WireError("partial aggregate holds neither votes nor values")
    return PartialAggregate(n_units, votes, values)


def _expand(votes: VoteCounts, scope: BoolArray, n_counted: int) -> VoteCounts:
    """Votes over the scope's units back over every unit (0 for the pruned ones)."""
    if votes.sums is not None:
        sums = np.zeros(scope.size, dtype=np.float64)
        sums[scope] = votes.sums
        return VoteCounts(votes.voters, votes.weight, sums=sums)
    planes = tuple(_unscoped(p, scope, n_counted) for p in votes.planes)
    return VoteCounts(votes.voters, votes.weight, planes=planes)


def _floats(data: bytes, pos: int, count: int, what: str) -> FloatArray:
    if pos + 8 * count > len(data):
        raise WireError(f"partial aggregate truncated in the {what}", need=8 * count,
                        available=max(len(data) - pos, 0))
    array = np.frombuffer(data, dtype=_F64, count=count, offset=pos).astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise WireError(f"partial aggregate: {what} hold NaN or infinite values")
    return array


def _decode_votes(
    data: bytes, pos: int, contents: int, n_planes: int, n_units: int, voters: int,
    weight: float,
) -> tuple[VoteCounts, int]:
    if voters < 1:
        raise WireError("partial aggregate: votes of no voter")
    _positive(weight, "the vote weight")
    if contents & WEIGHTED_VOTES:
        if n_planes:
            raise WireError("partial aggregate: weighted votes have no bit planes")
        sums = _floats(data, pos, n_units, "vote sums")
        if np.any(sums < 0.0) or np.any(sums > weight * (1.0 + 1e-9)):
            raise WireError("partial aggregate: a unit's votes exceed the voters' weight")
        return VoteCounts(voters, weight, sums=sums), pos + 8 * n_units
    if weight != float(voters):
        raise WireError("partial aggregate: unweighted votes weigh one per voter",
                        voters=voters, weight=weight)
    if n_planes > min(MAX_PLANES, voters.bit_length()):  # 0 planes: nobody kept a unit
        raise WireError("partial aggregate: bit planes do not fit the voters",
                        planes=n_planes, voters=voters)
    size = (n_units + 7) // 8
    end = pos + n_planes * size
    if end > len(data):
        raise WireError("partial aggregate truncated in the vote planes",
                        need=end - pos, available=max(len(data) - pos, 0))
    planes = tuple(data[pos + k * size : pos + (k + 1) * size] for k in range(n_planes))
    spare = size * 8 - n_units
    if spare and any(plane[-1] & ((1 << spare) - 1) for plane in planes):
        raise WireError("partial aggregate: vote plane bits set past the last unit")
    counts = np.zeros(n_units, dtype=np.int64)
    for k, plane in enumerate(planes):
        bits = np.unpackbits(np.frombuffer(plane, dtype=np.uint8), count=n_units)
        counts += bits.astype(np.int64) << k
    if n_units and int(counts.max()) > voters:
        raise WireError("partial aggregate: a unit has more keep votes than voters",
                        voters=voters, most=int(counts.max()))
    return VoteCounts(voters, weight, planes=planes), end
