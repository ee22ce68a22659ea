"""A run directory read back into typed values, for ``mpfl report``; nothing in it is changed.

What the coordinator wrote (``config.json``, ``metrics.jsonl``, ``summary.json``, the final
model or the last checkpoint) is read strictly: a file that does not parse is a DataError
naming it. ``node_metrics.jsonl`` holds what the nodes said about themselves, so a line
that is not a node report is left out and counted rather than stopping the report: a
report is how an operator finds out that something went wrong. Exports are found by the
``*.verify.json`` report ``mpfl-export`` writes beside each model it verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

import msgspec
import numpy as np

from mpfl.config.settings import FederationConfig, load_config
from mpfl.errors import ConfigError, DataError, MpflError
from mpfl.federation.metrics import RoundLog, read_metrics

T = TypeVar("T")
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class NodeReport(msgspec.Struct, frozen=True):
    """One line of ``node_metrics.jsonl``: a node's own account of one round. Keys this
    report does not use (memory, timings) may come and go; those it uses are checked."""

    node: str
    round: Annotated[int, msgspec.Meta(ge=1)]
    samples: NonNegative
    upload_bytes: NonNegative
    accuracy: Fraction | None = None


class KnownNode(msgspec.Struct, frozen=True):
    """A node the coordinator heard say hello, as its last checkpoint describes it."""

    samples: NonNegative
    hardware: str = "unknown"
    online: bool = True


class CheckpointDescription(msgspec.Struct, frozen=True):
    """The part of ``checkpoint/state.json`` the report reads."""

    arrays: str
    nodes: dict[str, KnownNode] = {}


class RunSummary(msgspec.Struct, frozen=True):
    """The part of ``summary.json`` the report shows."""

    phase: str
    rounds_closed: NonNegative
    rounds_total: NonNegative
    error: str | None = None
    dropped: dict[str, NonNegative] = {}


class ExportSummary(msgspec.Struct, frozen=True):
    """The part of an export's ``*.verify.json`` the report shows."""

    model: str
    format: str
    precision: str
    file_bytes: NonNegative
    dense_bytes: NonNegative
    accuracy_onnx: Fraction | None = None
    accuracy_torch: Fraction | None = None
    passed: bool = False


@dataclass(frozen=True)
class LayerSparsity:
    """How much of one prunable tensor the final mask removes."""

    tensor: str
    units: int
    pruned: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.units if self.units else 0.0


@dataclass(frozen=True)
class RunRecord:
    """Everything ``mpfl report`` draws from one run directory."""

    path: Path
    config: FederationConfig
    rounds: tuple[RoundLog, ...]
    parameters: int  # every float tensor of the model: what one dense fp32 upload carries
    layers: tuple[LayerSparsity, ...]  # empty when no round left a mask on disk
    mask_source: str  # which file the layer sparsity comes from
    known_nodes: dict[str, KnownNode]  # every node that said hello, answering or not
    node_reports: tuple[NodeReport, ...]
    skipped_node_lines: tuple[str, ...]  # "line 7: why", for lines that are no report
    summary: RunSummary | None
    exports: tuple[ExportSummary, ...]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_dense(self) -> bool:
        return self.config.mask_rounds == 0 or self.config.final_sparsity == 0.0


def read_run(path: str | Path) -> RunRecord:
    """The run directory at ``path``; a DataError (or ModelError) naming the file otherwise."""
    root = Path(path)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise DataError(f"run directory {what}", path=str(root))
    if not (root / "config.json").is_file():
        raise DataError("not a run directory: no config.json; `mpfl simulate` and "
                        "`mpfl-coordinator run --run-dir` write one", path=str(root))
    config = _read_config(root / "config.json")
    # metrics.jsonl appears when the first round closes
    metrics = root / "metrics.jsonl"
    rounds = tuple(read_metrics(metrics)) if metrics.exists() else ()
    checkpoint = _read_checkpoint(root / "checkpoint")
    parameters, layers, mask_source = _mask_layers(root, config, checkpoint)
    reports, skipped = _read_node_reports(root / "node_metrics.jsonl")
    summary_path = root / "summary.json"
    summary = _read_struct(summary_path, RunSummary) if summary_path.is_file() else None
    exports = tuple(_read_struct(p, ExportSummary) for p in sorted(root.glob("*.verify.json")))
    known = dict(checkpoint.nodes) if checkpoint is not None else {}
    return RunRecord(root, config, rounds, parameters, layers, mask_source, known, reports,
                     skipped, summary, exports)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc


