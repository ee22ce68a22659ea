"""The markdown tables bench_edge.py prints, and the host line above them."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def host_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def _fits(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def _mb(row: dict[str, Any]) -> str:
    value = row.get("gnu_time_max_rss_mb")
    return "-" if value is None else f"{value:.0f}"


def format_markdown(results: dict[str, Any]) -> str:
    host = results["host"]
    lines = [
        f"Measured with `{results['command']}` on {host['cpu']} ({host['machine']}, "
        f"{host['cpus']} CPUs), torch {results['training'][0]['torch_version']}, "
        f"onnxruntime {results['inference'][0]['onnxruntime_version']}.",
        "",
        "| process | threads | peak RSS (MB) | time -v (MB) | s / epoch | goal "
        "| fits (budget >= peak) |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in results["training"]:
        ok = "yes" if r["peak_rss_mb"] <= r["goal_mb"] else "no"
        lines.append(
            f"| train {r['model']} on {r['samples']:,} {r['dataset']} samples "
            f"(batch {r['batch_size']}, {r['filter_sparsity']:.0%} filters pruned) "
            f"| {r['threads']} | {r['peak_rss_mb']:.0f} | {_mb(r)} | {r['seconds_per_epoch']:.2f} "
            f"| <= {r['goal_mb']} MB: {ok} | {_fits(r['fits'])} |"
        )
    lines += [
        "",
        "| process | ONNX size | peak RSS (MB) | time -v (MB) | latency batch 1 (ms) "
        "| latency batch 64 (ms) | torch imported | goal | fits (budget >= peak) |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results["inference"]:
        ok = "yes" if r["peak_rss_mb"] <= r["goal_mb"] else "no"
        lat = r["latency_ms"]
        lines.append(
            f"| runner, {r['model']}, 1 thread | {r['onnx_bytes'] / 1000:.0f} kB "
            f"| {r['peak_rss_mb']:.0f} | {_mb(r)} | {lat['1']:.3f} | {lat['64']:.3f} "
            f"| {'yes' if r['torch_imported'] else 'no'} | <= {r['goal_mb']} MB: {ok} "
            f"| {_fits(r['fits'])} |"
        )
    if results["edge_data_loading"]:
        lines += [
            "",
            "| `mpfl-edge start` data path (import torch, load, take the share) | samples "
            "| share (MB) | peak RSS (MB) |",
            "|---|---:|---:|---:|",
        ]
        for r in results["edge_data_loading"]:
            lines.append(
                f"| --dataset {r['dataset']} --partition {r['share']} | {r['samples']:,} "
                f"| {r['partition_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
            )
    return "\n".join(lines)
