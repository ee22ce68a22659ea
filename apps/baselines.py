"""The reference code's comparisons for MPFL, on the same models, data and seeds.

- Dense FedAvg: the same federation with no mask phase, so every round ships every value
  (run through :func:`mpfl.federation.simulation.run_in_process`, bytes counted by the coordinator).
- FedAvg then prune (the reference code's "Federated Algorithm"): the averaged dense model
  pruned once to the target sparsity, at the same granularity and with the same per-layer
  ranking a node uses, then evaluated without fine-tuning.
- Centralised iterative pruning (the reference code's "Center Model"): one trainer on the
  pooled data follows the federation's schedule, rewinding to w0 each mask round like a
  node does, then trains the final mask for as many epochs as the federation has
  training rounds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from mpfl.config.settings import FederationConfig
from mpfl.maths.layer_sparsity import Allocation, get_allocation, uniform
from mpfl.maths.schedules import get_schedule
from mpfl.ml.data import Dataset
from mpfl.ml.masks import local_mask, unit_scores
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.train import MaskEnforcer, evaluate, load_state, train_local
from mpfl.ml.units import State, UnitMap, build_unit_map, model_state
from mpfl.wire.specs import TrainSpec


def dense_fedavg_config(cfg: FederationConfig, rounds: int | None = None) -> FederationConfig:
    """``cfg`` without a mask phase: ``rounds`` (default: all its rounds) of dense FedAvg."""
    total = cfg.mask_rounds + cfg.train_rounds if rounds is None else rounds
    return dataclasses.replace(cfg, mask_rounds=0, train_rounds=total,
                               final_sparsity=0.0).validate()


def train_config(cfg: FederationConfig) -> TrainSpec:
    """The local training settings a federation sends its nodes."""
    return cfg.train_spec


def magnitude_mask(
    state: Mapping[str, np.ndarray], unit_map: UnitMap, sparsity: float,
    alive: np.ndarray | None = None, scope: str = "layer", allocation: Allocation = uniform,
) -> np.ndarray:
    """Prune ``state`` to ``sparsity`` by the node's own scores (L2 norm or |w|), each
    layer to its share of it."""
    alive = unit_map.full_mask() if alive is None else alive
    return local_mask(unit_scores(state, unit_map), alive, unit_map.slices, sparsity, scope,
                      allocation)


def evaluate_state(spec: ModelSpec, state: Mapping[str, np.ndarray], test: Dataset
                   ) -> tuple[float, float]:
    """(loss, accuracy) of a model holding ``state`` on ``test``."""
    model = build_model(spec)
    load_state(model, state)
    return evaluate(model, test)


@dataclass(frozen=True)
class PrunedPoint:
    target_sparsity: float
    sparsity: float  # fraction of prunable units actually pruned
    loss: float
    accuracy: float
    mask: np.ndarray
    state: State


def fedavg_then_prune(
    spec: ModelSpec, granularity: str, state: State, sparsity: float, test: Dataset
) -> PrunedPoint:
    """Prune a trained dense state once to ``sparsity`` and evaluate it, no fine-tuning."""
    unit_map = build_unit_map(build_model(spec), spec, granularity)
    mask = magnitude_mask(state, unit_map, sparsity)
    pruned = unit_map.apply(state, mask)
    loss, accuracy = evaluate_state(spec, pruned, test)
    return PrunedPoint(sparsity, 1.0 - float(mask.mean()), loss, accuracy, mask, pruned)


@dataclass(frozen=True)
class CentralRound:
    round: int
    phase: str
    target_sparsity: float
    sparsity: float
    accuracy: float | None
    loss: float | None
    seconds: float


@dataclass
class CentralResult:
    mask: np.ndarray
    state: State
    rounds: list[CentralRound]
    loss: float
    accuracy: float


def centralised_pruning(
    cfg: FederationConfig,
    train: Dataset,
    test: Dataset,
    rewind: bool = True,
    eval_every_round: bool = False,
    on_round: Callable[[CentralRound], None] | None = None,
) -> CentralResult:
    """The federation's schedule run by one trainer on the pooled data.

    Each mask round trains ``local_epochs`` on all the data with the current mask held,
    then prunes a further step to the schedule's target; with ``rewind`` (the reference
    code's choice) every mask round and the training phase start again from w0. Each
    training round is ``local_epochs`` more epochs, as many as the federation's rounds.
    """
    spec = cfg.model_spec
    model = build_model(spec, seed=cfg.seed)
    unit_map = build_unit_map(model, spec, cfg.granularity)
    w0 = model_state(model)
    tcfg = train_config(cfg)
    schedule = get_schedule(cfg.schedule)
    mask = unit_map.full_mask()
    rounds: list[CentralRound] = []

    def log(t: int, phase: str, target: float, evaluate_now: bool, start: float) -> None:
        loss, acc = evaluate(model, test) if evaluate_now else (None, None)
        entry = CentralRound(t, phase, target, 1.0 - float(mask.mean()), acc, loss,
                             time.perf_counter() - start)
        rounds.append(entry)
        if on_round is not None:
            on_round(entry)

    for t in range(1, cfg.mask_rounds + 1):
        start = time.perf_counter()
        base = w0 if rewind or t == 1 else model_state(model)
        load_state(model, unit_map.apply(base, mask))
        train_local(model, train, tcfg, MaskEnforcer(model, unit_map, mask),
                    seed=cfg.seed * 100_003 + t)
        target = schedule(t, cfg.mask_rounds, cfg.final_sparsity)
        mask = magnitude_mask(model_state(model), unit_map, target, alive=mask,
                              allocation=get_allocation(cfg.layer_sparsity))
        log(t, "mask", target, False, start)
    target = rounds[-1].target_sparsity if rounds else 0.0
    if rewind or not rounds:
        load_state(model, unit_map.apply(w0, mask))
    enforcer = MaskEnforcer(model, unit_map, mask)
    for t in range(cfg.mask_rounds + 1, cfg.mask_rounds + cfg.train_rounds + 1):
        start = time.perf_counter()
        train_local(model, train, tcfg, enforcer, seed=cfg.seed * 100_003 + t)
        last = t == cfg.mask_rounds + cfg.train_rounds
        log(t, "train", target, eval_every_round or last, start)
    final = rounds[-1] if rounds else None
    if final is None or final.accuracy is None or final.loss is None:
        loss, accuracy = evaluate(model, test)
    else:
        loss, accuracy = final.loss, final.accuracy
    return CentralResult(mask, model_state(model), rounds, loss, accuracy)
