"""int8 exports compute the same on every CPU class: checked here from the weights.

onnxruntime's u8s8 MatMul on x86 CPUs with AVX2 but no VNNI adds pairs of products in a
saturating int16 (VPMADDUBSW); this machine has VNNI and never clips, so comparing with
torch here cannot catch a file that clips there. These tests use the clipping arithmetic
itself (``u8s8_matmul``) and the property that prevents it, so a setting that is right
only on VNNI fails on any machine.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _export_helpers import ZOO_MODELS, saved_model
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from export.cpu import cpu_info
from export.onnx_export import SPARSE_STORED_DENSE, build_artifacts, torch_to_onnx
from export.options import ExportOptions
from export.quantize import quantize_int8, quantize_linear_layers
from export.saturation import (
    INT16_MAX,
    can_saturate,
    int8_matmul_weights,
    saturation_risks,
    u8s8_matmul,
)
from export.verify import int8_kernel_checks
from mpfl.ml.data import load_dataset
from mpfl.ml.models import ModelSpec, build_model

DIGITS_MLP = ModelSpec("mlp", {"image_size": 8, "hidden": [64, 32]})


def test_the_reference_clips_pairs_as_vpmaddubsw_does() -> None:
    a = np.array([[255, 255, 255, 0]], dtype=np.uint8)
    b = np.array([[127], [127], [127], [127]], dtype=np.int8)
    assert u8s8_matmul(a, b, saturate=False)[0, 0] == 3 * 255 * 127
    assert u8s8_matmul(a, b)[0, 0] == INT16_MAX + 255 * 127  # first pair clipped
    assert can_saturate(b) and not can_saturate(np.full((4, 1), 64, dtype=np.int8))


@given(
    hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.integers(1, 9))),
    st.data(),
)
def test_weights_that_cannot_saturate_give_exact_sums(a: np.ndarray, data: st.DataObject) -> None:
    b = data.draw(hnp.arrays(np.int8, (a.shape[1], data.draw(st.integers(1, 5)))))
    if not can_saturate(b):
        np.testing.assert_array_equal(u8s8_matmul(a, b), u8s8_matmul(a, b, saturate=False))
    seven_bit = np.clip(b, -64, 64)
    assert not can_saturate(seven_bit)
    np.testing.assert_array_equal(u8s8_matmul(a, seven_bit),
                                  u8s8_matmul(a, seven_bit, saturate=False))


def _first_layer_activations(x: np.ndarray) -> np.ndarray:
    """onnxruntime's DynamicQuantizeLinear of the flattened input: what MatMulInteger reads."""
    flat = x.reshape(len(x), -1).astype(np.float32)
    low, high = min(float(flat.min()), 0.0), max(float(flat.max()), 0.0)
    scale = (high - low) / 255
    zero = np.clip(np.rint(-low / scale), 0, 255)
    return np.clip(np.rint(flat / scale) + zero, 0, 255).astype(np.uint8)


def _first_weight(model: onnx.ModelProto) -> np.ndarray:
    first = next(n for n in model.graph.node if n.op_type == "MatMulInteger")
    return int8_matmul_weights(model)[first.input[1]]


def test_full_range_weights_clip_on_real_digits_and_the_export_does_not() -> None:
    """The setting the issue found (QInt8, full range) against the one exports use."""
    dense = torch_to_onnx(build_model(DIGITS_MLP, seed=0), (1, 8, 8), 17)
    a = _first_layer_activations(load_dataset("digits", None, "test").x)
    old = quantize_linear_layers(dense, reduce_range=False, per_channel=False)
    assert saturation_risks(old)
    b_old = _first_weight(old)
    clipped = u8s8_matmul(a, b_old) != u8s8_matmul(a, b_old, saturate=False)
    assert clipped.any()  # real inputs reach it, not only a constructed worst case
    with pytest.raises(Exception, match="7 bits"):
        from unittest import mock

        with mock.patch("export.quantize.quantize_linear_layers", return_value=old):
            quantize_int8(dense)
    new = quantize_int8(dense)
    assert saturation_risks(new) == []
    b_new = _first_weight(new)
    np.testing.assert_array_equal(u8s8_matmul(a, b_new), u8s8_matmul(a, b_new, saturate=False))
    assert np.abs(b_new.astype(np.int16)).max() <= 64


