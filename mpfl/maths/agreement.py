"""Mask agreement: down-weight voters whose local mask disagrees with the round's majority.

A node that votes at random (a broken or hostile one) still pulls every unit's keep share
towards its own mask. :class:`AgreementVotes` keeps each voter's mask bit-packed (n_units
/ 8 bytes a node: a 1,000-node round of a 1M-unit model holds 125 MB, so this is for
filter-granularity or small weight-granularity masks), and at ``tally`` scores each
voter by its agreement with the weighted majority: the fraction of the units anyone
kept (units dead for everyone agree trivially) on which the node's bit equals the
majority's. Two independent masks agree on about half the units, so a score is mapped
onto a weight factor from 0.5 (a coin flip: factor 0) to the round's median score
(factor 1): honest voters keep their weight, random ones lose it. The tally is then
recounted with the new weights. It has the interface of ``VoteAccumulator``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from mpfl.errors import FederationError, ModelError
from mpfl.maths.votes import BoolArray, FloatArray, VoteAccumulator, VoteTally

CHANCE = 0.5  # the agreement of a mask that shares nothing with the majority


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
            self.scores = (masks[:, contested] == majority[contested]).mean(axis=1)
        else:
            self.scores = np.ones(len(masks))
        reference = float(np.median(self.scores))
        if reference > CHANCE:
            self.factors = np.clip((self.scores - CHANCE) / (reference - CHANCE), 0.0, 1.0)
        else:  # no agreement to speak of: leave the votes as they are
            self.factors = np.ones(len(masks))
        adjusted = weights * self.factors
        if adjusted.sum() <= 0.0:
            adjusted = weights
        kept = adjusted > 0.0
        share = np.clip(adjusted @ masks / adjusted.sum(), 0.0, 1.0)
        return VoteTally(share=share, total_weight=float(adjusted.sum()),
                         n_voters=int(kept.sum()))
