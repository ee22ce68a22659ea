"""How a round's target sparsity is shared among the prunable layers.

An allocation is one function ``(layer sizes, target) -> per-layer sparsities``; nodes
and the coordinator call the same one, so a node's mask and the consensus prune each
layer equally far. Both keep the model's overall sparsity at the target, up to rounding.

``uniform`` (the reference code's): every layer at the target. At 90% it leaves LeNet-5's
first convolution 15 of its 150 weights, while its 48,000-weight dense layer keeps 4,800.

``inverse-sqrt``: a layer's density (kept fraction) is proportional to 1 / sqrt(its size),
the Erdős-Rényi density of a square layer (Mocanu et al., 2018; Evci et al., 2020), so
small layers, where each weight carries more, stay denser. A layer the rule would make
denser than dense is kept whole and the rest share what remains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import numpy as np

from mpfl.choices import LayerSparsity
from mpfl.errors import ConfigError, lookup

Allocation = Callable[[Sequence[int], float], tuple[float, ...]]


def _check(sizes: Sequence[int], target: float) -> None:
    if not (0.0 <= target < 1.0):
        raise ConfigError("target sparsity must be in [0, 1)", target=target)
    if any(n < 0 for n in sizes):
        raise ConfigError("a layer cannot have a negative number of units")


def uniform(sizes: Sequence[int], target: float) -> tuple[float, ...]:
    """Every layer at ``target``."""
    _check(sizes, target)
    return (target,) * len(sizes)


def inverse_sqrt(sizes: Sequence[int], target: float) -> tuple[float, ...]:
    """Density of layer l = c / sqrt(n_l), capped at 1, with c such that the layers keep
    (1 - target) of all units together."""
    _check(sizes, target)
    n = np.asarray(sizes, dtype=np.float64)
    budget = (1.0 - target) * n.sum()
    whole = n == 0  # an empty layer has nothing to prune
    while True:  # each pass caps at least one more layer, so at most len(sizes) passes
        rest = ~whole
        if not rest.any():
            break
        scale = (budget - n[whole].sum()) / np.sqrt(n[rest]).sum()
        density = np.where(rest, scale / np.sqrt(np.where(rest, n, 1.0)), 1.0)
        capped = rest & (density >= 1.0 - 1e-12)  # within float noise of whole is whole
        if not capped.any():
            break
        whole |= capped
    if whole.all():
        return (0.0,) * len(sizes)
    sparsity = np.where(whole, 0.0, 1.0 - density)
    # keep_count needs each layer in [0, 1); float noise must not leave that range
    return tuple(float(x) for x in np.clip(sparsity, 0.0, np.nextafter(1.0, 0.0)))


ALLOCATIONS: Mapping[LayerSparsity, Allocation] = MappingProxyType({
    LayerSparsity.UNIFORM: uniform,
    LayerSparsity.INVERSE_SQRT: inverse_sqrt,
})


def get_allocation(name: str) -> Allocation:
    """Look an allocation up by its config name."""
    return lookup(ALLOCATIONS, name, "layer sparsity", "layer_sparsity")
