"""Evaluation as a callable the coordinator is given: global weights in, (loss, accuracy) out.

The round state machine never loads data or runs torch itself; whoever owns the test set
(the coordinator service, the simulation, the experiments) passes an :data:`Evaluator`.
"""

from __future__ import annotations

from collections.abc import Callable

from mpfl.ml.data import Dataset
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.train import evaluate, load_state
from mpfl.ml.units import State

Evaluator = Callable[[State], tuple[float, float]]


def dataset_evaluator(spec: ModelSpec, data: Dataset) -> Evaluator:
    """Evaluates weights on ``data`` with one model of ``spec``, built once and reused."""
    model = build_model(spec)

    def evaluate_state(state: State) -> tuple[float, float]:
        load_state(model, state)
        return evaluate(model, data)

    return evaluate_state
