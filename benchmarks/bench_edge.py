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
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "edge.json"
COMMAND = "python benchmarks/bench_edge.py"
PARTITION_SIZE = 6000
SPARSITY = 0.5
BATCH_SIZE = 32
THREADS = (1, 4)
LATENCY_BATCHES = (1, 64)
LATENCY_RUNS = 200
TRAIN_GOAL_MB = 350
RUNNER_GOAL_MB = 80
WORKER_TIMEOUT_S = 240
GNU_TIME = "/usr/bin/time"
# (model, dataset): the two training footprints the issue asks for.
TRAINING_CASES = (("lenet5", "mnist"), ("cnn-cifar", "cifar10"))


def peak_rss_mb() -> float:
    """This process image's peak resident set size so far, in MiB (VmHWM).

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries that high-water mark over
    ``execve`` from the forked parent, so a worker started by a big parent would report
    the parent's peak. VmHWM belongs to the address space the worker itself built.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise SystemExit("no VmHWM in /proc/self/status (the benchmark needs Linux)")


# ------------------------------------------------------------------------------ workers


def _filter_mask(model: Any, spec: Any, sparsity: float) -> tuple[Any, np.ndarray]:
    """The unit map and a mask pruning ``sparsity`` of each layer's filters by L2 norm."""
    from mpfl.ml.masks import local_mask, unit_scores
    from mpfl.ml.units import build_unit_map, model_state

    unit_map = build_unit_map(model, spec, "filter")
    scores = unit_scores(model_state(model), unit_map)
    mask = local_mask(scores, unit_map.full_mask(), unit_map.slices, sparsity)
    return unit_map, mask


def train_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One node's local training: peak RSS and seconds per epoch."""
    import torch

    rss_torch = peak_rss_mb()
    from mpfl.ml.data import load_npz
    from mpfl.ml.models import ModelSpec, build_model, parameter_count
    from mpfl.ml.train import MaskEnforcer, train_local
    from mpfl.wire.specs import DEFAULT_TRAIN

    torch.set_num_threads(job["threads"])
    data = load_npz(Path(job["data"]))
    spec = ModelSpec(job["model"])
    model = build_model(spec, seed=0)
    unit_map, mask = _filter_mask(model, spec, job["sparsity"])
    enforcer = MaskEnforcer(model, unit_map, mask)
    cfg = DEFAULT_TRAIN.replace(epochs=1, batch_size=job["batch_size"], lr=0.01, momentum=0.9)
    train_local(model, data.subset(np.arange(min(512, len(data)))), cfg, enforcer, seed=1)
    result = train_local(model, data, cfg, enforcer, seed=2)
    return {
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_import_torch_mb": rss_torch,
        "seconds_per_epoch": result.seconds,
        "samples": result.samples,
        "params": parameter_count(model),
        "alive_filter_fraction": float(mask.mean()),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def export_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Write LeNet-5 as ONNX: dense, and with the pruned filters removed."""
    import torch

    from mpfl.ml.models import ModelSpec, build_model

    spec = ModelSpec("lenet5")
    model = build_model(spec, seed=0).eval()
    unit_map, mask = _filter_mask(model, spec, job["sparsity"])
    from mpfl.ml.train import MaskEnforcer

    MaskEnforcer(model, unit_map, mask)  # zero the pruned filters in place
    variants: dict[str, torch.nn.Module] = {"dense": model}
    try:
        from export.prune import prune_filters
    except ImportError:  # the export package is optional here
        pass
    else:
        variants["pruned"] = prune_filters(model, unit_map, mask)
    example = torch.zeros(1, 1, 28, 28)
    files = {}
    for name, module in variants.items():
        path = Path(job["out"]) / f"lenet5-{name}.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module.eval(),
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        files[name] = {"path": str(path), "bytes": path.stat().st_size}
    return {"files": files}


def _median_ms(fn: Any, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def infer_worker(job: dict[str, Any]) -> dict[str, Any]:
    """The torch-free runner: peak RSS and median latency per batch size."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((max(LATENCY_BATCHES), 1, 28, 28))
    x = x.astype(np.float32)
    latency: dict[str, float] = {}
    if importlib.util.find_spec("export.runner") is not None:
        from export.runner import Runner

        runner_name = "export.runner.Runner"
        runner = Runner(job["model"], threads=job["threads"])
        for batch in LATENCY_BATCHES:
            latency[str(batch)] = runner.latency_ms(x, batch, LATENCY_RUNS)
    else:  # the export package is not there: the bare onnxruntime session it would wrap
        runner_name = "onnxruntime.InferenceSession"
        options = ort.SessionOptions()
        options.intra_op_num_threads = job["threads"]
        session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for batch in LATENCY_BATCHES:
            feed = {name: x[:batch]}
            latency[str(batch)] = _median_ms(lambda f=feed: session.run(None, f), LATENCY_RUNS)
    if "torch" in sys.modules:
        raise SystemExit("the torch-free runner imported torch")
    return {
        "peak_rss_mb": peak_rss_mb(),
        "latency_ms": latency,
        "runner": runner_name,
        "onnxruntime_version": ort.__version__,
        "torch_imported": False,
    }


def load_worker(job: dict[str, Any]) -> dict[str, Any]:
    """The data path of `mpfl-edge start --dataset D --partition 0/N`: full set, then share."""
    import torch  # noqa: F401  (a node has it loaded before it reads data)

    from edge_node.agent import load_node_data

    start = time.perf_counter()
    data, _ = load_node_data(job["dataset"], job["data_dir"], job["share"])
    return {
        "peak_rss_mb": peak_rss_mb(),
        "samples": len(data),
        "partition_mb": data.x.nbytes / 2**20,
        "seconds": time.perf_counter() - start,
    }


WORKERS = {
    "train": train_worker,
    "export": export_worker,
    "infer": infer_worker,
    "load": load_worker,
}


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
