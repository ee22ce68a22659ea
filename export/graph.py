"""Small ONNX graph utilities: short names, metadata, and counting what a file stores."""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

_FIRST = string.ascii_letters
_REST = string.ascii_letters + string.digits


def _short_names() -> Iterator[str]:
    for length in itertools.count(1):
        for head in _FIRST:
            for tail in itertools.product(_REST, repeat=length - 1):
                yield head + "".join(tail)


def _has_subgraphs(graph: onnx.GraphProto) -> bool:
    return any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in graph.node
        for attr in node.attribute
    )


# Attributes whose value is the ONNX default for the op: dropping them changes nothing.
_ALL_ONES = ("all", 1)
_ALL_ZEROS = ("all", 0)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "Conv": {"dilations": _ALL_ONES, "strides": _ALL_ONES, "pads": _ALL_ZEROS, "group": 1},
    "MaxPool": {"dilations": _ALL_ONES, "strides": _ALL_ONES, "pads": _ALL_ZEROS,
                "ceil_mode": 0, "storage_order": 0},
    "AveragePool": {"strides": _ALL_ONES, "pads": _ALL_ZEROS, "ceil_mode": 0,
                    "count_include_pad": 0},
    "Flatten": {"axis": 1},
    "Gemm": {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
    "Split": {"axis": 0},
}


def _is_default(attr: onnx.AttributeProto, default: Any) -> bool:
    value = helper.get_attribute_value(attr)
    if isinstance(default, tuple):
        return isinstance(value, list) and all(v == default[1] for v in value)
    return bool(value == default)


def _drop_default_attributes(node: onnx.NodeProto) -> None:
    defaults = _DEFAULTS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if not defaults:
        return
    keep = [a for a in node.attribute
            if not (a.name in defaults and _is_default(a, defaults[a.name]))]
    del node.attribute[:]
    node.attribute.extend(keep)


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with short tensor names, no node names, doc strings, shape hints or
    attributes that only restate a default.

    The exporter's names (``/features/features.0/Conv_output_0``) cost kilobytes in a
    small model; the graph's input and output names stay, so callers see no change.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if _has_subgraphs(graph):
        return out  # names may be captured by a subgraph: leave them alone
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    fresh = (name for name in _short_names() if name not in keep)
    renamed: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in renamed:
            renamed[name] = next(fresh)
        return renamed[name]

    for init in graph.initializer:
        init.name = rename(init.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = rename(sparse.values.name)
        sparse.indices.name = ""
    for node in graph.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        node.name = ""
        node.doc_string = ""
        _drop_default_attributes(node)
    del graph.value_info[:]
    graph.doc_string = ""
    graph.name = "mpfl"
    out.doc_string = ""
    return out


def set_metadata(model: onnx.ModelProto, values: Mapping[str, str]) -> None:
    """Set ``mpfl.*`` metadata entries (format, precision, dataset) in place."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        full = f"mpfl.{key}"
        if full in existing:
            existing[full].value = value
        else:
            model.metadata_props.add(key=full, value=value)


@dataclass(frozen=True)
class StoredCount:
    """Weight values (rank >= 2 tensors) a file physically holds and the ones it stands for."""

    stored: int
    represented: int


_CODE_READERS = {("BitShift", 0), ("Cast", 0)}


def _uses(graph: onnx.GraphProto) -> dict[str, set[tuple[str, int]]]:
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, i))
    return uses


def stored_weights(model: onnx.ModelProto) -> StoredCount:
    """Count the weight values a model really stores, read from its structure.

    Dense weights count in full; sparse initializers count their values; a packed values
    blob (the data of a Gather, or the updates of a ScatterND) counts every stored entry,
    and the tensors its decode block rebuilds count as represented.
    """
    graph = model.graph
    uses = _uses(graph)
    stored = represented = 0
    for init in graph.initializer:
        size = int(np.prod(init.dims))
        roles = uses.get(init.name, set())
        if init.data_type == onnx.TensorProto.UINT8 and roles <= _CODE_READERS and roles:
            continue  # a packed position code (bits or gaps), not a weight
        if roles == {("Mul", 1)} and len(init.dims) >= 2 and size == init.dims[0]:
            continue  # a per-channel scale shaped [C, 1, ...] to broadcast, not a weight
        if ("Gather", 0) in roles or ("ScatterND", 2) in roles:
            stored += size
        elif len(init.dims) >= 2:
            stored += size
            represented += size
    for sparse in graph.sparse_initializer:
        if len(sparse.dims) >= 2:
            stored += int(np.prod(sparse.values.dims))
            represented += int(np.prod(sparse.dims))
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        # Each rebuilt weight ends in a Reshape to its shape, fed by the decode block.
        if node.op_type != "Reshape" or node.input[1] not in inits:
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "Split":
            source = producers.get(source.input[0])
        shape = onnx.numpy_helper.to_array(inits[node.input[1]])
        if source is not None and source.op_type in ("Gather", "ScatterND") and shape.size >= 2:
            represented += int(np.prod(shape))
    return StoredCount(stored, represented)
