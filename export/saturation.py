"""Can an int8 file compute differently on an x86 CPU without VNNI? Checked from its weights.

onnxruntime runs ``MatMulInteger`` with uint8 activations and int8 weights (u8s8). On x86
CPUs with AVX2 but no VNNI (AVX512-VNNI or AVX-VNNI) its kernel multiplies with
VPMADDUBSW, which adds two adjacent u8 x s8 products into a *saturating* int16: whenever
two weights a kernel pairs reach ``|w1| + |w2| > 128`` with the same sign, an input near
255 clips the sum and the layer's output is wrong. VNNI CPUs and ARM64 accumulate in
int32 and never clip, so a file that verifies there can still fail on a user's AVX2-only
gateway. ``saturation_risks`` tells from the stored weights alone, so the check means the
same on every machine; ``u8s8_matmul`` is the clipping arithmetic itself, for tests.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

INT16_MAX = 32767
INT16_MIN = -32768
U8_MAX = 255


def u8s8_matmul(a: np.ndarray, b: np.ndarray, saturate: bool = True) -> np.ndarray:
    """``a @ b`` for uint8 ``a`` [M, K] and int8 ``b`` [K, N], in int32.

    With ``saturate`` each pair of adjacent k (0-1, 2-3, ...) is summed into int16 with
    saturation first, as VPMADDUBSW does; without it, exact (VNNI, ARM64).
    """
    a32 = a.astype(np.int32)
    b32 = b.astype(np.int32)
    if not saturate:
        return a32 @ b32
    if a32.shape[1] % 2:  # an odd K gets a zero partner
        a32 = np.pad(a32, ((0, 0), (0, 1)))
        b32 = np.pad(b32, ((0, 1), (0, 0)))
    pairs = a32[:, 0::2, None] * b32[None, 0::2] + a32[:, 1::2, None] * b32[None, 1::2]
    return np.clip(pairs, INT16_MIN, INT16_MAX).sum(axis=1, dtype=np.int32)


def worst_pair_sums(b: np.ndarray) -> tuple[int, int]:
    """(largest, smallest) int16 pair sum any u8 input can reach with weights ``b`` [K, N].

    Independent of how a kernel pairs k: the two largest positive (negative) weights of
    one output column, both times 255.
    """
    b32 = b.astype(np.int32)
    if b32.shape[0] < 2:
        b32 = np.pad(b32, ((0, 2 - b32.shape[0]), (0, 0)))
    ordered = np.sort(b32, axis=0)
    top = np.clip(ordered[-2:], 0, None).sum(axis=0)
    bottom = np.clip(ordered[:2], None, 0).sum(axis=0)
    return int(top.max(initial=0)) * U8_MAX, int(bottom.min(initial=0)) * U8_MAX


def can_saturate(b: np.ndarray) -> bool:
    high, low = worst_pair_sums(b)
    return high > INT16_MAX or low < INT16_MIN


def _dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sparse.values)
    flat = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
    index = numpy_helper.to_array(sparse.indices)
    if index.ndim == 2:  # coordinates, one row per value, instead of linear positions
        index = np.ravel_multi_index(tuple(index.T), tuple(sparse.dims))
    flat[index.reshape(-1)] = values.reshape(-1)
    return flat.reshape(tuple(sparse.dims))


def _constant_values(model: onnx.ModelProto, names: set[str]) -> dict[str, np.ndarray]:
    """Tensors of ``names`` that are initializers or computed from initializers alone.

    The packed format rebuilds its weights in a block of nodes that read only
    initializers; that block is run here (onnxruntime, imported only then).
    """
    graph = model.graph
    known = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    known.update({s.values.name: _dense(s) for s in graph.sparse_initializer})
    found = {name: known[name] for name in names if name in known}
    missing = names - set(found)
    if not missing:
        return found
    available = set(known)
    block: list[onnx.NodeProto] = []
    for node in graph.node:  # topological: a constant node's inputs are known before it
        if all(not i or i in available for i in node.input):
            block.append(node)
            available.update(node.output)
    wanted = sorted(missing & available)
    if not wanted:
        return found
    import onnxruntime as ort

    sub = onnx.helper.make_graph(
        block, "constants", [],
        [onnx.helper.make_empty_tensor_value_info(name) for name in wanted],
        list(graph.initializer), sparse_initializer=list(graph.sparse_initializer),
    )
    standalone = onnx.helper.make_model(sub, opset_imports=list(model.opset_import))
    standalone.ir_version = model.ir_version
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(standalone.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    found.update(zip(wanted, session.run(wanted, {}), strict=True))
    return found


def int8_matmul_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The int8 weight (input B) of every ``MatMulInteger``, by tensor name."""
    names = {node.input[1] for node in model.graph.node
             if node.op_type == "MatMulInteger" and len(node.input) > 1}
    values = _constant_values(model, names)
    return {name: array for name, array in values.items() if array.dtype == np.int8}


def saturation_risks(model: onnx.ModelProto) -> list[str]:
    """Names of int8 MatMul weights that an AVX2-only x86 CPU can clip (empty: safe)."""
    return sorted(name for name, b in int8_matmul_weights(model).items()
                  if b.ndim == 2 and can_saturate(b))
