"""Verification, always on: does the exported file compute what the torch model computes?

The file is loaded by onnxruntime in a freshly spawned process (never a fork of this
torch-laden one) through the same ``Runner`` a device uses. Its outputs on real test
inputs are compared with the masked torch model; every mismatch is collected first and
the verdict is taken once, at the end (``VerifyReport.failures``).
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from torch import nn

from export.graph import stored_weights
from export.onnx_export import (
    ExportResult,
    export_model,
    input_shape,
    reference_model,
    weight_count,
    weight_zero_fraction,
)
from export.options import ExportOptions
from export.report import SPARSITY_SLACK, TOLERANCES, Tolerance, VerifyReport
from export.runner import read_model_bytes, verification_worker
from export.saturation import saturation_risks
from mpfl.errors import DataError, ExportError
from mpfl.ml.checkpoint import SavedModel
from mpfl.ml.data import load_dataset
from mpfl.ml.models import ModelSpec

WORKER_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class VerifyData:
    x: np.ndarray
    y: np.ndarray | None
    source: str


def verification_data(
    spec: ModelSpec,
    dataset: str | None,
    data_dir: str | Path | None,
    limit: int | None = None,
    seed: int = 0,
) -> VerifyData:
    """The test split of ``dataset``, or seeded synthetic inputs when there is none."""
    shape = input_shape(spec)
    if dataset is None:
        n = limit or 256
        x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
        return VerifyData(x, None, "synthetic normal inputs (no test set given)")
    data = load_dataset(dataset, data_dir, "test")
    if data.shape != shape:
        raise DataError("the dataset does not fit the model", dataset=dataset,
                        expected=shape, got=data.shape)
    x, y = data.x, data.y
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return VerifyData(x, y, f"{dataset} test split")


@torch.no_grad()
def torch_outputs(model: nn.Module, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    model.eval()
    parts = [model(torch.from_numpy(x[i : i + batch_size])).numpy()
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def run_isolated(
    model_path: Path,
    x: np.ndarray,
    dense_path: Path | None = None,
    threads: int = 1,
    latency_runs: int = 20,
    timeout: float = WORKER_TIMEOUT_S,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Outputs and timings of ``model_path`` from onnxruntime in a spawned process.

    Returns (outputs or None, the worker's result document with an ``error`` on failure).
    """
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mpfl-verify-") as tmp:
        inputs = Path(tmp) / "inputs.npy"
        np.save(inputs, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
        job = {"model": str(model_path), "inputs": str(inputs), "out_dir": tmp,
               "threads": threads, "latency_runs": latency_runs,
               "dense": str(dense_path) if dense_path else None}
        process = ctx.Process(target=verification_worker, args=(job,), daemon=True)
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.terminate()
            process.join(5)
            return None, {"error": f"onnxruntime worker timed out after {timeout:.0f} s"}
        result_file = Path(tmp) / "result.json"
        if not result_file.is_file():
            return None, {"error": f"onnxruntime worker died (exit code {process.exitcode})"}
        result: dict[str, Any] = json.loads(result_file.read_text())
        if not result.get("ok"):
            return None, result
        return np.load(Path(tmp) / "outputs.npy", allow_pickle=False), result


@dataclass(frozen=True)
class Comparison:
    max_abs_diff: float
    output_scale: float
    rel_diff: float
    top1_agreement: float
    top1_mismatches: int
    near_ties: int
    accuracy_torch: float | None
    accuracy_onnx: float | None
    failures: tuple[str, ...]


def compare_outputs(
    reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None, tol: Tolerance
) -> Comparison:
    """Every numeric check of one export against its reference, failures collected."""
    failures: list[str] = []
    if outputs.shape != reference.shape:
        failures.append(f"output shape {outputs.shape} differs from torch {reference.shape}")
        nan = float("nan")
        return Comparison(nan, nan, nan, 0.0, len(reference), 0, None, None, tuple(failures))
    if not np.isfinite(outputs).all():
        failures.append("outputs contain NaN or infinity")
    diff = np.abs(outputs.astype(np.float64) - reference)
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    rel = max_abs / scale if scale > 0 else max_abs
    if not rel <= tol.max_rel_diff:
        failures.append(f"max abs diff {max_abs:.3g} is {rel:.3g} of the output scale "
                        f"(limit {tol.max_rel_diff:g})")
    ref_top = reference.argmax(axis=1)
    out_top = outputs.argmax(axis=1)
    differ = ref_top != out_top
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - ordered[:, -2] if reference.shape[1] > 1 else ordered[:, -1] * np.inf
    near_tie = differ & (margin <= tol.tie_margin * scale)
    agreement = 1.0 - float(differ.mean()) if len(differ) else 1.0
    decisive = differ & ~near_tie
    kept = 1.0 - float(decisive.mean()) if len(differ) else 1.0
    if kept < tol.min_top1_agreement:
        failures.append(f"{int(decisive.sum())} top-1 predictions differ from torch "
                        f"(agreement {kept:.2%}, limit {tol.min_top1_agreement:.0%})")
    acc_torch = acc_onnx = None
    if labels is not None and len(labels):
        acc_torch = float((ref_top == labels).mean())
        acc_onnx = float((out_top == labels).mean())
        if acc_torch - acc_onnx > tol.max_accuracy_drop:
            failures.append(f"test accuracy drops {acc_torch - acc_onnx:.2%} "
                            f"(limit {tol.max_accuracy_drop:.1%})")
    return Comparison(max_abs, scale, rel, agreement, int(differ.sum()), int(near_tie.sum()),
                      acc_torch, acc_onnx, tuple(failures))


def _stored_sparsity(model: onnx.ModelProto, total_weights: int) -> float:
    count = stored_weights(model)
    return 1.0 - count.stored / total_weights if total_weights else 0.0


def int8_kernel_checks(
    model: onnx.ModelProto, run: dict[str, Any], numeric_failures: bool
) -> list[str]:
    """Failures of an int8 file that depend on the CPU class, each saying which and why.

    Judged from the weights, so a VNNI or ARM machine refuses a file that an AVX2-only
    x86 device would run wrongly; when the numbers fail on such a device, says so.
    """
    risky = saturation_risks(model)
    out: list[str] = []
    if risky:
        out.append(f"int8 weights of {len(risky)} MatMul layer(s) use more than 7 bits: x86 "
                   "CPUs with AVX2 but no VNNI clip their products to 16 bits and compute "
                   "something else (re-export with this mpfl-export)")
    if numeric_failures and run.get("saturating_u8s8"):
        cause = ("the clipping above is the likely cause" if risky else
                 "the file's weights cannot clip, so the cause is not this CPU's kernel")
        out.append(f"checked on {run.get('cpu')}, whose int8 MatMul adds products in "
                   f"saturating 16-bit pairs (no VNNI): {cause}")
    return out


def verify_export(
    result: ExportResult,
    reference: nn.Module,
    data: VerifyData,
    mask_sparsity: float,
    dense_path: Path | None = None,
    threads: int = 1,
    latency_runs: int = 20,
) -> VerifyReport:
    """Check ``result`` against the masked torch ``reference`` on ``data``."""
    tol = TOLERANCES[result.precision]
    expected = torch_outputs(reference, data.x)
    outputs, run = run_isolated(result.path, data.x, dense_path, threads, latency_runs)
    failures: list[str] = []
    if outputs is None:
        failures.append(f"onnxruntime could not run the export: {run.get('error')}")
        comparison = Comparison(float("nan"), float("nan"), float("nan"), 0.0, len(data.x), 0,
                                None, None, ())
    else:
        comparison = compare_outputs(expected, outputs, data.y, tol)
        failures += comparison.failures
    weight_sparsity = weight_zero_fraction(reference)
    try:
        stored_model = onnx.load_from_string(read_model_bytes(result.path))
        stored = _stored_sparsity(stored_model, weight_count(reference))
        if result.precision == "int8":
            failures += int8_kernel_checks(stored_model, run, bool(comparison.failures))
    except (DecodeError, ValueError, DataError) as exc:
        failures.append(f"cannot read the exported file back: {exc}")
        stored = 0.0
    slack = SPARSITY_SLACK.get(result.format)
    if slack is not None and stored < weight_sparsity - slack:
        failures.append(f"the file stores {1 - stored:.1%} of the weights, but only "
                        f"{1 - weight_sparsity:.1%} are non-zero")
    if result.format != "dense" and result.model_bytes > result.dense_bytes * 1.01 + 1024:
        failures.append("the export is larger than the dense model")
    return VerifyReport(
        model=str(result.path), format=result.format, precision=result.precision,
        inputs=data.source, samples=len(data.x),
        max_abs_diff=comparison.max_abs_diff, output_scale=comparison.output_scale,
        rel_diff=comparison.rel_diff, top1_agreement=comparison.top1_agreement,
        top1_mismatches=comparison.top1_mismatches, near_ties=comparison.near_ties,
        accuracy_torch=comparison.accuracy_torch, accuracy_onnx=comparison.accuracy_onnx,
        mask_sparsity=mask_sparsity, weight_sparsity=weight_sparsity, stored_sparsity=stored,
        model_bytes=result.model_bytes, file_bytes=result.file_bytes,
        zstd_bytes=result.zstd_bytes, dense_bytes=result.dense_bytes,
        dense_zstd_bytes=result.dense_zstd_bytes,
        latency_b1_ms=run.get("latency_b1_ms"), latency_b64_ms=run.get("latency_b64_ms"),
        dense_latency_b1_ms=run.get("dense_latency_b1_ms"),
        dense_latency_b64_ms=run.get("dense_latency_b64_ms"),
        failures=tuple(failures), cpu=str(run.get("cpu", "")),
    )


def report_path(model_path: Path) -> Path:
    """``model.onnx[.zst]`` -> ``model.verify.json`` beside it."""
    name = model_path.name
    for suffix in (".zst", ".onnx"):
        name = name.removesuffix(suffix)
    return model_path.with_name(f"{name}.verify.json")


def export_and_verify(
    saved: SavedModel,
    out: Path,
    options: ExportOptions,
    data: VerifyData,
    dataset: str | None = None,
    threads: int = 1,
    latency_runs: int = 20,
    compare_dense: bool = True,
) -> tuple[ExportResult, VerifyReport]:
    """Export, verify in a spawned onnxruntime process, write the JSON report beside."""
    result, baseline = export_model(saved, out, options, dataset)
    reference, _ = reference_model(saved)
    mask_sparsity = 1.0 - float(saved.mask.mean()) if saved.mask.size else 0.0
    with tempfile.TemporaryDirectory(prefix="mpfl-dense-") as tmp:
        dense_path = None
        if compare_dense and latency_runs > 0:
            dense_path = Path(tmp) / "dense.onnx"
            dense_path.write_bytes(baseline.data)
        report = verify_export(result, reference, data, mask_sparsity, dense_path, threads,
                               latency_runs)
    report.write_json(report_path(result.path))
    return result, report


def require_pass(report: VerifyReport) -> None:
    if not report.passed:
        raise ExportError("verification failed: " + "; ".join(report.failures),
                          model=report.model)


__all__ = [
    "Comparison",
    "VerifyData",
    "compare_outputs",
    "export_and_verify",
    "int8_kernel_checks",
    "report_path",
    "require_pass",
    "run_isolated",
    "torch_outputs",
    "verification_data",
    "verify_export",
]
