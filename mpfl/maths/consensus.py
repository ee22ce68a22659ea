"""Mask consensus: the rules that turn one round's votes into the next global mask.

Masks are flat bool arrays in canonical unit order; ``layers`` are contiguous slices of
that array, one per prunable layer. The votes come from :mod:`mpfl.maths.votes`. A
consensus rule is one callable ``rule(VoteInput) -> mask``, registered by name in
:data:`RULES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from mpfl.choices import ConsensusName
from mpfl.errors import ConfigError, FederationError, ModelError, lookup
from mpfl.maths.layer_sparsity import Allocation, uniform
from mpfl.maths.schedules import keep_count
from mpfl.maths.votes import BoolArray, FloatArray, VoteTally

DEFAULT_RULE = ConsensusName.TOP_VOTES


# -- consensus rules ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VoteInput:
    """Everything a consensus rule may look at.

    ``share``: each unit's keep share; ``alive``: units alive in the current global mask
    (a rule never revives a pruned unit); ``layers``: contiguous slices covering the units;
    ``target``: this round's sparsity r_t, shared among the layers by ``allocation``;
    ``n_voters``: masks counted; ``history``: optional cumulative shares of earlier rounds,
    used only to break ties.
    """

    share: FloatArray
    alive: BoolArray
    layers: tuple[slice, ...]
    target: float
    n_voters: int
    history: FloatArray | None = None
    allocation: Allocation = uniform

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

    def layer_targets(self) -> tuple[float, ...]:
        """Each layer's sparsity this round."""
        return self.allocation([layer.stop - (layer.start or 0) for layer in self.layers],
                               self.target)

    @classmethod
    def from_tally(
        cls,
        tally: VoteTally,
        alive: BoolArray,
        layers: Sequence[slice],
        target: float,
        history: FloatArray | None = None,
        allocation: Allocation = uniform,
    ) -> VoteInput:
        return cls(
            share=tally.share,
            alive=alive,
            layers=tuple(layers),
            target=target,
            n_voters=tally.n_voters,
            history=history,
            allocation=allocation,
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
    for layer, target in zip(votes.layers, votes.layer_targets(), strict=True):
        share, alive = votes.share[layer], votes.alive[layer]
        size = share.size
        if size == 0:
            continue
        alive_sorted = np.sort(share[alive])
        kept = alive_sorted.size - np.searchsorted(alive_sorted, taus, side="left")
        reaches = (size - kept) / size >= target
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
    """Keep exactly ceil((1 - r_l) * n_layer) alive units per layer, the best-voted, with
    r_l the layer's share of r_t.

    n_layer counts all the layer's units, alive or not, so the layer hits r_t exactly.
    Never revives a pruned unit: with fewer alive units than the keep count, all alive
    units stay. Keeps at least one unit per layer while the layer has any alive, since a
    layer with no units cuts the network.
    """
    out = np.zeros(votes.alive.size, dtype=np.bool_)
    for layer, target in zip(votes.layers, votes.layer_targets(), strict=True):
        size = layer.stop - (layer.start or 0)
        if size == 0:
            continue
        keep = max(1, keep_count(size, target))
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
    allocation: Allocation = uniform,
) -> BoolArray:
    """The next global mask from one round's votes, by the named rule."""
    return get_rule(rule)(VoteInput.from_tally(tally, alive, layers, target, history,
                                               allocation))
