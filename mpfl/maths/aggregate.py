"""Aggregation of the alive values nodes send in phase T.

Every update is a flat float32 array of the alive values in canonical order, the same
length for every node (the mask is shared, so no indices travel). One round's aggregate is
an :class:`Aggregation`: ``add(values, weight)`` per update as it arrives, then
``result()``. FedAvg streams: :class:`WeightedAverager` holds O(values) float64 sums
whatever the number of nodes, and partial averages ``merge`` exactly. The robust rules
(median, trimmed mean) need every update at once, so :class:`BufferedAggregation` holds
them, O(nodes x values), and ignores sample counts: a node could claim any count, and
robustness is their point. :class:`NormClipped` (buffered too) clips each update's step
from the global model to the round's median step, then averages by sample count.
:class:`NearestMedian` (buffered) averages the updates nearest the coordinate-wise median
and drops the ``trim`` fraction farthest from it, whatever direction they point in;
``median-outliers`` drops only those of them that are outliers in that distance.
:data:`AGGREGATORS` maps a config name to a factory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from mpfl.choices import AggregatorName
from mpfl.errors import ConfigError, FederationError, ModelError, lookup

Values = NDArray[np.float32]

# Elements multiplied per step in float64, so adding an update needs no full-size temporary.
_CHUNK = 1 << 16


def _check_values(values: NDArray[Any], n_values: int, index: int | None = None) -> None:
    if not isinstance(values, np.ndarray) or values.ndim != 1:
        raise ModelError("an update must be a flat array", update=index)
    if values.size != n_values:
        raise ModelError(
            "update length does not fit", expected=n_values, got=values.size, update=index
        )
    if values.dtype.kind != "f":
        raise ModelError("an update must hold floats", dtype=str(values.dtype), update=index)
    if not np.isfinite(values).all():
        raise FederationError("an update holds NaN or infinite values", update=index)


def _check_weight(weight: float, index: int | None = None) -> float:
    weight = float(weight)
    if not (math.isfinite(weight) and weight > 0.0):
        raise FederationError(
            "an update weight must be positive and finite", weight=weight, update=index
        )
    return weight


class Aggregation(Protocol):
    """One round's aggregate of node values."""

    def add(self, values: NDArray[Any], weight: float = 1.0) -> None:
        """Take one node's values; ``weight`` is its sample count (or 1)."""
        ...

    def result(self) -> Values:
        """The aggregate as float32; FederationError before the first update."""
        ...


class WeightedAverager:
    """Streaming weighted mean (FedAvg): ``add`` updates as they arrive, read ``result``."""

    def __init__(self, n_values: int) -> None:
        if n_values < 0:
            raise ModelError("an update cannot have a negative length", n_values=n_values)
        self.n_values = n_values
        self.n_updates = 0
        self.total_weight = 0.0
        self._sums = np.zeros(n_values, dtype=np.float64)
        self._scratch = np.empty(min(n_values, _CHUNK), dtype=np.float64)

    def add(self, values: NDArray[Any], weight: float = 1.0) -> None:
        """Add one node's values with weight ``weight`` (its sample count, or 1)."""
        _check_values(values, self.n_values)
        weight = _check_weight(weight)
        for start in range(0, self.n_values, _CHUNK):
            stop = min(start + _CHUNK, self.n_values)
            scratch = self._scratch[: stop - start]
            np.multiply(values[start:stop], weight, out=scratch, dtype=np.float64)
            self._sums[start:stop] += scratch
        self.n_updates += 1
        self.total_weight += weight

    def merge(self, other: WeightedAverager) -> None:
        """Add another averager's sums (regional partial aggregates add up)."""
        if other.n_values != self.n_values:
            raise ModelError(
                "cannot merge updates of different lengths",
                expected=self.n_values,
                got=other.n_values,
            )
        self._sums += other._sums
        self.n_updates += other.n_updates
        self.total_weight += other.total_weight

    @classmethod
    def from_sums(cls, sums: NDArray[np.float64], total_weight: float,
                  n_updates: int) -> WeightedAverager:
        """An averager holding sums made elsewhere (a region's), ready to ``merge``."""
        averager = cls(sums.size)
        averager._sums = np.array(sums, dtype=np.float64)
        averager.n_updates, averager.total_weight = n_updates, float(total_weight)
        return averager

    @property
    def sums(self) -> NDArray[np.float64]:
        """Sum over updates of weight x values, in float64."""
        return self._sums

    def result(self) -> Values:
        """The weighted mean as float32; FederationError before the first update."""
        if self.n_updates == 0:
            raise FederationError("no updates were received this round", n_values=self.n_values)
        return (self._sums / self.total_weight).astype(np.float32)


