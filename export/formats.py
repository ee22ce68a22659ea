"""Weight-mask storage formats: rewrite a dense ONNX model so its zeros are not stored.

Both rewrites work on any ONNX model, after an optional int8 quantization, and pick
their tensors by value: every initializer of rank >= 2 (a weight) whose zeros make the
format smaller. Pruned weights are exactly zero (quantization keeps them zero too), so
this is lossless and needs no knowledge of tensor names, which the exporter renames.

- ``sparse``: each such weight becomes a standard ONNX ``sparse_initializer`` (values plus
  linearised int64 indices: 8 bytes of index per stored value).
- ``packed``: the surviving values of all such weights of one element type are
  concatenated into one blob, and a small block of standard operators at the head of the
  graph expands them back into the original named tensors. The positions travel in
  whichever of three codes is smallest for that blob:

  * ``bits``: a bit-packed mask, one bit per weight (best at moderate sparsity). Decoded
    as ``mask = (byte >> j) mod 2``, ``dense = Gather([0, values...], CumSum(mask) * mask)``.
  * ``gaps8`` / ``gaps4``: per survivor, the distance from the previous one in a byte or
    a nibble (best at high sparsity; a longer gap is bridged by a stored zero). Decoded
    as ``ScatterND(zeros, CumSum(gaps), values)``.

  The block uses no data-dependent shapes (no NonZero), so onnxruntime folds it into
  dense tensors once, when the session is created: no per-inference cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mpfl.errors import ExportError

PACKED_MIN_OPSET = 13  # Split takes its sizes as an input from opset 13


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def to_sparse(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose sparse-enough weights are ONNX sparse initializers."""
    out = _copy(model)
    keep: list[onnx.TensorProto] = []
    for init in out.graph.initializer:
        array = numpy_helper.to_array(init)
        flat = array.ravel()
        nonzero = np.flatnonzero(flat)
        item = array.dtype.itemsize
        if array.ndim < 2 or len(nonzero) * (item + 8) >= flat.size * item:
            keep.append(init)
            continue
        values = numpy_helper.from_array(flat[nonzero], name=init.name)
        indices = numpy_helper.from_array(nonzero.astype(np.int64), name=f"{init.name}_indices")
        out.graph.sparse_initializer.append(
            helper.make_sparse_tensor(values, indices, list(array.shape))
        )
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out


@dataclass(frozen=True)
class _Weight:
    name: str
    array: np.ndarray


