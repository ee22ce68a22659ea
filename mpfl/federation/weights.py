"""The weights a federation shares: w0, the consensus mask and the averaged alive values.

Built from the config alone (zoo model, seed, granularity), so the coordinator and every
node agree on w0 and on the canonical unit order without any weights on the wire first.
"""

from __future__ import annotations

import numpy as np

from mpfl.config.settings import FederationConfig
from mpfl.maths.consensus import ConsensusRule, VoteInput
from mpfl.maths.layer_sparsity import Allocation
from mpfl.maths.server_optimizers import ServerOptimizer, TakeAverage, new_server_optimizer
from mpfl.maths.votes import VoteTally
from mpfl.ml.models import build_model
from mpfl.ml.units import State, UnitMap, build_unit_map, model_state


class GlobalWeights:
    """w0, the consensus mask with its cumulative vote shares (the tie break of later
    rounds), and the global alive values once training (or joint averaging) began."""

    def __init__(self, unit_map: UnitMap, w0: State,
                 optimizer: ServerOptimizer | None = None) -> None:
        self.unit_map = unit_map
        self.optimizer = optimizer or TakeAverage()
        self.w0 = w0
        full = unit_map.full_mask()
        self._w0_values = unit_map.alive_values(w0, full)
        self._w0_sizes = unit_map.layer_sizes(full)
        self.mask = full
        self.history = np.zeros(unit_map.n_units)
        self.values: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: FederationConfig) -> GlobalWeights:
        model = build_model(cfg.model_spec, seed=cfg.seed)
        return cls(build_unit_map(model, cfg.model_spec, cfg.granularity), model_state(model),
                   new_server_optimizer(cfg.server_optimizer, cfg.server_momentum))

    def published(self) -> tuple[np.ndarray, list[int]]:
        """The alive values (and their per-tensor sizes) the current round starts from:
        dense w0 until there are global values, then those under the mask."""
        if self.values is None:
            return self._w0_values, self._w0_sizes
        return self.values, self.unit_map.layer_sizes(self.mask)

    def start_training(self) -> None:
        """Training starts from the rewound, masked initial weights."""
        self.values = self.unit_map.alive_values(self.w0, self.mask)

    def step_towards(self, average: np.ndarray) -> np.ndarray:
        """The next global values of a training round, from the nodes' average (the
        server optimizer decides how far to go)."""
        if self.values is None or self.values.shape != average.shape:
            return average
        return self.optimizer.step(self.values, average)

    def apply_consensus(self, tally: VoteTally, rule: ConsensusRule, target: float,
                        allocation: Allocation) -> np.ndarray:
        """The next mask from one round's votes; returns the mask it replaced."""
        previous = self.mask
        self.mask = rule(VoteInput.from_tally(tally, previous, self.unit_map.slices, target,
                                              self.history, allocation))
        self.history = self.history + tally.share
        return previous

    def sparsity(self) -> float:
        """Fraction of prunable units pruned in the consensus."""
        return 1.0 - float(self.mask.mean()) if self.mask.size else 0.0

    def final_state(self) -> State:
        if self.values is None:
            return self.unit_map.apply(self.w0, self.mask)
        return self.unit_map.state_from_values(self.values, self.mask)