def _common_length(updates: Sequence[NDArray[Any]]) -> int:
    """The length every update must have (the first one's); checks all of them."""
    if len(updates) == 0:
        raise FederationError("no updates to aggregate")
    first = updates[0]
    n_values = first.size if isinstance(first, np.ndarray) else -1
    for i, values in enumerate(updates):
        _check_values(values, n_values, index=i)
    return n_values


def _stack(updates: Sequence[NDArray[Any]]) -> NDArray[Any]:
    _common_length(updates)
    return np.stack(updates)


def _check_weights(weights: Sequence[float] | None, n_updates: int) -> list[float]:
    if weights is None:
        return [1.0] * n_updates
    if len(weights) != n_updates:
        raise ModelError("one weight per update", expected=n_updates, got=len(weights))
    return [_check_weight(w, index=i) for i, w in enumerate(weights)]


def weighted_mean(
    updates: Sequence[NDArray[Any]], weights: Sequence[float] | None = None
) -> Values:
    """FedAvg: the mean of the updates weighted by sample count (equal weights if None)."""
    averager = WeightedAverager(_common_length(updates))
    for values, weight in zip(updates, _check_weights(weights, len(updates)), strict=True):
        averager.add(values, weight)
    return averager.result()


def median(updates: Sequence[NDArray[Any]]) -> Values:
    """Coordinate-wise median. Holds every update: O(nodes x values)."""
    return np.median(_stack(updates), axis=0).astype(np.float32)


def trimmed_mean(updates: Sequence[NDArray[Any]], trim: float = 0.1) -> Values:
    """Coordinate-wise mean after dropping the floor(trim * N) lowest and highest values.

    Holds every update: O(nodes x values).
    """
    if not (0.0 <= trim < 0.5):
        raise ConfigError("trim must be in [0, 0.5)", trim=trim)
    stacked = _stack(updates)
    n = stacked.shape[0]
    cut = math.floor(trim * n)
    kept = np.sort(stacked, axis=0)[cut : n - cut]
    return kept.mean(axis=0, dtype=np.float64).astype(np.float32)


def clip_norm(update: NDArray[Any], base: NDArray[Any], max_norm: float) -> Values:
    """Shrink ``update - base`` to L2 norm at most ``max_norm`` and return base + delta.

    Applied to each node's values before averaging, it bounds how far one node can move
    the global weights in a round.
    """
    if not (math.isfinite(max_norm) and max_norm > 0.0):
        raise ConfigError("max_norm must be positive and finite", max_norm=max_norm)
    _check_values(base, base.size if isinstance(base, np.ndarray) else -1)
    _check_values(update, base.size)
    delta = update.astype(np.float64) - base.astype(np.float64)
    norm = float(np.linalg.norm(delta))
    if norm > max_norm:
        delta *= max_norm / norm
    return (base.astype(np.float64) + delta).astype(np.float32)