@pytest.mark.parametrize("name", ZOO_MODELS)
@pytest.mark.parametrize(("granularity", "formats"), [
    ("weight", ("dense", "sparse", "packed")), ("filter", ("pruned", "packed"))])
def test_every_int8_format_stores_weights_no_cpu_can_clip(
    name: str, granularity: str, formats: tuple[str, ...]
) -> None:
    saved = saved_model(name, granularity, 0.9 if granularity == "weight" else 0.5)
    for fmt in formats:
        artifact, _, _ = build_artifacts(saved, ExportOptions(format=fmt, int8=True))
        model = onnx.load_from_string(artifact.data)
        weights = int8_matmul_weights(model)
        assert weights, f"{fmt}: no int8 MatMul weight found"  # the check looked at something
        assert saturation_risks(model) == [], fmt
        for b in weights.values():
            assert np.abs(b.astype(np.int16)).max() <= 64, fmt


def test_packed_weights_are_read_back_as_the_dense_ones() -> None:
    saved = saved_model("lenet5", "weight", 0.9)
    dense, _, _ = build_artifacts(saved, ExportOptions(format="dense", int8=True))
    packed, _, _ = build_artifacts(saved, ExportOptions(format="packed", int8=True))
    want = _in_graph_order(onnx.load_from_string(dense.data))
    got = _in_graph_order(onnx.load_from_string(packed.data))
    assert len(want) == len(got) == 3  # LeNet-5's three Linear layers
    for expected, actual in zip(want, got, strict=True):
        np.testing.assert_array_equal(actual, expected)


def _in_graph_order(model: onnx.ModelProto) -> list[np.ndarray]:
    """int8 MatMul weights by layer (names differ between formats after compaction)."""
    weights = int8_matmul_weights(model)
    return [weights[n.input[1]] for n in model.graph.node if n.op_type == "MatMulInteger"]


def test_verification_names_the_kernel_when_it_is_the_cause() -> None:
    dense = torch_to_onnx(build_model(DIGITS_MLP, seed=0), (1, 8, 8), 17)
    old = quantize_linear_layers(dense, reduce_range=False, per_channel=False)
    avx2 = {"cpu": "AMD EPYC (x86_64; avx2; x86 with AVX2, no VNNI)", "saturating_u8s8": True}
    failures = int8_kernel_checks(old, avx2, numeric_failures=True)
    assert len(failures) == 2
    assert "no VNNI" in failures[0] and "7 bits" in failures[0]
    assert "AMD EPYC" in failures[1] and "likely cause" in failures[1]
    vnni = {"cpu": "Xeon", "saturating_u8s8": False}
    assert len(int8_kernel_checks(old, vnni, numeric_failures=False)) == 1  # refused anywhere
    new = quantize_int8(dense)
    assert int8_kernel_checks(new, vnni, numeric_failures=False) == []
    assert "not this CPU's kernel" in int8_kernel_checks(new, avx2, numeric_failures=True)[0]


@pytest.mark.parametrize(("text", "machine", "kernel"), [
    ("model name : AMD EPYC 7B12\nflags : sse avx2 fma\n", "x86_64", "x86 with AVX2, no VNNI"),
    ("model name : Xeon\nflags : avx2 avx512f avx512_vnni\n", "x86_64", "x86 with VNNI"),
    ("model name : Core\nflags : avx2 avx_vnni\n", "x86_64", "x86 with VNNI"),
    ("Features : fp asimd\nCPU implementer : 0x41\nCPU part : 0xd08\n", "aarch64", "ARM64"),
])
def test_cpu_classes_are_told_from_cpuinfo(text: str, machine: str, kernel: str) -> None:
    info = cpu_info(text, machine)
    assert info.kernel_class == kernel
    assert info.saturating_u8s8 == (kernel == "x86 with AVX2, no VNNI")
    assert kernel in info.describe()


def test_sparse_that_stores_nothing_sparse_says_so() -> None:
    filters = saved_model("mlp", "filter", 0.5)
    artifact, _, _ = build_artifacts(filters, ExportOptions(format="sparse"))
    assert artifact.note == SPARSE_STORED_DENSE
    assert not onnx.load_from_string(artifact.data).graph.sparse_initializer
    weights = saved_model("mlp", "weight", 0.9)
    assert build_artifacts(weights, ExportOptions(format="sparse"))[0].note == ""
