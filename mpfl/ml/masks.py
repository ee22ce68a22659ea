"""A node's local pruning decision: score the alive units, drop the weakest.

Scores follow the reference code: the L2 norm of a filter's (or neuron's) weights, or
|w| for single weights. The local mask only ever removes units: a unit pruned in the
consensus stays pruned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mpfl.errors import ConfigError
from mpfl.maths.layer_sparsity import Allocation, uniform
from mpfl.maths.schedules import keep_count
from mpfl.ml.units import UnitMap

__all__ = ["keep_count", "local_mask", "unit_scores"]


def unit_scores(state: Mapping[str, np.ndarray], unit_map: UnitMap) -> np.ndarray:
    """One float64 score per unit, canonical order."""
    parts = []
    for layer in unit_map.layers:
        w = np.asarray(state[layer.tensor], dtype=np.float64)
        if unit_map.granularity == "filter":
            parts.append(np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(axis=1)))
        else:
            parts.append(np.abs(w).ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def _keep_best(scores: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` highest-scored alive units; ties go to the lower index."""
    keep = np.zeros_like(alive)
    idx = np.flatnonzero(alive)
    if len(idx) <= k:
        keep[idx] = True
        return keep
    order = np.lexsort((idx, -scores[idx]))  # score descending, then index ascending
    keep[idx[order[:k]]] = True
    return keep


def local_mask(
    scores: np.ndarray,
    alive: np.ndarray,
    layers: Sequence[slice],
    target: float,
    scope: str = "layer",
    allocation: Allocation = uniform,
) -> np.ndarray:
    """The mask a node proposes: each layer at its share of ``target`` (``allocation``)
    among its alive units.

    ``scope="global"`` ranks all units together (one threshold for the whole model),
    still keeping at least one unit per layer so no layer is cut off.
    """
    if not 0.0 <= target < 1.0:
        raise ConfigError("target sparsity must be in [0, 1)", target=target)
    alive = np.asarray(alive, dtype=bool)
    if scope == "layer":
        mask = np.zeros_like(alive)
        targets = allocation([s.stop - s.start for s in layers], target)
        for s, layer_target in zip(layers, targets, strict=True):
            keep = max(1, keep_count(s.stop - s.start, layer_target))
            mask[s] = _keep_best(scores[s], alive[s], keep)
        return mask
    if scope == "global":
        mask = _keep_best(scores, alive, max(1, keep_count(len(alive), target)))
        for s in layers:
            if not mask[s].any() and alive[s].any():
                mask[s] = _keep_best(scores[s], alive[s], 1)
        return mask
    raise ConfigError(f"unknown pruning scope '{scope}' (known: layer, global)")
