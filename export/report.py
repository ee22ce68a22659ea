"""The verification report: every figure and every failed check of one export.

Tolerances live in two tables, by precision (how close the numbers must be) and by
format (how much of the mask's sparsity the file must really drop), never in branches.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from export.runner import BATCH_SIZE, INT8_BATCH_NOTE


@dataclass(frozen=True)
class Tolerance:
    """How close an export's outputs must stay to the torch model's."""

    max_rel_diff: float  # max |onnx - torch| over max |torch|
    tie_margin: float  # a top-1 flip where torch's top-2 gap is under this (x scale) is a tie
    min_top1_agreement: float  # share of inputs, ties aside, with torch's top-1
    max_accuracy_drop: float


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel_diff=1e-5, tie_margin=2e-5, min_top1_agreement=1.0,
                      max_accuracy_drop=0.001),
    # Dynamic int8 rounds weights to 1/64 of a column's range and activations per batch.
    # What a user sees is judged (top-1 and test accuracy); the output difference only
    # has to stay clear of gross errors. Every CPU class computes the same integers
    # (export.saturation), so these hold on each: measured worst 0.016 of the output
    # scale, 97.3% agreement on random inputs, -0.2 pt on real test sets.
    "int8": Tolerance(max_rel_diff=0.1, tie_margin=0.02, min_top1_agreement=0.95,
                      max_accuracy_drop=0.01),
}

# The share of the mask's zeros a format may still store. ``None``: not checked (dense
# stores everything; sparse initializers only pay above ~67% sparsity per tensor).
# Packed leaves a tensor dense when fewer than 1/32 of it is zero.
SPARSITY_SLACK: dict[str, float | None] = {
    "dense": None,
    "sparse": None,
    "packed": 1 / 32 + 1e-3,
    "pruned": 0.01,
}


@dataclass(frozen=True)
class VerifyReport:
    model: str
    format: str
    precision: str
    inputs: str  # where the comparison batch came from
    samples: int
    max_abs_diff: float
    output_scale: float
    rel_diff: float
    top1_agreement: float
    top1_mismatches: int
    near_ties: int  # mismatches where torch's own top-2 margin is within tolerance
    accuracy_torch: float | None
    accuracy_onnx: float | None
    mask_sparsity: float  # pruned share of the mask's units
    weight_sparsity: float  # zero share of the masked model's Conv/Linear weights
    stored_sparsity: float  # share of those weights the file does not store
    model_bytes: int
    file_bytes: int
    zstd_bytes: int
    dense_bytes: int
    dense_zstd_bytes: int
    latency_b1_ms: float | None
    latency_b64_ms: float | None
    dense_latency_b1_ms: float | None
    dense_latency_b64_ms: float | None
    failures: tuple[str, ...] = field(default_factory=tuple)
    cpu: str = ""  # the CPU that ran the check (export.cpu), int8 kernels differ by class

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def accuracy_delta(self) -> float | None:
        if self.accuracy_onnx is None or self.accuracy_torch is None:
            return None
        return self.accuracy_onnx - self.accuracy_torch

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["failures"] = list(self.failures)
        doc["passed"] = self.passed
        doc["size_ratio"] = _ratio(self.model_bytes, self.dense_bytes)
        doc["zstd_ratio"] = _ratio(self.zstd_bytes, self.dense_bytes)
        return {k: _finite(v) for k, v in doc.items()}

    def write_json(self, path: Path) -> None:
        from mpfl.ml.checkpoint import write_json

        write_json(path, self.to_dict())

    def table(self) -> str:
        """A plain-text table, one figure per line, then the verdict."""
        rows = [
            ("model", f"{self.model} ({self.format}, {self.precision})"),
            ("inputs", f"{self.inputs}, {self.samples} samples"),
            ("run on", self.cpu or "unknown CPU"),
            ("max abs diff", f"{self.max_abs_diff:.3g} ({self.rel_diff:.3g} of output scale "
                             f"{self.output_scale:.3g})"),
            ("top-1 agreement", f"{self.top1_agreement:.2%} ({self.top1_mismatches} differ, "
                                f"{self.near_ties} near-ties)"),
            ("accuracy torch / onnx", f"{_pct(self.accuracy_torch)} / {_pct(self.accuracy_onnx)}"
                                      + (f" ({INT8_BATCH_NOTE.format(batch=BATCH_SIZE)})"
                                         if self.precision == "int8" else "")),
            ("sparsity mask / weights / stored",
             f"{self.mask_sparsity:.1%} / {self.weight_sparsity:.1%} / {self.stored_sparsity:.1%}"),
            ("size raw", f"{_kb(self.model_bytes)} vs dense {_kb(self.dense_bytes)} "
                         f"({_x(self.model_bytes, self.dense_bytes)})"),
            ("size zstd", f"{_kb(self.zstd_bytes)} vs dense {_kb(self.dense_zstd_bytes)} "
                          f"({_x(self.zstd_bytes, self.dense_zstd_bytes)}; "
                          f"{_x(self.zstd_bytes, self.dense_bytes)} of dense raw)"),
            ("file written", _kb(self.file_bytes)),
            ("latency batch 1 (best)", _latency(self.latency_b1_ms, self.dense_latency_b1_ms)),
            ("latency batch 64 (best)", _latency(self.latency_b64_ms,
                                                 self.dense_latency_b64_ms)),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{'verification'.ljust(width)}  {verdict}")
        lines += [f"  - {failure}" for failure in self.failures]
        return "\n".join(lines)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf
    return value


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _x(a: int, b: int) -> str:
    return f"{a / b:.3f}x" if b else "n/a"


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def _latency(ms: float | None, dense: float | None) -> str:
    if ms is None:
        return "not measured"
    if dense is None:
        return f"{ms:.3f} ms"
    speedup = f"speed-up {dense / ms:.2f}x" if ms > 0 else "speed-up n/a"
    return f"{ms:.3f} ms vs dense {dense:.3f} ms ({speedup})"


def load_report(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc
