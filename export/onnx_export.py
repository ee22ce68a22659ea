"""From a checkpoint to an ONNX file: dense, pruned, sparse or packed, fp32 or int8.

The torch graph is traced with the TorchScript exporter (``dynamo=False`` needs only the
``onnx`` package) with a dynamic batch axis. Storage formats are rewrites of that graph
(``export.formats``); int8 (``export.quantize``) keeps pruned zeros exactly zero, so it
composes with every format. Names are shortened last
(``export.graph.compact``) for every output, the dense baseline included, so size
ratios measure the format and not the naming.
"""

from __future__ import annotations

import inspect
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import zstandard
from torch import nn

from export.formats import to_packed, to_sparse
from export.graph import compact, set_metadata
from export.options import ExportOptions
from export.prune import prune_filters
from export.quantize import quantize_int8
from mpfl.errors import ExportError
from mpfl.ml.checkpoint import SavedModel, atomic_write
from mpfl.ml.models import ZOO, ModelSpec, ZooModel, build_model, resolve_spec
from mpfl.ml.train import load_state
from mpfl.ml.units import UnitMap

ZSTD_LEVEL = 19
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class Artifact:
    """One serialized ONNX model held in memory."""

    format: str
    precision: str
    data: bytes
    note: str = ""  # what was written instead of what was asked, and why

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    precision: str
    model_bytes: int  # the ONNX model, uncompressed
    file_bytes: int  # what was written (compressed when asked)
    zstd_bytes: int
    dense_bytes: int  # the dense fp32 export of the same masked model
    dense_zstd_bytes: int
    candidates: tuple[tuple[str, int], ...] = ()  # what ``auto`` weighed, by size
    note: str = ""


def zstd(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


def input_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """(channels, height, width) a zoo model reads, from its arguments and defaults."""
    full = resolve_spec(spec)
    cls = ZOO.get(full.name)
    if cls is None:
        build_model(spec)  # raises the zoo's own error
        raise ExportError("unknown model", model=spec.name)
    params = inspect.signature(cls.__init__).parameters
    args = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    args.update(full.args)
    size = int(args["image_size"])
    return int(args["in_channels"]), size, size


def reference_model(saved: SavedModel) -> tuple[ZooModel, UnitMap]:
    """The masked model ``w * C`` in eval mode: what every export must reproduce."""
    model = build_model(saved.spec)
    unit_map = saved.unit_map()
    load_state(model, unit_map.apply(saved.state, saved.mask))
    return model.eval(), unit_map


def torch_to_onnx(model: nn.Module, shape: tuple[int, int, int], opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    example = torch.zeros((1, *shape), dtype=torch.float32)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation notes
            torch.onnx.export(
                model.eval(), (example,), buffer,  # type: ignore[arg-type]  # file-like is fine
                dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as exc:  # the exporter raises many types; all mean the same here
        raise ExportError(f"torch.onnx.export failed: {exc}", opset=opset) from exc
    return onnx.load_from_string(buffer.getvalue())


SPARSE_STORED_DENSE = (
    "sparse: no weight has enough zeros for a sparse initializer to pay (about 2/3 of a "
    "tensor: 8 bytes of index per value), so every weight was written dense; "
    "--format auto, pruned (filter masks) or packed store the mask smaller"
)


def _finish(
    model: onnx.ModelProto, fmt: str, precision: str, dataset: str | None, note: str = ""
) -> Artifact:
    model = compact(model)
    meta = {"format": fmt, "precision": precision}
    if dataset:
        meta["dataset"] = dataset
    set_metadata(model, meta)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported model fails the ONNX checker: {exc}", format=fmt) from exc
    return Artifact(fmt, precision, model.SerializeToString(), note)


def build_artifacts(
    saved: SavedModel, options: ExportOptions, dataset: str | None = None
) -> tuple[Artifact, Artifact, tuple[tuple[str, int], ...]]:
    """(the requested export, the dense fp32 baseline, sizes ``auto`` weighed)."""
    model, unit_map = reference_model(saved)
    shape = input_shape(saved.spec)
    dense = torch_to_onnx(model, shape, options.opset)
    precision = "int8" if options.int8 else "fp32"
    baseline = _finish(dense, "dense", "fp32", dataset)

    quantized: list[onnx.ModelProto] = []  # the int8 dense graph, made at most once

    def make(fmt: str) -> Artifact:
        if fmt == "pruned":
            smaller = prune_filters(model, unit_map, saved.mask)
            base = torch_to_onnx(smaller, shape, options.opset)
            base = quantize_int8(base) if options.int8 else base
        elif options.int8:
            if not quantized:
                quantized.append(quantize_int8(dense))
            base = quantized[0]
        else:
            base = dense
        note = ""
        if fmt == "sparse":
            base = to_sparse(base)
            note = "" if base.graph.sparse_initializer else SPARSE_STORED_DENSE
        elif fmt == "packed":
            base = to_packed(base)
        return _finish(base, fmt, precision, dataset, note)

    if options.format != "auto":
        return make(options.format), baseline, ()
    if unit_map.granularity == "filter":
        return make("pruned"), baseline, ()
    made = [make(fmt) for fmt in ("packed", "sparse", "dense")]
    best = min(made, key=lambda a: a.size)
    return best, baseline, tuple((a.format, a.size) for a in made)


def output_path(out: Path, compress: str) -> Path:
    """Where the model lands: ``--compress zstd`` adds ``.zst`` to the name."""
    if compress == "zstd" and out.suffix != ".zst":
        return out.with_name(out.name + ".zst")
    return out


def export_model(
    saved: SavedModel, out: Path, options: ExportOptions, dataset: str | None = None
) -> tuple[ExportResult, Artifact]:
    """Write the export to ``out`` (atomically); return its figures and the dense baseline."""
    artifact, baseline, candidates = build_artifacts(saved, options, dataset)
    path = output_path(out, options.compress)
    packed = zstd(artifact.data)
    payload = packed if options.compress == "zstd" else artifact.data
    atomic_write(path, lambda f: f.write(payload))
    result = ExportResult(
        path=path, format=artifact.format, precision=artifact.precision,
        model_bytes=artifact.size, file_bytes=len(payload), zstd_bytes=len(packed),
        dense_bytes=baseline.size, dense_zstd_bytes=len(zstd(baseline.data)),
        candidates=candidates, note=artifact.note,
    )
    return result, baseline


def weight_zero_fraction(model: nn.Module) -> float:
    """Fraction of Conv/Linear weight values that are exactly zero in ``model``."""
    total = zeros = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            w = module.weight.detach().numpy()
            total += w.size
            zeros += int(np.count_nonzero(w == 0))
    return zeros / total if total else 0.0


def weight_count(model: nn.Module) -> int:
    return sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    )