class NormClipped:
    """FedAvg of the updates after clipping each one's delta from the global model to the
    round's median delta norm (L2). Buffered, O(nodes x values): the threshold is the
    median of norms only known once every update is in, which is what makes it need no
    tuning; a fixed threshold would stream but must be guessed per model and round.

    A node scaling its values (x100) or flipping their sign moves the average by at most
    the honest median step; sample-count weights still apply (bounded by ``max_samples``).
    """

    def __init__(self, n_values: int, base: NDArray[Any] | None = None) -> None:
        self.n_values = n_values
        if base is not None:
            _check_values(base, n_values)
        self.base = (np.zeros(n_values, np.float64) if base is None
                     else base.astype(np.float64))
        self._deltas: list[NDArray[np.float32]] = []
        self._weights: list[float] = []

    def add(self, values: NDArray[Any], weight: float = 1.0) -> None:
        index = len(self._deltas)
        _check_values(values, self.n_values, index=index)
        weight = _check_weight(weight, index=index)
        self._deltas.append((values.astype(np.float64) - self.base).astype(np.float32))
        self._weights.append(weight)

    def norms(self) -> NDArray[np.float64]:
        return np.array([np.linalg.norm(d.astype(np.float64)) for d in self._deltas])

    def result(self) -> Values:
        if not self._deltas:
            raise FederationError("no updates were received this round", n_values=self.n_values)
        norms = self.norms()
        bound = float(np.median(norms))
        averager = WeightedAverager(self.n_values)
        for delta, norm, weight in zip(self._deltas, norms, self._weights, strict=True):
            scale = bound / norm if norm > bound else 1.0
            averager.add(delta * np.float32(scale), weight)
        return (self.base + averager.result()).astype(np.float32)


OUTLIER_MADS = 3.0
"""Hampel's rule: a distance beyond the median distance plus 3 scaled MADs is an outlier."""
_MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal data


def nearest_median_keep(updates: Sequence[NDArray[Any]], trim: float,
                        outliers_only: bool = False) -> NDArray[np.intp]:
    """Indices of the updates kept by :class:`NearestMedian`, nearest the median first.

    Drops the ``floor(trim * N)`` updates farthest (L2) from the coordinate-wise median;
    with ``outliers_only``, only those of them whose distance is an outlier among the
    round's distances (:data:`OUTLIER_MADS`).
    """
    if not (0.0 <= trim < 0.5):
        raise ConfigError("trim must be in [0, 0.5)", trim=trim)
    stacked = _stack(updates)
    centre = np.median(stacked, axis=0)
    distances = np.array([np.linalg.norm(row.astype(np.float64) - centre) for row in stacked])
    n_dropped = math.floor(trim * stacked.shape[0])
    if outliers_only:
        typical = float(np.median(distances))
        spread = _MAD_TO_SIGMA * float(np.median(np.abs(distances - typical)))
        n_dropped = min(n_dropped, int((distances > typical + OUTLIER_MADS * spread).sum()))
    # A stable sort: equal distances keep arrival order, so the result is deterministic.
    return np.argsort(distances, kind="stable")[:stacked.shape[0] - n_dropped]


class NearestMedian:
    """FedAvg of the updates nearest the coordinate-wise median (buffered, O(nodes x values)).

    The median is a robust centre while fewer than half the nodes are bad, but taken as
    the aggregate it is biased by the bad side of each coordinate (two sign-flipped nodes
    of ten shift every coordinate's median by one order statistic) and it throws away the
    averaging that honest updates need. Here it only ranks: the ``floor(trim * N)``
    updates farthest from it are dropped whole, and the rest are averaged by (capped)
    sample count. A flipped, scaled or wrongly trained update is far from the median
    whatever direction it points in, and the honest ones are averaged as FedAvg would.
    ``trim`` is the fraction of bad nodes the fleet is sized to tolerate, as for
    trimmed-mean; with trim 0 this is FedAvg. The same idea as Multi-Krum's selection,
    ranked by distance to the median (O(nodes x values)) rather than by pairwise distances
    (O(nodes^2 x values)).

    On non-iid data an honest node with skewed classes is also far from the median, and
    dropping a fixed count drops it on a clean round. ``outliers_only`` (the
    ``median-outliers`` rule) drops at most that count, and only updates whose distance is
    an outlier among the round's distances: a clean round keeps (nearly) everyone.
    """

    def __init__(self, n_values: int, trim: float, outliers_only: bool = False) -> None:
        if not (0.0 <= trim < 0.5):
            raise ConfigError("trim must be in [0, 0.5)", trim=trim)
        self.n_values = n_values
        self.trim = trim
        self.outliers_only = outliers_only
        self._updates: list[NDArray[Any]] = []
        self._weights: list[float] = []
        self.kept: NDArray[np.intp] = np.zeros(0, dtype=np.intp)  # arrival indices, after result

    def add(self, values: NDArray[Any], weight: float = 1.0) -> None:
        index = len(self._updates)
        _check_values(values, self.n_values, index=index)
        self._weights.append(_check_weight(weight, index=index))
        self._updates.append(values)

    def result(self) -> Values:
        if not self._updates:
            raise FederationError("no updates were received this round", n_values=self.n_values)
        self.kept = nearest_median_keep(self._updates, self.trim, self.outliers_only)
        averager = WeightedAverager(self.n_values)
        for index in sorted(self.kept):
            averager.add(self._updates[index], self._weights[index])
        return averager.result()


