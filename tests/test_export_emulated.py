"""Exports on CPUs this machine is not, under qemu-user (``make emulators``).

- Emulated Haswell (AVX2, no AVX-512, no VNNI): onnxruntime takes the u8s8 kernel that
  clips pair sums to int16. A control shows the emulation really reaches it; then the
  int8 exports the issue found failing must compute there what they compute here.
- Emulated Cortex-A72 (a Raspberry Pi 4's core): every format, fp32 and int8, through the
  torch-free runner and ``mpfl-infer``, must give the outputs and accuracy of this CPU.

Exported natively (torch), run emulated (onnxruntime and numpy only). Timings under
emulation mean nothing, so none are checked. Under MPFL_REQUIRE_DATA=1 a missing emulator
fails these tests instead of skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import emulation as emulate
import numpy as np
import onnx
import pytest
from _export_helpers import random_filter_mask, saved_model, torch_logits
from onnx import TensorProto, helper, numpy_helper

from export.onnx_export import export_model, reference_model
from export.options import ExportOptions
from export.quantize import quantize_int8, quantize_linear_layers
from export.report import TOLERANCES
from export.runner import Runner
from export.verify import compare_outputs
from mpfl.ml.checkpoint import SavedModel
from mpfl.ml.data import load_dataset
from mpfl.ml.masks import local_mask, unit_scores
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.train import train_local
from mpfl.ml.units import build_unit_map, model_state
from mpfl.wire.specs import DEFAULT_TRAIN

pytestmark = pytest.mark.integration
DIGITS_MLP = ModelSpec("mlp", {"image_size": 8, "hidden": [64, 32]})


def _emulator(name: str) -> emulate.Target:
    target = emulate.target(name)
    reason = emulate.unavailable(target)
    if reason:
        if os.environ.get("MPFL_REQUIRE_DATA") == "1":
            pytest.fail(f"emulator {name}: {reason}")
        pytest.skip(f"emulator {name}: {reason}")
    return target


def _ones_model() -> onnx.ModelProto:
    """x @ ones(64, 16): every output is sum(x), and all-ones inputs clip a 16-bit pair."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "ones",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(np.ones((64, 16), dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _write(path: Path, model: onnx.ModelProto) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _native(models: list[Path], x: np.ndarray) -> list[np.ndarray]:
    return [Runner(m, threads=1).predict(x) for m in models]


def test_avx2_only_x86_clips_full_range_weights_and_not_the_exports(tmp_path: Path) -> None:
    haswell = _emulator("haswell")
    assert "no VNNI" in emulate.describe(haswell)
    dense = _ones_model()
    old = _write(tmp_path / "old.onnx",
                 quantize_linear_layers(dense, reduce_range=False, per_channel=False))
    new = _write(tmp_path / "new.onnx", quantize_int8(dense))
    x = np.ones((4, 64), dtype=np.float32)
    data = tmp_path / "x.npz"
    np.savez(data, x=x)
    outs = [np.load(p) for p in emulate.logits(haswell, data, [old, new], tmp_path)]
    here = _native([old, new], x)
    np.testing.assert_allclose(here[0], 64.0, rtol=1e-3)  # this CPU does not clip
    assert outs[0].max() < 40.0  # the emulated kernel does: the control the rest relies on
    np.testing.assert_allclose(outs[1], 64.0, rtol=1e-3)
    np.testing.assert_allclose(outs[1], here[1], rtol=1e-6)


def _digits_checkpoint() -> SavedModel:
    """The digits MLP of tests/test_export_cli.py, whose int8 export failed on AVX2 CPUs."""
    model = build_model(DIGITS_MLP, seed=0)
    unit_map = build_unit_map(model, DIGITS_MLP, "filter")
    mask = random_filter_mask(unit_map.n_units, unit_map.slices, 0.5, seed=0)
    return SavedModel(DIGITS_MLP, "filter", unit_map.apply(model_state(model), mask), mask, {})