def gap_code(positions: np.ndarray, max_gap: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions -> (gaps whose running sum gives the positions, filler flags).

    The first gap counts from 0 and may be 0; later gaps are 1..max_gap. A longer gap
    is bridged by filler positions (flagged True) that hold a stored zero.
    """
    steps = np.diff(np.asarray(positions, dtype=np.int64), prepend=0)
    if len(steps) and (steps[0] < 0 or (steps[1:] < 1).any()):
        raise ExportError("gap code needs strictly increasing non-negative positions")
    fillers = np.maximum((steps - 1) // max_gap, 0)
    real = np.cumsum(fillers + 1) - 1  # where each real position lands in the code
    gaps = np.full(int(real[-1]) + 1 if len(real) else 0, max_gap, dtype=np.int64)
    gaps[real] = steps - max_gap * fillers
    filler = np.ones(len(gaps), dtype=bool)
    filler[real] = False
    return gaps, filler


@dataclass(frozen=True)
class _Code:
    """One way to store a group's positions: the blobs it writes and its cost in bytes."""

    kind: str  # "bits", "gaps8" or "gaps4"
    values: np.ndarray
    index: np.ndarray  # uint8
    length: int  # entries the decoder yields (the group's size, or more for bits)

    @property
    def cost(self) -> int:
        return int(self.values.nbytes + self.index.nbytes)


def _bits_code(flat: np.ndarray, positions: np.ndarray) -> _Code:
    values = np.concatenate([np.zeros(1, dtype=flat.dtype), flat[positions]])
    bits = np.packbits(flat != 0, bitorder="little").reshape(-1, 1)
    return _Code("bits", values, bits, bits.size * 8)


def _gaps_code(flat: np.ndarray, positions: np.ndarray, width: int) -> _Code:
    gaps, filler = gap_code(positions, (1 << width) - 1)
    values = np.zeros(len(gaps), dtype=flat.dtype)
    values[~filler] = flat[positions]
    if width == 4:  # two gaps per byte, low nibble first
        pairs = np.concatenate([gaps, np.zeros(len(gaps) % 2, dtype=np.int64)]).reshape(-1, 2)
        index = (pairs[:, 0] | (pairs[:, 1] << 4)).astype(np.uint8).reshape(-1, 1)
    else:
        index = gaps.astype(np.uint8)
    return _Code(f"gaps{width}", values, index, flat.size)


def _best_code(flat: np.ndarray) -> _Code:
    positions = np.flatnonzero(flat)
    codes = [_bits_code(flat, positions)]
    if len(positions):
        codes += [_gaps_code(flat, positions, 8), _gaps_code(flat, positions, 4)]
    return min(codes, key=lambda c: c.cost)  # ties keep the first: bits


_Block = tuple[list[onnx.NodeProto], list[onnx.TensorProto]]


def _decode(p: str, code: _Code, dtype: np.dtype) -> _Block:
    """Nodes turning ``{p}values`` + ``{p}index`` into the flat tensor ``{p}d``."""
    i64 = TensorProto.INT64
    inits = [_const(f"{p}values", code.values), _const(f"{p}index", code.index)]
    if code.kind == "bits":
        # Ranks in int32 where they fit: the decode runs once, but over every weight, and
        # its intermediates set the runner's peak memory at load.
        rank = TensorProto.INT32 if code.length < 2**31 else i64
        return [
            # bit j of byte i is (byte >> j) mod 2: [B, 1] >> [8] broadcasts to [B, 8].
            helper.make_node("BitShift", [f"{p}index", "pk_bit_shifts"], [f"{p}s"],
                             direction="RIGHT"),
            helper.make_node("Mod", [f"{p}s", "pk_two"], [f"{p}m8"]),
            helper.make_node("Reshape", [f"{p}m8", "pk_flat"], [f"{p}m"]),
            helper.make_node("Cast", [f"{p}m"], [f"{p}mi"], to=rank),
            helper.make_node("CumSum", [f"{p}mi", "pk_axis"], [f"{p}c"]),
            # alive -> its 1-based rank among survivors; pruned -> 0 -> values[0] = 0
            helper.make_node("Mul", [f"{p}c", f"{p}mi"], [f"{p}r"]),
            helper.make_node("Gather", [f"{p}values", f"{p}r"], [f"{p}d"]),
        ], inits
    nodes: list[onnx.NodeProto] = []
    gaps = f"{p}index"
    if code.kind == "gaps4":
        nodes += [
            helper.make_node("BitShift", [gaps, "pk_nibble_shifts"], [f"{p}s"],
                             direction="RIGHT"),
            helper.make_node("Mod", [f"{p}s", "pk_sixteen"], [f"{p}n2"]),
            helper.make_node("Reshape", [f"{p}n2", "pk_flat"], [f"{p}n"]),
        ]
        gaps = f"{p}n"
        if code.index.size * 2 != len(code.values):  # drop the odd count's padding nibble
            inits.append(_const(f"{p}count", np.array([len(code.values)], dtype=np.int64)))
            nodes.append(helper.make_node("Slice", [gaps, "pk_start", f"{p}count"], [f"{p}ns"]))
            gaps = f"{p}ns"
    zero = numpy_helper.from_array(np.zeros(1, dtype=dtype))
    inits.append(_const(f"{p}size", np.array([code.length], dtype=np.int64)))
    nodes += [
        helper.make_node("Cast", [gaps], [f"{p}g"], to=i64),
        helper.make_node("CumSum", [f"{p}g", "pk_axis"], [f"{p}pos"]),
        helper.make_node("Reshape", [f"{p}pos", "pk_column"], [f"{p}idx"]),
        helper.make_node("ConstantOfShape", [f"{p}size"], [f"{p}z"], value=zero),
        helper.make_node("ScatterND", [f"{p}z", f"{p}idx", f"{p}values"], [f"{p}d"]),
    ]
    return nodes, inits


def _group_nodes(tag: str, weights: list[_Weight], dtype: np.dtype) -> _Block:
    """The initializers and nodes that rebuild ``weights`` from one values blob."""
    flat = np.concatenate([w.array.ravel() for w in weights])
    code = _best_code(flat)
    p = f"pk_{tag}_"
    nodes, inits = _decode(p, code, dtype)
    sizes = [w.array.size for w in weights]
    if code.length > flat.size:
        sizes.append(code.length - flat.size)  # padding bits decode to zeros, split off
    parts = [f"{p}part{i}" for i in range(len(sizes))]
    if len(sizes) == 1:
        parts = [f"{p}d"]
    else:
        inits.append(_const(f"{p}split", np.array(sizes, dtype=np.int64)))
        nodes.append(helper.make_node("Split", [f"{p}d", f"{p}split"], parts, axis=0))
    for i, w in enumerate(weights):
        shape_name = f"{p}shape{i}"
        inits.append(_const(shape_name, np.array(w.array.shape, dtype=np.int64)))
        nodes.append(helper.make_node("Reshape", [parts[i], shape_name], [w.name]))
    return nodes, inits


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name=name)


_SHARED: dict[str, np.ndarray] = {
    "pk_bit_shifts": np.arange(8, dtype=np.uint8),
    "pk_two": np.array(2, dtype=np.uint8),
    "pk_nibble_shifts": np.array([0, 4], dtype=np.uint8),
    "pk_sixteen": np.array(16, dtype=np.uint8),
    "pk_start": np.array([0], dtype=np.int64),
    "pk_flat": np.array([-1], dtype=np.int64),
    "pk_column": np.array([-1, 1], dtype=np.int64),
    "pk_axis": np.array(0, dtype=np.int64),
}


def opset_of(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError("model has no default-domain opset")


def to_packed(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose sparse-enough weights are stored as values + positions."""
    opset = opset_of(model)
    if opset < PACKED_MIN_OPSET:
        raise ExportError("the packed format needs opset 13 or later", opset=opset)
    out = _copy(model)
    groups: dict[np.dtype, list[_Weight]] = {}
    keep: list[onnx.TensorProto] = []
    for init in out.graph.initializer:
        array = numpy_helper.to_array(init)
        item = array.dtype.itemsize
        # Worth packing if even the bit mask (the priciest code at high density) pays.
        cost = int(np.count_nonzero(array)) * item + array.size / 8
        if array.ndim >= 2 and cost < array.size * item:
            groups.setdefault(array.dtype, []).append(_Weight(init.name, array))
        else:
            keep.append(init)
    if not groups:
        return out
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for dtype, weights in groups.items():
        nodes, inits = _group_nodes(np.dtype(dtype).name, weights, np.dtype(dtype))
        new_nodes += nodes
        new_inits += inits
    used = {name for node in new_nodes for name in node.input}
    new_inits += [_const(name, value) for name, value in _SHARED.items() if name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep + new_inits)
    # The decode block reads only initializers, so it can run first: the node order stays
    # topological without sorting the rest of the graph.
    old_nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes + old_nodes)
    return out