class BufferedAggregation:
    """Holds every update for a rule that needs them all at once: O(nodes x values).

    Weights are checked like FedAvg's but not used (see the module docstring).
    """

    def __init__(self, n_values: int, rule: Callable[[Sequence[NDArray[Any]]], Values]) -> None:
        self.n_values = n_values
        self.rule = rule
        self._updates: list[NDArray[Any]] = []

    def add(self, values: NDArray[Any], weight: float = 1.0) -> None:
        index = len(self._updates)
        _check_values(values, self.n_values, index=index)
        _check_weight(weight, index=index)
        self._updates.append(values)

    def result(self) -> Values:
        if not self._updates:
            raise FederationError("no updates were received this round", n_values=self.n_values)
        return self.rule(self._updates)


AggregationFactory = Callable[[int, "NDArray[Any] | None", float], Aggregation]
"""Makes an empty aggregation for updates of ``n_values`` values; then the global values
the round started from (None: unknown), for rules relative to it, and the trimmed mean's
cut fraction."""


def _fedavg(n_values: int, base: NDArray[Any] | None, trim: float) -> Aggregation:
    return WeightedAverager(n_values)


def _median(n_values: int, base: NDArray[Any] | None, trim: float) -> Aggregation:
    return BufferedAggregation(n_values, median)


def _trimmed_mean(n_values: int, base: NDArray[Any] | None, trim: float) -> Aggregation:
    if not (0.0 <= trim < 0.5):
        raise ConfigError("trim must be in [0, 0.5)", trim=trim)
    return BufferedAggregation(n_values, lambda updates: trimmed_mean(updates, trim))


def _norm_clip(n_values: int, base: NDArray[Any] | None, trim: float) -> Aggregation:
    return NormClipped(n_values, base)


def _nearest_median(n_values: int, base: NDArray[Any] | None, trim: float) -> Aggregation:
    return NearestMedian(n_values, trim)


def _median_outliers(n_values: int, base: NDArray[Any] | None, trim: float) -> Aggregation:
    return NearestMedian(n_values, trim, outliers_only=True)


AGGREGATORS: Mapping[AggregatorName, AggregationFactory] = MappingProxyType({
    AggregatorName.FEDAVG: _fedavg,
    AggregatorName.MEDIAN: _median,
    AggregatorName.TRIMMED_MEAN: _trimmed_mean,
    AggregatorName.NORM_CLIP: _norm_clip,
    AggregatorName.NEAREST_MEDIAN: _nearest_median,
    AggregatorName.MEDIAN_OUTLIERS: _median_outliers,
})


def new_aggregation(
    name: str, n_values: int, base: NDArray[Any] | None = None, trim: float = 0.1
) -> Aggregation:
    """An empty aggregation by its config name, for updates of ``n_values`` values, from
    the global values ``base`` (norm clipping measures each update's step from it);
    ``trim``: the fraction the trimmed mean cuts on each side."""
    return lookup(AGGREGATORS, name, "aggregator", "aggregator")(n_values, base, trim)


def aggregate(
    name: str, updates: Sequence[NDArray[Any]], weights: Sequence[float] | None = None
) -> Values:
    """Aggregate a batch of updates with the named rule (weights are sample counts)."""
    aggregation = new_aggregation(name, _common_length(updates))
    for values, weight in zip(updates, _check_weights(weights, len(updates)), strict=True):
        aggregation.add(values, weight)
    return aggregation.result()
