"""Edge footprint: what a training node and a torch-free inference node need.

Run as `python benchmarks/bench_edge.py`; prints a markdown table and writes
benchmarks/results/edge.json. Needs MNIST and CIFAR-10 under MPFL_DATA_DIR.

Every figure comes from a fresh interpreter (this script re-run with ``--worker``), so
nothing one measurement loads inflates the next. The worker reports its own peak RSS
(VmHWM from /proc/self/status, the kernel's high-water mark) and timings as one JSON line
on stdout; ``/usr/bin/time -v`` measures the same peak from outside as a check.

- training: the core a node runs (``mpfl.ml.models.build_model``, ``mpfl.ml.train.train_local``
  with a ``MaskEnforcer`` at 50 % filter sparsity, SGD with momentum) on one 6,000-sample
  partition held in memory, as a node holds its own data: the parent writes the
  partition to an ``.npz`` and the worker loads only that. Seconds per epoch are timed
  after a short warm-up epoch.
- inference: LeNet-5 exported with ``torch.onnx.export`` (dense, and with the pruned
  filters physically removed), then run by a worker that imports only numpy and
  ``export.runner`` (onnxruntime) and asserts that torch was never imported.

- data path: what ``mpfl-edge start --dataset D --partition I/N`` peaks at while it
  reads the whole training set and keeps its share (``edge_node.agent.load_node_data``).

Each row lists the profiles whose memory budget holds its peak RSS.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The helper modules sit next to this file; put them on the path also when the script is
# loaded by file name (importlib) rather than run, which leaves sys.path[0] elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge_report import format_markdown, host_info  # noqa: E402
from edge_workers import WORKERS  # noqa: E402

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "edge.json"
COMMAND = "python benchmarks/bench_edge.py"
PARTITION_SIZE = 6000
SPARSITY = 0.5
BATCH_SIZE = 32
THREADS = (1, 4)
TRAIN_GOAL_MB = 350
RUNNER_GOAL_MB = 80
WORKER_TIMEOUT_S = 240
GNU_TIME = "/usr/bin/time"
# (model, dataset): the two training footprints the issue asks for.
TRAINING_CASES = (("lenet5", "mnist"), ("cnn-cifar", "cifar10"))


def run_worker(kind: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its last stdout line is the result.

    Under ``/usr/bin/time -v`` when it is installed, as an independent check of the peak
    RSS: GNU time forks a small process of its own, so its figure is not inflated by us.
    """
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if "threads" in job:  # also bounds BLAS/OpenMP pools that ignore set_num_threads
        env["OMP_NUM_THREADS"] = str(job["threads"])
    command = [sys.executable, __file__, "--worker", kind, json.dumps(job)]
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        if Path(GNU_TIME).is_file():
            command = [GNU_TIME, "-v", "-o", report.name, *command]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"{kind} worker failed ({done.returncode}):\n{done.stderr[-2000:]}")
        result = dict(json.loads(done.stdout.strip().splitlines()[-1]))
        for line in report.read().splitlines():
            if "Maximum resident set size" in line:
                result["gnu_time_max_rss_mb"] = int(line.rsplit(":", 1)[1]) / 1024
    return result


# ------------------------------------------------------------------------------ parent


def data_root() -> Path:
    root = os.environ.get("MPFL_DATA_DIR")
    if not root:
        raise SystemExit("set MPFL_DATA_DIR to the directory holding mnist/ and cifar-10/")
    return Path(root)


def write_partition(dataset: str, out: Path, size: int = PARTITION_SIZE, seed: int = 0) -> Path:
    """One node's share: ``size`` random training samples, normalised, as an .npz."""
    from mpfl.ml.data import load_dataset

    full = load_dataset(dataset, data_root(), "train")
    index = np.sort(np.random.default_rng(seed).permutation(len(full))[:size])
    path = out / f"{dataset}-{size}.npz"
    np.savez(path, x=full.x[index], y=full.y[index])
    return path


def fitting_profiles(peak_mb: float, *, training: bool) -> list[str]:
    """Profiles whose memory budget holds ``peak_mb`` (training: only boards that train)."""
    from hardware.catalog import load_profiles

    return [
        p.name
        for p in load_profiles().values()
        if peak_mb <= p.train_memory_budget_mb and (p.trains or not training)
    ]


def measure_training(work: Path) -> list[dict[str, Any]]:
    rows = []
    for model, dataset in TRAINING_CASES:
        data = write_partition(dataset, work)
        for threads in THREADS:
            job = {
                "model": model,
                "data": str(data),
                "threads": threads,
                "batch_size": BATCH_SIZE,
                "sparsity": SPARSITY,
            }
            result = run_worker("train", job)
            rows.append(
                {
                    "model": model,
                    "dataset": dataset,
                    "threads": threads,
                    "batch_size": BATCH_SIZE,
                    "filter_sparsity": SPARSITY,
                    **result,
                    "goal_mb": TRAIN_GOAL_MB,
                    "fits": fitting_profiles(result["peak_rss_mb"], training=True),
                }
            )
    return rows


def measure_loading() -> list[dict[str, Any]]:
    """Peak RSS of loading a share the way the edge agent does (whole set, then subset)."""
    if importlib.util.find_spec("edge_node.agent") is None:
        return []
    rows = []
    for dataset, share in (("mnist", "0/10"), ("cifar10", "0/3")):
        job = {"dataset": dataset, "data_dir": str(data_root()), "share": share}
        rows.append({**job, **run_worker("load", job)})
    return rows


def measure_inference(work: Path) -> list[dict[str, Any]]:
    exported = run_worker("export", {"out": str(work), "sparsity": SPARSITY})["files"]
    rows = []
    for variant, info in exported.items():
        result = run_worker("infer", {"model": info["path"], "threads": 1})
        rows.append(
            {
                "model": f"lenet5 ({variant})",
                "onnx_bytes": info["bytes"],
                "threads": 1,
                **result,
                "goal_mb": RUNNER_GOAL_MB,
                "fits": fitting_profiles(result["peak_rss_mb"], training=False),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("job", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.job))))
        return

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mpfl-bench-edge-") as tmp:
        work = Path(tmp)
        training = measure_training(work)
        loading = measure_loading()
        inference = measure_inference(work)
    results = {
        "command": COMMAND,
        "host": host_info(),
        "note": (
            f"this host has {os.cpu_count()} CPUs: the 4-thread runs oversubscribe it, so "
            "they show threading overhead, not a 4-core board's speed-up; RSS is x86-64 "
            "with the CPU torch wheel, an aarch64 board's figures differ somewhat"
        ),
        "training": training,
        "inference": inference,
        "edge_data_loading": loading,
        "seconds": time.perf_counter() - started,
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    print(format_markdown(results))
    print(f"\nNote: {results['note']}.")
    print(f"wrote {RESULTS_PATH} in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