def _check_like_native(
    target: emulate.Target, cases: list[tuple[SavedModel, str, bool]], x: np.ndarray,
    y: np.ndarray | None, tmp_path: Path,
) -> list[tuple[Path, np.ndarray]]:
    """Export each case here, run all under ``target``; each must match this CPU and pass
    the verification tolerances against torch. Returns (file, emulated logits)."""
    paths, expected = [], []
    for i, (saved, fmt, int8) in enumerate(cases):
        options = ExportOptions(format=fmt, int8=int8, compress="zstd" if i == 0 else "none")
        result, _ = export_model(saved, tmp_path / f"{i}-{fmt}-{int8}.onnx", options)
        paths.append(result.path)
        expected.append(torch_logits(reference_model(saved)[0], x))
    data = tmp_path / "inputs.npz"
    np.savez(data, x=x)
    emulated = [np.load(p) for p in emulate.logits(target, data, paths, tmp_path)]
    for path, ref, got, here, (_, _, int8) in zip(
        paths, expected, emulated, _native(paths, x), cases, strict=True
    ):
        scale = float(np.abs(ref).max())
        # The same integers on every CPU: only fp32 rounding order may differ.
        assert np.abs(got - here).max() <= 1e-4 * scale, path.name
        verdict = compare_outputs(ref, got, y, TOLERANCES["int8" if int8 else "fp32"])
        assert verdict.failures == (), (path.name, verdict.failures)
        if y is not None and int8:
            assert abs(verdict.accuracy_onnx - verdict.accuracy_torch) <= 0.005, path.name
    return list(zip(paths, emulated, strict=True))


def test_int8_exports_compute_the_same_on_avx2_only_x86(tmp_path: Path) -> None:
    haswell = _emulator("haswell")
    digits = load_dataset("digits", None, "test")
    _check_like_native(haswell, [(_digits_checkpoint(), "pruned", True)], digits.x, digits.y,
                       tmp_path)
    weights = saved_model("mlp", "weight", 0.5)
    filters = saved_model("mlp", "filter", 0.5)
    x = np.random.default_rng(1).standard_normal((128, 1, 28, 28)).astype(np.float32)
    _check_like_native(haswell, [(weights, "dense", True), (weights, "packed", True),
                                 (filters, "pruned", True)], x, None, tmp_path)


def _trained_digits(granularity: str, sparsity: float) -> SavedModel:
    train = load_dataset("digits", None, "train")
    model = build_model(DIGITS_MLP, seed=0)
    train_local(model, train, DEFAULT_TRAIN.replace(epochs=8, batch_size=32, lr=0.05, momentum=0.9),
                seed=0)
    unit_map = build_unit_map(model, DIGITS_MLP, granularity)
    state = model_state(model)
    mask = local_mask(unit_scores(state, unit_map), unit_map.full_mask(), unit_map.slices,
                      sparsity)
    return SavedModel(DIGITS_MLP, granularity, unit_map.apply(state, mask), mask, {})


def test_every_export_runs_on_a_raspberry_pi_core(tmp_path: Path) -> None:
    a72 = _emulator("cortex-a72")
    assert "ARM64" in emulate.describe(a72)
    digits = load_dataset("digits", None, "test")
    weights, filters = _trained_digits("weight", 0.9), _trained_digits("filter", 0.5)
    cases = [(saved, fmt, int8) for int8 in (False, True)
             for saved, fmt in ((weights, "dense"), (weights, "sparse"), (weights, "packed"),
                                (filters, "pruned"), (filters, "packed"))]
    done = _check_like_native(a72, cases, digits.x, digits.y, tmp_path)
    # The device's own command on two of them: predictions and accuracy as printed there.
    data = tmp_path / "digits.npz"
    np.savez(data, x=digits.x, y=digits.y)
    for path, logits in (done[2], done[-2]):
        doc = emulate.infer_json(a72, path, data)
        assert doc["images"] == len(digits.y)
        assert doc["accuracy"] == pytest.approx(float((logits.argmax(1) == digits.y).mean()))
        assert doc["accuracy"] > 0.5  # a trained model (chance: 0.1), not a vacuous check


def test_conv_exports_run_on_a_raspberry_pi_core(tmp_path: Path) -> None:
    """LeNet-5: int8 convolutions stored as int8 and packed weights decoded on ARM64."""
    a72 = _emulator("cortex-a72")
    x = np.random.default_rng(2).standard_normal((64, 1, 28, 28)).astype(np.float32)
    cases = [(saved_model("lenet5", "weight", 0.9), "packed", True),
             (saved_model("lenet5", "filter", 0.5), "pruned", True),
             (saved_model("lenet5", "weight", 0.9), "sparse", False)]
    _check_like_native(a72, cases, x, None, tmp_path)


def test_the_ones_model_is_what_the_exporter_quantizes() -> None:
    """The control above is only meaningful if the quantizer emits MatMulInteger for it."""
    quantized = quantize_int8(_ones_model())
    assert any(n.op_type == "MatMulInteger" for n in quantized.graph.node)
