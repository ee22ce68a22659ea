"""Mask agreement: down-weight voters whose local mask disagrees with the round's majority.

A node that votes at random (a broken or hostile one) still pulls every unit's keep share
towards its own mask. :class:`AgreementVotes` keeps each voter's mask bit-packed (n_units
/ 8 bytes a node: a 1,000-node round of a 1M-unit model holds 125 MB, so this is for
filter-granularity or small weight-granularity masks), and at ``tally`` scores each
voter by its agreement with the weighted majority: the fraction of the units anyone
kept (units dead for everyone agree trivially) on which the node's bit equals the
majority's. A random mask that keeps a fraction p of those units, against a majority
keeping q, agrees on p q + (1 - p)(1 - q) of them by chance; a voter's weight factor goes
from 0 at that chance level to 1 at the round's median excess over chance: honest voters
keep their weight, random ones lose it. The tally is then
recounted with the new weights. It has the interface of ``VoteAccumulator``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from mpfl.errors import FederationError, ModelError
from mpfl.maths.votes import BoolArray, FloatArray, VoteAccumulator, VoteTally

CHANCE = 0.5  # two coin-flip masks


class AgreementVotes:
    def __init__(self, n_units: int, weighted: bool = False) -> None:
        if n_units < 0:
            raise ModelError("a mask cannot have a negative number of units", n_units=n_units)
        self.n_units = n_units
        self.weighted = weighted
        self._masks: list[NDArray[np.uint8]] = []
        self._weights: list[float] = []
        self.scores: FloatArray = np.zeros(0)  # per voter, in arrival order, after tally
        self.factors: FloatArray = np.zeros(0)

    @property
    def n_voters(self) -> int:
        return len(self._masks)

    def add(self, mask: BoolArray, weight: float = 1.0) -> None:
        # The plain accumulator checks the mask and the weight the same way.
        VoteAccumulator(self.n_units, self.weighted).add(mask, weight)
        self._masks.append(np.packbits(mask))
        self._weights.append(float(weight))

    def _masks_bool(self) -> NDArray[np.bool_]:
        return np.stack([np.unpackbits(m, count=self.n_units).view(np.bool_)
                         for m in self._masks])

    def tally(self) -> VoteTally:
        if not self._masks:
            raise FederationError("no masks were received this round", n_units=self.n_units)
        masks = self._masks_bool()
        weights = np.asarray(self._weights)
        share = weights @ masks / weights.sum()
        majority = share >= 0.5
        contested = share > 0.0
        if contested.any():
            kept, wanted = masks[:, contested], majority[contested]
            self.scores = (kept == wanted).mean(axis=1)
            # What a random mask keeping as many units would score: p q + (1 - p)(1 - q).
            p, q = kept.mean(axis=1), wanted.mean()
            chance = p * q + (1.0 - p) * (1.0 - q)
        else:
            self.scores, chance = np.ones(len(masks)), np.full(len(masks), CHANCE)
        above = self.scores - chance
        reference = float(np.median(above))
        if reference > 0.0:
            self.factors = np.clip(above / reference, 0.0, 1.0)
        else:  # no agreement to speak of: leave the votes as they are
            self.factors = np.ones(len(masks))
        adjusted = weights * self.factors
        if adjusted.sum() <= 0.0:
            adjusted = weights
        kept = adjusted > 0.0
        share = np.clip(adjusted @ masks / adjusted.sum(), 0.0, 1.0)
        return VoteTally(share=share, total_weight=float(adjusted.sum()),
                         n_voters=int(kept.sum()))
