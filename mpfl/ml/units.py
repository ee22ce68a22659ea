"""Prunable units: the canonical map from one flat bit per unit to the model's tensors.

A model's state is a ``State``: every floating tensor of its ``state_dict`` (parameters
and batch-norm statistics), as numpy arrays, in ``state_dict`` order. A unit mask is a flat
bool array in canonical order: layers in that order, units by index. Granularities:

- ``filter``: one unit per output channel / neuron of each declared prunable layer;
  pruning one zeroes its weight row and every coupled tensor's entry (bias, batch norm).
- ``weight``: one unit per element of every Conv2d / Linear weight; biases and norm
  layers stay dense.

The fingerprint (8 bytes) hashes the architecture, tensor names and shapes and the
granularity; every message carries it, so a node never applies bits meant for another
model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from mpfl.choices import Granularity
from mpfl.errors import ConfigError, ModelError
from mpfl.ml.models import ModelSpec, PrunableLayer, ZooModel, resolve_spec

State = dict[str, np.ndarray]
GRANULARITIES = tuple(Granularity)


@dataclass(frozen=True)
class UnitLayer:
    """One prunable tensor's share of the flat unit mask."""

    tensor: str
    start: int
    count: int
    coupled: tuple[str, ...] = ()

    @property
    def units(self) -> slice:
        return slice(self.start, self.start + self.count)


@dataclass(frozen=True)
class UnitMap:
    granularity: str
    layers: tuple[UnitLayer, ...]
    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # every state tensor, canonical order
    fingerprint: bytes

    @property
    def n_units(self) -> int:
        return sum(layer.count for layer in self.layers)

    @property
    def slices(self) -> list[slice]:
        return [layer.units for layer in self.layers]

    @property
    def n_values(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.shapes)

    def full_mask(self) -> np.ndarray:
        return np.ones(self.n_units, dtype=bool)

    def check_mask(self, mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (self.n_units,):
            raise ModelError(
                "mask does not fit the model", expected=self.n_units, got=mask.shape
            )
        return mask

    def tensor_masks(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Per-tensor bool masks (shaped like the tensors) for every tensor a unit touches."""
        mask = self.check_mask(mask)
        shapes = dict(self.shapes)
        out: dict[str, np.ndarray] = {}
        for layer in self.layers:
            bits = mask[layer.units]
            shape = shapes[layer.tensor]
            if self.granularity == "weight":
                out[layer.tensor] = bits.reshape(shape)
                continue
            row = bits.reshape((-1,) + (1,) * (len(shape) - 1))
            out[layer.tensor] = np.broadcast_to(row, shape)
            for name in layer.coupled:
                out[name] = bits
        return out

    def layer_sizes(self, mask: np.ndarray) -> list[int]:
        """How many values each state tensor contributes to the alive-value vector."""
        masks = self.tensor_masks(mask)
        return [
            int(masks[name].sum()) if name in masks else int(np.prod(shape))
            for name, shape in self.shapes
        ]

    def alive_values(self, state: Mapping[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        """The values that survive ``mask``, concatenated in canonical order, no indices."""
        masks = self.tensor_masks(mask)
        parts = []
        for name, shape in self.shapes:
            tensor = _state_tensor(state, name, shape)
            parts.append(tensor[masks[name]] if name in masks else tensor.ravel())
        return np.concatenate(parts).astype(np.float32, copy=False)

    def state_from_values(self, values: np.ndarray, mask: np.ndarray) -> State:
        """Rebuild a full state from alive values; pruned positions are exactly zero."""
        values = np.asarray(values, dtype=np.float32)
        sizes = self.layer_sizes(mask)
        if values.shape != (sum(sizes),):
            raise ModelError("alive values do not fit the mask", expected=sum(sizes),
                             got=values.shape)
        masks = self.tensor_masks(mask)
        state: State = {}
        offset = 0
        for (name, shape), size in zip(self.shapes, sizes, strict=True):
            chunk = values[offset : offset + size]
            offset += size
            if name in masks:
                tensor = np.zeros(shape, dtype=np.float32)
                tensor[masks[name]] = chunk
            else:
                tensor = chunk.reshape(shape).copy()
            state[name] = tensor
        return state

    def apply(self, state: Mapping[str, np.ndarray], mask: np.ndarray) -> State:
        """A copy of ``state`` with every pruned position set to zero."""
        masks = self.tensor_masks(mask)
        out: State = {}
        for name, shape in self.shapes:
            tensor = _state_tensor(state, name, shape)
            if name in masks:
                out[name] = np.where(masks[name], tensor, np.float32(0))
            else:
                out[name] = tensor.copy()  # a copy even when the input already is float32
        return out

    def layer_sparsity(self, mask: np.ndarray) -> list[float]:
        mask = self.check_mask(mask)
        return [1.0 - float(mask[s].mean()) if s.stop > s.start else 0.0 for s in self.slices]


def _state_tensor(state: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``state[name]`` as float32, or a ModelError if it is missing or misshapen."""
    if name not in state:
        raise ModelError("state lacks a tensor of the model", tensor=name)
    tensor = np.asarray(state[name], dtype=np.float32)
    if tensor.shape != shape:
        raise ModelError("state tensor has the wrong shape", tensor=name, expected=shape,
                         got=tensor.shape)
    return tensor


def model_state(model: nn.Module) -> State:
    """The floating tensors of a model's state_dict, as numpy, in canonical order."""
    return {
        name: t.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, t in model.state_dict().items()
        if t.is_floating_point()
    }


def _weight_layers(model: nn.Module) -> list[PrunableLayer]:
    return [
        PrunableLayer(f"{name}.weight")
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]


def build_unit_map(model: ZooModel, spec: ModelSpec, granularity: str) -> UnitMap:
    if granularity not in GRANULARITIES:
        known = ", ".join(GRANULARITIES)
        raise ConfigError(f"unknown granularity '{granularity}' (known: {known})")
    state = model_state(model)
    shapes = tuple((name, tuple(a.shape)) for name, a in state.items())
    declared = model.prunable_layers() if granularity == "filter" else _weight_layers(model)
    order = {name: i for i, (name, _) in enumerate(shapes)}
    declared = sorted(declared, key=lambda layer: order[layer.weight])
    layers: list[UnitLayer] = []
    start = 0
    for layer in declared:
        shape = state[layer.weight].shape
        count = shape[0] if granularity == "filter" else int(np.prod(shape))
        layers.append(UnitLayer(layer.weight, start, count, layer.coupled))
        start += count
    return UnitMap(granularity, tuple(layers), shapes, fingerprint(spec, shapes, granularity))


def fingerprint(
    spec: ModelSpec, shapes: Sequence[tuple[str, tuple[int, ...]]], granularity: str
) -> bytes:
    full = resolve_spec(spec)
    doc = json.dumps(
        {"arch": full.name, "args": full.args, "granularity": granularity,
         "tensors": [[name, list(shape)] for name, shape in shapes]},
        sort_keys=True,
    )
    return hashlib.sha256(doc.encode()).digest()[:8]
