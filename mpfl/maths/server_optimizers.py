"""Server optimizers: how the coordinator moves the global values towards the nodes' average.

Plain FedAvg takes the average as the new global model. FedAvgM (Hsu et al., 2019) treats
``average - current`` as a pseudo-gradient and keeps a momentum of it across rounds, which
carries the global model further along the directions the label-skewed nodes agree on
round after round. A server optimizer is one object with ``step(current, average)``.

Momentum only makes sense over values of the same alive units, so it restarts whenever
the number of values changes (a new mask); the coordinator uses it in training rounds,
where the mask is fixed. Its state (the momentum) goes into the coordinator's checkpoint,
so a resumed run steps exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

import numpy as np

from mpfl.choices import ServerOptimizerName
from mpfl.errors import ConfigError, lookup


class ServerOptimizer(Protocol):
    def step(self, current: np.ndarray, average: np.ndarray) -> np.ndarray:
        """The next global values, from the current ones and this round's average."""
        ...

    def state(self) -> np.ndarray | None:
        """What a checkpoint keeps of it (None: nothing)."""
        ...

    def restore(self, state: np.ndarray | None) -> None:
        """Take back what ``state`` returned."""
        ...


class TakeAverage:
    """FedAvg: the average is the new model."""

    def step(self, current: np.ndarray, average: np.ndarray) -> np.ndarray:
        return average

    def state(self) -> np.ndarray | None:
        return None

    def restore(self, state: np.ndarray | None) -> None:
        pass


class Momentum:
    """FedAvgM: v <- beta * v + (average - current); next = current + v."""

    def __init__(self, beta: float) -> None:
        if not 0.0 <= beta < 1.0:
            raise ConfigError("server momentum must be in [0, 1)", server_momentum=beta)
        self.beta = beta
        self.velocity: np.ndarray | None = None

    def step(self, current: np.ndarray, average: np.ndarray) -> np.ndarray:
        update = average.astype(np.float32) - current.astype(np.float32)
        if self.velocity is None or self.velocity.shape != update.shape:
            self.velocity = np.zeros_like(update)
        self.velocity = np.float32(self.beta) * self.velocity + update
        return current + self.velocity

    def state(self) -> np.ndarray | None:
        return self.velocity

    def restore(self, state: np.ndarray | None) -> None:
        self.velocity = None if state is None else np.asarray(state, dtype=np.float32)


SERVER_OPTIMIZERS: Mapping[ServerOptimizerName, Callable[[float], ServerOptimizer]] = (
    MappingProxyType({
        ServerOptimizerName.NONE: lambda _beta: TakeAverage(),
        ServerOptimizerName.FEDAVGM: Momentum,
    })
)


def new_server_optimizer(name: str, momentum: float) -> ServerOptimizer:
    return lookup(SERVER_OPTIMIZERS, name, "server optimizer", "server_optimizer")(momentum)
