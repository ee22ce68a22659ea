"""Verification passes honest exports and fails corrupted ones, collecting every reason."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from _export_helpers import saved_model
from onnx import numpy_helper

from export.onnx_export import export_model, reference_model
from export.options import ExportOptions
from export.report import TOLERANCES
from export.verify import (
    compare_outputs,
    export_and_verify,
    report_path,
    require_pass,
    verification_data,
    verify_export,
)
from mpfl.errors import DataError, ExportError


def test_an_honest_export_passes_and_writes_its_report(tmp_path: Path) -> None:
    saved = saved_model("lenet5", "weight", 0.9)
    data = verification_data(saved.spec, None, None, limit=64)
    options = ExportOptions(format="packed", compress="zstd")
    result, report = export_and_verify(saved, tmp_path / "m.onnx", options, data, latency_runs=2)
    assert report.passed, report.failures
    assert result.path == tmp_path / "m.onnx.zst"
    assert report.rel_diff <= TOLERANCES["fp32"].max_rel_diff
    assert report.top1_agreement == 1.0
    assert report.stored_sparsity == pytest.approx(0.9, abs=0.005)
    assert report.file_bytes < report.model_bytes < report.dense_bytes
    assert report.latency_b1_ms is not None and report.dense_latency_b64_ms is not None
    doc = json.loads(report_path(result.path).read_text())
    assert doc["passed"] is True and doc["format"] == "packed"
    assert "PASS" in report.table()
    require_pass(report)


def _corrupt(path: Path) -> None:
    """Scale the largest weight tensor by 3 in place (the file stays valid ONNX)."""
    model = onnx.load(path)
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(biggest) * 3
    biggest.CopyFrom(numpy_helper.from_array(array.astype(np.float32), biggest.name))
    onnx.save(model, path)


def test_a_corrupted_export_fails_with_every_reason(tmp_path: Path) -> None:
    saved = saved_model("mlp", "filter", 0.5)
    reference, _ = reference_model(saved)
    result, _ = export_model(saved, tmp_path / "m.onnx", ExportOptions(format="pruned"))
    _corrupt(result.path)
    data = verification_data(saved.spec, None, None, limit=128)
    report = verify_export(result, reference, data, mask_sparsity=0.5, latency_runs=0)
    assert not report.passed
    assert any("max abs diff" in f for f in report.failures)
    assert any("top-1" in f for f in report.failures)
    assert "FAIL" in report.table()
    with pytest.raises(ExportError, match="verification failed"):
        require_pass(report)


def test_a_file_onnxruntime_cannot_load_fails(tmp_path: Path) -> None:
    saved = saved_model("mlp", "weight", 0.5)
    reference, _ = reference_model(saved)
    result, _ = export_model(saved, tmp_path / "m.onnx", ExportOptions(format="dense"))
    result.path.write_bytes(result.path.read_bytes()[:200])
    data = verification_data(saved.spec, None, None, limit=8)
    report = verify_export(result, reference, data, mask_sparsity=0.5, latency_runs=0)
    assert not report.passed
    assert any("onnxruntime could not run" in f for f in report.failures)
    assert any("cannot read the exported file" in f for f in report.failures)


def test_a_format_that_stores_pruned_weights_fails(tmp_path: Path) -> None:
    saved = saved_model("mlp", "weight", 0.9)
    reference, _ = reference_model(saved)
    result, _ = export_model(saved, tmp_path / "m.onnx", ExportOptions(format="dense"))
    claimed = dataclasses.replace(result, format="packed")  # a dense file posing as packed
    data = verification_data(saved.spec, None, None, limit=8)
    report = verify_export(claimed, reference, data, mask_sparsity=0.9, latency_runs=0)
    assert any("stores" in f for f in report.failures)


def test_compare_outputs_collects_each_check() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 10)).astype(np.float32)
    labels = ref.argmax(1)
    same = compare_outputs(ref, ref.copy(), labels, TOLERANCES["fp32"])
    assert same.failures == () and same.accuracy_onnx == 1.0
    shuffled = compare_outputs(ref, ref[::-1].copy(), labels, TOLERANCES["fp32"])
    assert len(shuffled.failures) == 3  # diff, top-1, accuracy
    wrong_shape = compare_outputs(ref, ref[:, :5], labels, TOLERANCES["fp32"])
    assert "shape" in wrong_shape.failures[0]
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert any("NaN" in f for f in compare_outputs(ref, nan, None, TOLERANCES["fp32"]).failures)


def test_near_ties_are_not_counted_as_errors() -> None:
    ref = np.array([[1.0, 1.0 - 1e-7, 0.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    out = np.array([[1.0 - 1e-7, 1.0, 0.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    result = compare_outputs(ref, out, None, TOLERANCES["fp32"])
    assert result.failures == ()
    assert result.near_ties == 1 and result.top1_mismatches == 1


def test_verification_data_checks_the_model_input(tmp_path: Path) -> None:
    saved = saved_model("cnn-cifar", "weight", 0.5)
    with pytest.raises(DataError, match="does not fit"):
        verification_data(saved.spec, "digits", None)
    synthetic = verification_data(saved.spec, None, None, limit=5)
    assert synthetic.x.shape == (5, 3, 32, 32) and synthetic.y is None


@pytest.mark.data
def test_real_test_split_reports_accuracy(tmp_path: Path, mnist_dir: Path) -> None:
    saved = saved_model("lenet5", "filter", 0.5, meta={"dataset": "mnist"})
    data = verification_data(saved.spec, "mnist", mnist_dir, limit=500)
    options = ExportOptions(format="pruned", int8=True)
    _, report = export_and_verify(saved, tmp_path / "m.onnx", options, data, latency_runs=0)
    assert report.passed, report.failures
    assert report.samples == 500 and report.inputs == "mnist test split"
    assert report.accuracy_onnx is not None and report.accuracy_torch is not None
    assert abs(report.accuracy_onnx - report.accuracy_torch) <= 0.02


def test_int8_accuracy_says_it_depends_on_the_batch_and_infer_uses_the_same_one(
    tmp_path: Path, mnist_dir: Path
) -> None:
    """Dynamic int8 quantises activations per batch: the report and mpfl-infer must agree
    on the batch by default, and both say why another batch size moves the figure."""
    from click.testing import CliRunner

    from export.infer_cli import main as infer
    from export.runner import BATCH_SIZE

    saved = saved_model("lenet5", "filter", 0.5)
    data = verification_data(saved.spec, "mnist", str(mnist_dir), limit=300)
    npz = tmp_path / "images.npz"
    np.savez(npz, x=data.x, y=data.y)
    for int8, said in ((True, True), (False, False)):
        options = ExportOptions(format="pruned", int8=int8)
        out = tmp_path / f"m-{int8}.onnx"
        result, report = export_and_verify(saved, out, options, data, latency_runs=0)
        assert ("quantised per batch" in report.table()) is said
        run = CliRunner().invoke(infer, [str(result.path), "--input", str(npz), "--show", "0",
                                         "--json"])
        assert run.exit_code == 0, run.output
        doc = json.loads(run.output)
        assert doc["batch_size"] == BATCH_SIZE
        assert doc["accuracy"] == report.accuracy_onnx  # same batches, same integers
        text = CliRunner().invoke(infer, [str(result.path), "--input", str(npz), "--show", "0",
                                          "--batch-size", "64"]).output
        assert ("quantised per batch" in text) is said
        assert ("this run: 64" in text) is said
