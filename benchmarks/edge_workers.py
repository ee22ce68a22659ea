"""The child side of bench_edge.py: each function runs in a fresh interpreter and measures
one thing (training, ONNX export, torch-free inference, the edge agent's data path).

Module-level imports stay at numpy and the standard library: whatever is imported here is
loaded into every worker and would count in the peak RSS it reports, and the inference
worker must be able to show that torch was never imported.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

LATENCY_BATCHES = (1, 64)
LATENCY_RUNS = 200


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
