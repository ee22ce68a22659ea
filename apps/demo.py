"""The demo: a small MPFL federation on data that ships with a dependency.

Weight masks at 80% sparsity on scikit-learn's 8x8 digits, four nodes with a
Dirichlet(0.5) label skew, joint mask rounds on the cubic schedule with small layers kept
denser, deflated int4 deltas with error feedback (the config's defaults).
Prints per round the consensus sparsity, the global accuracy and the exact bytes sent,
against what dense FedAvg would have sent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coordinator.live import LiveView
from mpfl.choices import ServerOptimizerName
from mpfl.config.settings import FederationConfig
from mpfl.errors import ExportError
from mpfl.federation.evaluation import dataset_evaluator
from mpfl.federation.metrics import RoundLog
from mpfl.federation.server import FederationServer
from mpfl.federation.simulation import run_in_process
from mpfl.maths.partition import label_histogram, partition
from mpfl.ml.data import load_dataset

log = logging.getLogger(__name__)

DEMO_CONFIG = FederationConfig(
    federation="demo",
    model="mlp",
    model_args={"image_size": 8, "hidden": [64, 32]},
    granularity="weight",
    final_sparsity=0.8,
    mask_rounds=3,
    train_rounds=8,
    local_epochs=2,
    min_nodes=4,
    quorum=3,
)


def format_round(log: RoundLog) -> str:
    acc = f"{log.accuracy:8.2%}" if log.accuracy is not None else f"{'-':>8}"
    ratio = log.dense_uplink_bytes / max(log.uplink_bytes, 1)
    return (f"{log.round:>5} {log.phase:>6} {log.target_sparsity:>7.1%} {log.sparsity:>9.1%} "
            f"{acc} {log.uplink_bytes:>10,} {log.dense_uplink_bytes:>11,} {ratio:>6.1f}x")


HEADER = (f"{'round':>5} {'phase':>6} {'target':>7} {'sparsity':>9} {'accuracy':>8} "
          f"{'uplink B':>10} {'dense B':>11} {'saved':>7}")


def totals_line(logs: Sequence[RoundLog]) -> str:
    up = sum(log.uplink_bytes for log in logs)
    dense = sum(log.dense_uplink_bytes for log in logs)
    return f"total uplink {up:,} B vs dense FedAvg {dense:,} B ({dense / max(up, 1):.1f}x less)"


def partition_lines(labels: np.ndarray, parts: Sequence[np.ndarray], classes: int) -> list[str]:
    """One line per node: its sample count and label histogram."""
    return [f"  node-{i}: {len(part):>6} samples, labels {' '.join(map(str, row))}"
            for i, (part, row) in enumerate(zip(parts, label_histogram(labels, parts, classes),
                                                strict=True))]


def run_demo(
    nodes: int = 4, mask_rounds: int = 3, train_rounds: int = 8, live: bool = False,
) -> FederationServer:
    """In this process over the in-memory broker; ``live``: draw the live view."""
    cfg = FederationConfig(**{**DEMO_CONFIG.to_dict(), "mask_rounds": mask_rounds,
                              "train_rounds": train_rounds, "min_nodes": nodes,
                              "quorum": max(1, nodes - 1)}).validate()
    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    parts = partition(train.y, nodes, "dirichlet:0.5", seed=cfg.seed)
    log.info(f"MPFL demo: {nodes} nodes, {cfg.model} on 8x8 digits, {cfg.granularity} "
             f"masks to {cfg.final_sparsity:.0%}, {cfg.value_codec} "
             + ("deltas" if cfg.delta else "values")
             + (" with error feedback" if cfg.error_feedback else "")
             + ("" if cfg.server_optimizer == ServerOptimizerName.NONE
                else f", server {cfg.server_optimizer}"))
    for line in partition_lines(train.y, parts, train.num_classes):
        log.info(line)
    log.info(HEADER)
    with LiveView() if live else contextlib.nullcontext() as view:
        server = run_in_process(cfg, [train.subset(p) for p in parts],
                                dataset_evaluator(cfg.model_spec, test),
                                on_round=lambda record: log.info(format_round(record)),
                                signed=True, on_view=view.show if view is not None else None)
    log.info(totals_line(server.log))
    return server


def export_demo_model(run_dir: Path) -> Path:
    """The run's final model as ONNX, verified on the digits test split: what
    ``mpfl-export RUN_DIR --out RUN_DIR/model.onnx`` does, called in this process (the
    verification still runs onnxruntime in a process of its own)."""
    from export import ExportOptions, export_and_verify, verification_data
    from mpfl.ml.checkpoint import load_model

    out = run_dir / "model.onnx"
    log.info(f"mpfl-export {run_dir} --out {out}")
    saved = load_model(run_dir)
    data = verification_data(saved.spec, "digits", None)
    result, report = export_and_verify(saved, out, ExportOptions(), data, dataset="digits")
    log.info(report.table())
    if result.candidates:
        weighed = ", ".join(f"{f} {n / 1024:.1f} KiB" for f, n in result.candidates)
        log.info(f"auto chose {result.format} from: {weighed}")
    log.info(f"wrote {result.path}")
    if not report.passed:
        raise ExportError("the export of the demo's model failed verification",
                          failures=len(report.failures))
    log.info(f"on a device, with onnxruntime alone: mpfl-infer {out} --dataset digits")
    return result.path
