"""int8 exports: dynamic quantization for dense layers, int8 storage for convolutions.

- MatMul / Gemm go through onnxruntime's ``quantize_dynamic`` (int8 weights, activations
  quantized per batch, MatMulInteger): smaller and faster on CPU. The weights use 7 bits
  ([-64, 64], ``reduce_range``) with one scale per output column (``per_channel``): on
  x86 CPUs with AVX2 but no VNNI, onnxruntime's u8s8 kernel adds pairs of products in a
  saturating int16, and full-range weights clip there (0.115 of the output scale and
  4.7% of top-1 flips on the digits MLP, emulated Haswell) while VNNI and ARM64 CPUs do
  not. 7-bit weights cannot clip (2 x 255 x 64 < 32767), so every CPU computes the same
  integers; per-column scales win back most of the lost bit (BENCHMARKS.md, Export).
  uint8 weights would not clip either, but their zero point is not 0, so pruned weights
  would no longer be zeros that the packed and sparse formats drop.
- Conv weights are stored as int8 with one symmetric scale per output channel and turned
  back into fp32 by a Cast and a Mul that onnxruntime folds when the session is created.
  The file shrinks as much, but the convolution itself stays fp32: onnxruntime's
  ConvInteger (what ``quantize_dynamic`` emits for Conv) runs several times slower than
  its fp32 Conv on CPU.

Both keep pruned weights exactly zero (symmetric scales, zero point 0), so the packed and
sparse formats still drop them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.saturation import saturation_risks
from mpfl.errors import ExportError

_QMAX = 127


def quantize_linear_layers(
    model: onnx.ModelProto, reduce_range: bool = True, per_channel: bool = True
) -> onnx.ModelProto:
    """onnxruntime's dynamic int8 quantization, applied to MatMul and Gemm only.

    The defaults are what every export uses; the flags exist so tests can build the
    full-range file that clips on AVX2-only CPUs and show the checks catch it.
    """
    import logging
    import warnings

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint at WARNING
    try:
        with tempfile.TemporaryDirectory(prefix="mpfl-int8-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = Path(tmp) / "int8.onnx"
            quantize_dynamic(model, out, op_types_to_quantize=["MatMul"],
                             weight_type=QuantType.QInt8, reduce_range=reduce_range,
                             per_channel=per_channel)
            return onnx.load(out)
    except Exception as exc:  # noqa: BLE001 - any quantizer failure is one export error
        raise ExportError(f"int8 quantization failed: {exc}") from exc
    finally:
        root.setLevel(level)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: (int8 weights, fp32 scales shaped to broadcast)."""
    rows = w.reshape(w.shape[0], -1)
    peak = np.abs(rows).max(axis=1)
    scale = np.where(peak > 0, peak / _QMAX, 1.0).astype(np.float32)
    scale = scale.reshape((-1,) + (1,) * (w.ndim - 1))
    q = np.clip(np.rint(w / scale), -_QMAX, _QMAX).astype(np.int8)
    return q, scale


def store_conv_weights_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose fp32 Conv weights are int8 initializers expanded by Cast * scale."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {
        node.input[1]
        for node in graph.node
        if node.op_type == "Conv" and len(node.input) > 1
    }
    keep: list[onnx.TensorProto] = []
    added: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for init in graph.initializer:
        if init.name not in weights or init.data_type != TensorProto.FLOAT:
            keep.append(init)
            continue
        q, scale = quantize_weight(numpy_helper.to_array(init))
        added += [numpy_helper.from_array(q, f"{init.name}_q8"),
                  numpy_helper.from_array(scale, f"{init.name}_scale")]
        nodes += [
            helper.make_node("Cast", [f"{init.name}_q8"], [f"{init.name}_f"],
                             to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{init.name}_f", f"{init.name}_scale"], [init.name]),
        ]
    if not nodes:
        return out
    del graph.initializer[:]
    graph.initializer.extend(keep + added)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)  # reads only initializers: may run first
    return out


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """The int8 graph, refused if any CPU class could compute it differently."""
    quantized = store_conv_weights_int8(quantize_linear_layers(model))
    risky = saturation_risks(quantized)
    if risky:  # a quantizer change, never a user's doing: stop before writing a file
        raise ExportError("int8 weights exceed 7 bits and would clip on x86 CPUs without "
                          "VNNI", layers=", ".join(risky))
    return quantized
