"""Every format of every zoo model runs in onnxruntime and computes the torch model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _export_helpers import ZOO_MODELS, sample_inputs, saved_model, torch_logits
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from export.formats import _best_code, gap_code, to_packed, to_sparse
from export.graph import compact, stored_weights
from export.onnx_export import build_artifacts, reference_model, weight_count
from export.options import ExportOptions
from export.prune import prune_filters
from mpfl.errors import ConfigError, ExportError


def run(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"input": x})[0]
    return out


@pytest.mark.parametrize("name", ZOO_MODELS)
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_weight_formats_match_torch(name: str, sparsity: float, int8: bool) -> None:
    saved = saved_model(name, "weight", sparsity)
    reference, _ = reference_model(saved)
    x = sample_inputs(name)
    expected = torch_logits(reference, x)
    scale = np.abs(expected).max()
    outputs = {}
    sizes = {}
    for fmt in ("dense", "sparse", "packed"):
        artifact, baseline, _ = build_artifacts(saved, ExportOptions(format=fmt, int8=int8))
        onnx.checker.check_model(onnx.load_from_string(artifact.data))
        outputs[fmt] = run(artifact.data, x)
        sizes[fmt] = artifact.size
        count = stored_weights(onnx.load_from_string(artifact.data))
        assert count.represented == stored_weights(onnx.load_from_string(baseline.data)).stored
    tolerance = 0.05 if int8 else 1e-5
    for fmt, got in outputs.items():
        assert np.abs(got - expected).max() <= tolerance * scale, fmt
    # Packed and sparse only change how the weights are stored, not the arithmetic.
    np.testing.assert_allclose(outputs["packed"], outputs["dense"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outputs["sparse"], outputs["dense"], rtol=1e-6, atol=1e-7)
    assert sizes["packed"] < sizes["dense"]
    if sparsity >= 0.9:
        assert sizes["packed"] < sizes["sparse"] < sizes["dense"]


@pytest.mark.parametrize("name", ZOO_MODELS)
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_pruned_format_matches_torch_and_is_smaller(name: str, int8: bool) -> None:
    saved = saved_model(name, "filter", 0.5)
    reference, unit_map = reference_model(saved)
    x = sample_inputs(name)
    expected = torch_logits(reference, x)
    smaller = prune_filters(reference, unit_map, saved.mask)
    artifact, baseline, _ = build_artifacts(saved, ExportOptions(format="pruned", int8=int8))
    got = run(artifact.data, x)
    tolerance = 0.05 if int8 else 1e-5
    assert np.abs(got - expected).max() <= tolerance * np.abs(expected).max()
    if not int8:
        assert (got.argmax(1) == expected.argmax(1)).all()
    # The file holds exactly the smaller network's weights.
    assert stored_weights(onnx.load_from_string(artifact.data)).stored == weight_count(smaller)
    assert weight_count(smaller) < weight_count(reference)
    assert artifact.size < baseline.size


def test_auto_picks_pruned_for_filters_and_the_smallest_otherwise() -> None:
    filters = saved_model("lenet5", "filter", 0.5)
    assert build_artifacts(filters, ExportOptions())[0].format == "pruned"
    weights = saved_model("lenet5", "weight", 0.9)
    best, _, candidates = build_artifacts(weights, ExportOptions())
    assert best.size == min(size for _, size in candidates)
    assert {fmt for fmt, _ in candidates} == {"packed", "sparse", "dense"}


def test_packed_at_90_percent_meets_the_size_goal() -> None:
    saved = saved_model("cnn-cifar", "weight", 0.9)
    packed, dense, _ = build_artifacts(saved, ExportOptions(format="packed"))
    assert packed.size <= 0.14 * dense.size
    packed8, _, _ = build_artifacts(saved, ExportOptions(format="packed", int8=True))
    assert packed8.size <= 0.06 * dense.size


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError):
        ExportOptions(format="zip")
    with pytest.raises(ConfigError):
        ExportOptions(opset=9)
    with pytest.raises(ConfigError):
        ExportOptions(compress="gzip")


def _weight_model(weight: np.ndarray, opset: int = 17) -> onnx.ModelProto:
    """A graph whose output is one weight tensor, so decoding is checked value by value."""
    dtype = helper.np_dtype_to_tensor_dtype(weight.dtype)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["out"])], "g", [],
        [helper.make_tensor_value_info("out", dtype, list(weight.shape))],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _decoded(model: onnx.ModelProto) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {})[0]
    return out


weights = st.builds(
    lambda shape, density, dtype, seed: _sparse_array(shape, density, dtype, seed),
    st.tuples(st.integers(1, 40), st.integers(1, 90)),
    st.sampled_from([0.0, 0.002, 0.03, 0.1, 0.3, 0.7, 1.0]),
    st.sampled_from([np.float32, np.int8]),
    st.integers(0, 2**16),
)


def _sparse_array(shape: tuple[int, int], density: float, dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 100, size=shape) * rng.choice([-1, 1], size=shape)
    return np.where(rng.random(shape) < density, values, 0).astype(dtype)


@settings(max_examples=40)
@given(weight=weights)
def test_packed_decodes_every_tensor_exactly(weight: np.ndarray) -> None:
    packed = to_packed(_weight_model(weight))
    onnx.checker.check_model(packed)
    np.testing.assert_array_equal(_decoded(packed), weight)
    sparse = to_sparse(_weight_model(weight))
    np.testing.assert_array_equal(_decoded(sparse), weight)


@pytest.mark.parametrize(
    ("density", "dtype", "kind"),
    [(0.5, np.float32, "bits"), (0.1, np.float32, "gaps8"), (0.1, np.int8, "gaps4")],
)
def test_each_position_code_is_chosen_where_it_is_smallest(
    density: float, dtype: type, kind: str
) -> None:
    weight = _sparse_array((64, 101), density, dtype, seed=3)
    code = _best_code(weight.ravel())
    assert code.kind == kind
    np.testing.assert_array_equal(_decoded(to_packed(_weight_model(weight))), weight)


@settings(max_examples=60)
@given(
    positions=st.sets(st.integers(0, 5000), max_size=200).map(sorted),
    width=st.sampled_from([4, 8]),
)
def test_gap_code_round_trips(positions: list[int], width: int) -> None:
    gaps, filler = gap_code(np.asarray(positions, dtype=np.int64), (1 << width) - 1)
    assert ((gaps >= 0) & (gaps < 1 << width)).all()
    assert (gaps[1:] >= 1).all()
    np.testing.assert_array_equal(np.cumsum(gaps)[~filler], positions)


def test_gap_code_rejects_unsorted_positions() -> None:
    with pytest.raises(ExportError):
        gap_code(np.array([3, 3]))


def test_packed_needs_opset_13() -> None:
    with pytest.raises(ExportError, match="opset"):
        to_packed(_weight_model(np.zeros((4, 4), dtype=np.float32), opset=12))


def test_dense_weights_are_left_alone() -> None:
    weight = np.arange(1, 65, dtype=np.float32).reshape(8, 8)
    model = _weight_model(weight)
    assert to_packed(model).SerializeToString() == model.SerializeToString()
    assert to_sparse(model).SerializeToString() == model.SerializeToString()


def test_compact_keeps_behaviour_and_io_names() -> None:
    saved = saved_model("resnet8", "weight", 0.5)
    artifact, _, _ = build_artifacts(saved, ExportOptions(format="dense"))
    model = onnx.load_from_string(artifact.data)
    again = compact(model)
    assert [i.name for i in again.graph.input] == ["input"]
    assert [o.name for o in again.graph.output] == ["logits"]
    x = sample_inputs("resnet8", n=4)
    np.testing.assert_array_equal(run(again.SerializeToString(), x), run(artifact.data, x))
    assert all(not node.name for node in again.graph.node)


def test_metadata_records_format_and_precision() -> None:
    saved = saved_model("mlp", "weight", 0.9)
    artifact, _, _ = build_artifacts(saved, ExportOptions(format="packed", int8=True), "digits")
    meta = {
        p.key: p.value
        for p in onnx.load_from_string(artifact.data).metadata_props
        if p.key.startswith("mpfl.")
    }
    assert meta == {"mpfl.format": "packed", "mpfl.precision": "int8", "mpfl.dataset": "digits"}
    assert TensorProto.INT8 in {
        i.data_type for i in onnx.load_from_string(artifact.data).graph.initializer
    }