def _read_struct(path: Path, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(_read_bytes(path), type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DataError(f"unexpected content: {exc}", path=str(path)) from None


def _read_config(path: Path) -> FederationConfig:
    """The run's config, checked key by key as a config file would be."""
    try:
        doc = json.loads(_read_bytes(path))
    except ValueError as exc:
        raise DataError(f"not JSON: {exc}", path=str(path)) from None
    if not isinstance(doc, dict):
        raise DataError("not a JSON object", path=str(path))
    try:
        return load_config(None, doc, environ={})
    except ConfigError as exc:
        raise DataError(exc.message, path=str(path)) from None


def _read_node_reports(path: Path) -> tuple[tuple[NodeReport, ...], tuple[str, ...]]:
    if not path.is_file():
        return (), ()
    reports: list[NodeReport] = []
    skipped: list[str] = []
    decoder = msgspec.json.Decoder(NodeReport)
    for number, line in enumerate(_read_bytes(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            reports.append(decoder.decode(line))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            skipped.append(f"line {number}: {exc}")
    return tuple(reports), tuple(skipped)


def _read_checkpoint(directory: Path) -> CheckpointDescription | None:
    state = directory / "state.json"
    if not state.is_file():
        return None
    described = _read_struct(state, CheckpointDescription)
    if "/" in described.arrays or described.arrays.startswith("."):
        raise DataError("checkpoint points outside its directory", path=str(state))
    return described


def _mask_layers(
    root: Path, config: FederationConfig, checkpoint: CheckpointDescription | None
) -> tuple[int, tuple[LayerSparsity, ...], str]:
    """(parameter count, per-layer sparsity, its source): the final model's mask, else the
    last checkpoint's consensus mask (a run that stopped early), else none."""
    # torch builds the model's unit map; it loads here, after the cheap checks passed.
    from mpfl.ml.checkpoint import load_model
    from mpfl.ml.models import build_model
    from mpfl.ml.units import UnitMap, build_unit_map

    try:
        unit_map: UnitMap = build_unit_map(build_model(config.model_spec), config.model_spec,
                                           config.granularity)
    except MpflError as exc:
        raise DataError(f"config.json names a model that cannot be built: {exc}",
                        path=str(root / "config.json")) from None
    mask: np.ndarray | None
    source: str
    if (root / "final" / "model.json").is_file():
        saved = load_model(root / "final")
        if saved.spec != config.model_spec or saved.granularity != config.granularity:
            raise DataError("final/ holds another model than config.json names",
                            path=str(root / "final"))
        mask, source = saved.mask, "final/model.npz"
    elif checkpoint is not None:
        mask, source = _checkpoint_mask(root / "checkpoint", checkpoint.arrays)
    else:
        mask, source = None, ""
    if mask is None:
        return unit_map.n_values, (), "none (no round closed)"
    if mask.shape != (unit_map.n_units,):
        raise DataError(f"the mask has {mask.size} units, the model {unit_map.n_units}",
                        path=str(root / source))
    layers = tuple(
        LayerSparsity(layer.tensor, layer.count, int(layer.count - mask[layer.units].sum()))
        for layer in unit_map.layers
    )
    return unit_map.n_values, layers, source


def _checkpoint_mask(directory: Path, arrays_name: str) -> tuple[np.ndarray, str]:
    from mpfl.ml.checkpoint import read_npz

    arrays = read_npz(directory / arrays_name)
    if "mask" not in arrays:
        raise DataError("checkpoint has no mask", path=str(directory / arrays_name))
    return np.asarray(arrays["mask"]).astype(bool), f"checkpoint/{arrays_name}"
