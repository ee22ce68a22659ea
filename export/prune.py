"""Physical filter pruning: rebuild a zoo model without its pruned filters and neurons.

Generic over the structure each model declares (``PrunableLayer``): the rows of a pruned
unit's weight and every coupled tensor (bias, batch norm) go, and so do the matching
input columns of each consumer (``per_channel`` columns per channel after a flatten).
The affected Conv2d / Linear / BatchNorm modules of a deep copy are swapped for smaller
ones, so skip connections elsewhere in the net are untouched. A pruned channel outputs
exactly zero in the masked model, so the smaller model computes the same function.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from mpfl.errors import ExportError
from mpfl.ml.models import ZooModel
from mpfl.ml.units import UnitMap

_Index = dict[str, np.ndarray]


def kept_indices(unit_map: UnitMap, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per prunable weight, the output channels that survive (at least one per layer).

    A layer with every unit pruned keeps one all-zero channel: the shapes stay valid and
    the output is the same.
    """
    if unit_map.granularity != "filter":
        raise ExportError("the pruned format needs a filter-granularity mask",
                          granularity=unit_map.granularity)
    mask = unit_map.check_mask(mask)
    out = {}
    for layer in unit_map.layers:
        keep = np.flatnonzero(mask[layer.units])
        out[layer.tensor] = keep if len(keep) else np.zeros(1, dtype=np.int64)
    return out


def _slices(model: ZooModel, kept: dict[str, np.ndarray]) -> tuple[_Index, _Index]:
    """Row (dim 0) and column (dim 1) indices to keep, per state tensor name."""
    rows: _Index = {}
    cols: _Index = {}
    for layer in model.prunable_layers():
        keep = kept[layer.weight]
        for name in (layer.weight, *layer.coupled):
            rows[name] = keep
        for consumer in layer.consumers:
            per = consumer.per_channel
            cols[consumer.tensor] = (keep[:, None] * per + np.arange(per)[None, :]).ravel()
    return rows, cols


def _owner(tensor: str) -> str:
    return tensor.rsplit(".", 1)[0]


def _take(t: torch.Tensor, rows: np.ndarray | None, cols: np.ndarray | None) -> torch.Tensor:
    if rows is not None:
        t = t[torch.from_numpy(rows)]
    if cols is not None:
        t = t[:, torch.from_numpy(cols)]
    return t.detach().clone()


def _module_rows(name: str, tensors: list[str], rows: _Index) -> np.ndarray | None:
    """The one row index every sliced tensor of a module agrees on."""
    found = [rows[f"{name}.{t}"] for t in tensors if f"{name}.{t}" in rows]
    if not found:
        return None
    if any(not np.array_equal(found[0], other) for other in found[1:]):
        raise ExportError("tensors of one module keep different channels", module=name)
    return found[0]


def _shrink_conv(m: nn.Conv2d, name: str, rows: _Index, cols: _Index) -> nn.Conv2d:
    if m.groups != 1:
        raise ExportError("cannot prune a grouped convolution", module=name)
    r = _module_rows(name, ["weight", "bias"], rows)
    c = cols.get(f"{name}.weight")
    weight = _take(m.weight, r, c)
    geometry: dict[str, Any] = {"kernel_size": m.kernel_size, "stride": m.stride,
                                "padding": m.padding, "dilation": m.dilation,
                                "padding_mode": m.padding_mode}
    new = nn.Conv2d(weight.shape[1], weight.shape[0], bias=m.bias is not None, **geometry)
    new.weight.data.copy_(weight)
    if m.bias is not None and new.bias is not None:
        new.bias.data.copy_(_take(m.bias, r, None))
    return new


def _shrink_linear(m: nn.Linear, name: str, rows: _Index, cols: _Index) -> nn.Linear:
    r = _module_rows(name, ["weight", "bias"], rows)
    weight = _take(m.weight, r, cols.get(f"{name}.weight"))
    new = nn.Linear(weight.shape[1], weight.shape[0], m.bias is not None)
    new.weight.data.copy_(weight)
    if m.bias is not None and new.bias is not None:
        new.bias.data.copy_(_take(m.bias, r, None))
    return new


def _shrink_norm(m: nn.modules.batchnorm._BatchNorm, name: str, rows: _Index) -> nn.Module:
    r = _module_rows(name, ["weight", "bias", "running_mean", "running_var"], rows)
    if r is None:
        raise ExportError("a batch norm is read as a consumer, not coupled", module=name)
    new = type(m)(len(r), m.eps, m.momentum, m.affine, m.track_running_stats)
    new.load_state_dict({
        key: _take(value, r, None) if value.ndim == 1 else value.clone()
        for key, value in m.state_dict().items()
    })
    return new


def _shrink(module: nn.Module, name: str, rows: _Index, cols: _Index) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return _shrink_conv(module, name, rows, cols)
    if isinstance(module, nn.Linear):
        return _shrink_linear(module, name, rows, cols)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _shrink_norm(module, name, rows)
    raise ExportError(f"cannot prune a {type(module).__name__} module", module=name)


def prune_filters(model: ZooModel, unit_map: UnitMap, mask: np.ndarray) -> nn.Module:
    """A smaller copy of ``model`` (already holding its masked state) without pruned units."""
    kept = kept_indices(unit_map, mask)
    rows, cols = _slices(model, kept)
    pruned = copy.deepcopy(model)
    for name in sorted({_owner(t) for t in (*rows, *cols)}):
        try:
            module = pruned.get_submodule(name)
        except AttributeError as exc:
            raise ExportError("a declared tensor has no module", module=name) from exc
        pruned.set_submodule(name, _shrink(module, name, rows, cols))
    return pruned.eval()
