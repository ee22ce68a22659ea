"""Export benchmark: file size, runner memory, latency and accuracy of every format.

Run as `MPFL_DATA_DIR=/path/to/datasets python benchmarks/bench_export.py` (or pass
--data-dir). For LeNet-5 on MNIST and cnn-cifar on CIFAR-10: train the dense model
briefly, then for 50/90/95% weight sparsity and 25/50/75% filter sparsity prune by
magnitude (per layer), fine-tune one short masked epoch, and export every format with and
without int8. Each export is verified exactly as `mpfl-export` does it (onnxruntime in a
spawned process, one thread), which gives the test accuracy and the latencies (best of
100 runs at batch 1, of 20 at batch 64), timed in alternation with the dense fp32 export
of the same mask so that load from other processes hits both alike. The runner's peak
RSS is that of an `mpfl-infer` process classifying 64 images at batch 1 and at batch 64
(os.wait4 of that child, started from a small launcher). Sizes are raw and zstd-19,
against the dense fp32 export.

The int8 exports of the rows BENCHMARKS.md shows (90% weights, 50% filters) also run in
the torch-free runner on emulated CPUs (`--emulate`, after `make emulators`): an x86 with
AVX2 but no VNNI (qemu -cpu Haswell) and a Raspberry Pi 4's Cortex-A72, whose int8 kernels
differ from this machine's; on the first EMULATED_SAMPLES test images, as emulation is
slow (accuracy only: emulated timings mean nothing).

Writes benchmarks/results/export.json and export.md and prints the markdown table.
`--quick` runs a tiny version as a smoke test; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # emulation: qemu-user runs of the runner

import emulation as emulate  # noqa: E402

from export.cpu import cpu_info  # noqa: E402
from export.onnx_export import export_model, reference_model  # noqa: E402
from export.options import ExportOptions  # noqa: E402
from export.verify import VerifyData, verify_export  # noqa: E402
from mpfl.ml.checkpoint import SavedModel  # noqa: E402
from mpfl.ml.data import Dataset, load_dataset  # noqa: E402
from mpfl.ml.masks import local_mask, unit_scores  # noqa: E402
from mpfl.ml.models import ModelSpec, build_model  # noqa: E402
from mpfl.ml.train import MaskEnforcer, evaluate, train_local  # noqa: E402
from mpfl.ml.units import build_unit_map, model_state  # noqa: E402
from mpfl.wire.specs import DEFAULT_TRAIN  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
KB = 1024
MB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    dataset: str
    train_samples: int
    finetune_samples: int
    test_samples: int


@dataclasses.dataclass(frozen=True)
class Profile:
    cases: tuple[Case, ...]
    weight_sparsities: tuple[float, ...]
    filter_sparsities: tuple[float, ...]
    latency_runs: int


FULL = Profile(
    cases=(Case("lenet5", "mnist", 20_000, 5_000, 2_000),
           Case("cnn-cifar", "cifar10", 10_000, 4_000, 2_000)),
    weight_sparsities=(0.5, 0.9, 0.95),
    filter_sparsities=(0.25, 0.5, 0.75),
    latency_runs=20,
)
QUICK = Profile(
    cases=(Case("lenet5", "mnist", 500, 200, 200), Case("cnn-cifar", "cifar10", 300, 100, 100)),
    weight_sparsities=(0.9,),
    filter_sparsities=(0.5,),
    latency_runs=3,
)
TRAIN = DEFAULT_TRAIN.replace(epochs=1, batch_size=64, lr=0.05, momentum=0.9)
FINETUNE = DEFAULT_TRAIN.replace(epochs=1, batch_size=64, lr=0.01, momentum=0.9)
FORMATS = {"weight": ("dense", "sparse", "packed"), "filter": ("dense", "pruned", "packed")}
EMULATED_CONFIGS = (("weight", 0.9), ("filter", 0.5))
EMULATED_SAMPLES = {"lenet5": 500, "cnn-cifar": 100}  # cnn-cifar: ~0.7 s an image on Haswell
EMULATED_TARGETS = ("haswell", "cortex-a72")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def subset(data: Dataset, n: int, seed: int) -> Dataset:
    index = np.random.default_rng(seed).permutation(len(data))[: min(n, len(data))]
    return data.subset(np.sort(index))


def masked_model(
    dense: torch.nn.Module, spec: ModelSpec, granularity: str, sparsity: float, tune: Dataset
) -> SavedModel:
    """Magnitude pruning per layer to ``sparsity``, then one short masked fine-tune."""
    model = build_model(spec)
    model.load_state_dict(dense.state_dict())
    unit_map = build_unit_map(model, spec, granularity)
    state = model_state(model)
    mask = local_mask(unit_scores(state, unit_map), unit_map.full_mask(), unit_map.slices,
                      sparsity)
    train_local(model, tune, FINETUNE, MaskEnforcer(model, unit_map, mask), seed=1)
    return SavedModel(spec, granularity, unit_map.apply(model_state(model), mask), mask, {})


# Peak RSS must come from a process started by a small one: Linux carries the pre-exec
# high-water mark of the process that forks into ru_maxrss, so a child forked from this
# benchmark (hundreds of MiB of datasets and torch) would report this process's peak.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def peak_rss(command: Sequence[str]) -> float:
    """Peak RSS (MiB) of ``command``, measured by os.wait4 in a small launcher process."""
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *command], capture_output=True,
                          text=True, check=True)
    maxrss, code = done.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{command[2:4]} failed: {done.stderr[-500:]}")
    return int(maxrss) / 1024  # Linux reports KiB


def runner_peak_rss(model_path: Path, images: Path, batch: int) -> float:
    """Peak RSS (MiB) of an `mpfl-infer` process classifying ``images``, one thread."""
    return peak_rss([sys.executable, "-m", "export.infer_cli", str(model_path),
                     "--input", str(images), "--threads", "1", "--batch-size", str(batch),
                     "--json"])


def import_floor_rss() -> float:
    """Peak RSS (MiB) of a Python that only imports numpy and onnxruntime."""
    return peak_rss([sys.executable, "-c", "import numpy, onnxruntime"])


def emulated_accuracy(
    rows: list[dict[str, Any]], paths: list[Path], test: Dataset, n: int, work: Path,
    torch_top1: np.ndarray,
) -> None:
    """Test accuracy (first ``n`` images) and top-1 agreement with the masked torch model
    of each file on each emulated CPU, beside this CPU's on the same images."""
    data = work / "emulated-inputs.npz"
    np.savez(data, x=test.x[:n])
    y = test.y[:n]
    for name in EMULATED_TARGETS:
        target = emulate.target(name)
        outs = emulate.logits(target, data, paths, work, timeout=3600)
        for row, out in zip(rows, outs, strict=True):
            top1 = np.load(out).argmax(axis=1)
            row[f"emulated_{name}"] = {
                "samples": n, "accuracy": float((top1 == y).mean()),
                "accuracy_masked_torch": float((torch_top1[:n] == y).mean()),
                "top1_agreement": float((top1 == torch_top1[:n]).mean()),
            }
            say(f"    {name}: {row['format']} int8 acc {(top1 == y).mean():.2%} on {n}")


def run_case(
    case: Case, profile: Profile, data_dir: Path, work: Path, emulated: bool = False
) -> list[dict[str, Any]]:
    spec = ModelSpec(case.model)
    train = load_dataset(case.dataset, data_dir, "train")
    test = subset(load_dataset(case.dataset, data_dir, "test"), case.test_samples, seed=2)
    start = time.perf_counter()
    dense = build_model(spec, seed=0)
    train_local(dense, subset(train, case.train_samples, seed=0), TRAIN, seed=0)
    _, dense_acc = evaluate(dense, test)
    say(f"{case.model}: dense trained in {time.perf_counter() - start:.0f} s, "
        f"test accuracy {dense_acc:.2%}")
    tune = subset(train, case.finetune_samples, seed=1)
    images = work / f"{case.model}-images.npy"
    np.save(images, test.x[:64])
    data = VerifyData(test.x, test.y, f"{case.dataset} test subset")
    configs = [("weight", s) for s in profile.weight_sparsities]
    configs += [("filter", s) for s in profile.filter_sparsities]
    rows: list[dict[str, Any]] = []
    for granularity, sparsity in configs:
        saved = masked_model(dense, spec, granularity, sparsity, tune)
        reference, _ = reference_model(saved)
        mask_sparsity = 1.0 - float(saved.mask.mean())
        dense_path = work / f"{case.model}-{granularity}{sparsity}-baseline.onnx"
        int8_rows: list[dict[str, Any]] = []
        int8_paths: list[Path] = []
        for fmt in FORMATS[granularity]:
            for int8 in (False, True):
                options = ExportOptions(format=fmt, int8=int8)
                path = work / f"{case.model}-{granularity}{sparsity}-{fmt}-{int8}.onnx"
                result, baseline = export_model(saved, path, options, case.dataset)
                if not dense_path.exists():
                    dense_path.write_bytes(baseline.data)
                # Timed in alternation with the dense fp32 export of the same mask.
                report = verify_export(result, reference, data, mask_sparsity, dense_path,
                                       latency_runs=profile.latency_runs)
                rows.append({
                    "model": case.model, "dataset": case.dataset, "granularity": granularity,
                    "sparsity": sparsity, "format": fmt, "precision": result.precision,
                    "bytes": result.model_bytes, "zstd_bytes": result.zstd_bytes,
                    "dense_bytes": result.dense_bytes, "dense_zstd_bytes": result.dense_zstd_bytes,
                    "stored_sparsity": report.stored_sparsity,
                    "latency_b1_ms": report.latency_b1_ms, "latency_b64_ms": report.latency_b64_ms,
                    "dense_latency_b1_ms": report.dense_latency_b1_ms,
                    "dense_latency_b64_ms": report.dense_latency_b64_ms,
                    "runner_peak_rss_mib": runner_peak_rss(path, images, 64),
                    "runner_peak_rss_b1_mib": runner_peak_rss(path, images, 1),
                    "accuracy_onnx": report.accuracy_onnx, "accuracy_masked_torch":
                    report.accuracy_torch, "accuracy_dense": dense_acc,
                    "rel_diff": report.rel_diff, "top1_agreement": report.top1_agreement,
                    "verified": report.passed, "failures": list(report.failures),
                })
                say(f"  {granularity} {sparsity:.0%} {fmt:<6} {result.precision}: "
                    f"{result.model_bytes / KB:8.1f} KiB, b64 {report.latency_b64_ms or 0:.2f} ms, "
                    f"acc {report.accuracy_onnx or 0:.2%}, "
                    f"{'verified' if report.passed else 'FAILED ' + '; '.join(report.failures)}")
                if int8:
                    int8_rows.append(rows[-1])
                    int8_paths.append(result.path)
        if emulated and (granularity, sparsity) in EMULATED_CONFIGS:
            n = min(EMULATED_SAMPLES.get(case.model, 100), len(test))
            emulated_accuracy(int8_rows, int8_paths, test, n, work,
                              torch_top1(reference, test.x[:n]))
    _add_ratios(rows)
    return rows


@torch.no_grad()
def torch_top1(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return model.eval()(torch.from_numpy(x)).argmax(dim=1).numpy()


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Sizes against the dense fp32 export; speed against it timed in the same process."""
    for row in rows:
        row["size_ratio"] = row["bytes"] / row["dense_bytes"]
        row["zstd_ratio"] = row["zstd_bytes"] / row["dense_bytes"]
        row["speedup_b1"] = row["dense_latency_b1_ms"] / row["latency_b1_ms"]
        row["speedup_b64"] = row["dense_latency_b64_ms"] / row["latency_b64_ms"]
        row["accuracy_delta"] = row["accuracy_onnx"] - row["accuracy_dense"]


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = ["model", "mask", "format", "prec", "size KiB", "x dense", "zstd x dense",
              "b1 ms", "b1 speed-up", "b64 ms", "b64 speed-up", "RSS b1/b64 MiB", "acc",
              "Δacc vs dense", "verified"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["model"], f"{r['granularity']} {r['sparsity']:.0%}", r["format"], r["precision"],
            f"{r['bytes'] / KB:.1f}", f"{r['size_ratio']:.3f}", f"{r['zstd_ratio']:.3f}",
            f"{r['latency_b1_ms']:.3f}", f"{r['speedup_b1']:.2f}x",
            f"{r['latency_b64_ms']:.2f}", f"{r['speedup_b64']:.2f}x",
            f"{r['runner_peak_rss_b1_mib']:.0f}/{r['runner_peak_rss_mib']:.0f}",
            f"{r['accuracy_onnx']:.2%}",
            f"{r['accuracy_delta'] * 100:+.2f} pt", "yes" if r["verified"] else "NO",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def emulated_markdown(rows: Sequence[dict[str, Any]], cpus: dict[str, str]) -> str:
    """int8 accuracy on this CPU and on each emulated one, same images, same files."""
    done = [r for r in rows if any(f"emulated_{n}" in r for n in EMULATED_TARGETS)]
    if not done:
        return ""
    names = [n for n in EMULATED_TARGETS if n in cpus]
    lines = ["int8 exports on emulated CPUs (qemu-user; same files, first N test images): "
             + "; ".join(f"{n} = {cpus[n]}" for n in names) + ".", ""]
    header = ["model", "mask", "format", "N", "acc masked torch",
              *[f"acc / top-1 agreement {n}" for n in names], "max Δacc"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in done:
        emu = [r[f"emulated_{n}"] for n in names]
        base = emu[0]["accuracy_masked_torch"]
        worst = max(abs(e["accuracy"] - base) for e in emu)
        cells = [r["model"], f"{r['granularity']} {r['sparsity']:.0%}", r["format"],
                 str(emu[0]["samples"]), f"{base:.2%}",
                 *[f"{e['accuracy']:.2%} / {e['top1_agreement']:.2%}" for e in emu],
                 f"{worst * 100:.2f} pt"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(rows: Sequence[dict[str, Any]], floor_rss: float) -> list[str]:
    """The issue's goals, each with what was measured."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]

        def pick(gran: str, sparsity: float, fmt: str, prec: str, rows: list = mine) -> Any:
            return next((r for r in rows if (r["granularity"], r["sparsity"], r["format"],
                                             r["precision"]) == (gran, sparsity, fmt, prec)),
                        None)

        packed = pick("weight", 0.9, "packed", "fp32")
        packed8 = pick("weight", 0.9, "packed", "int8")
        sparse = pick("weight", 0.9, "sparse", "fp32")
        pruned = pick("filter", 0.5, "pruned", "fp32")
        if packed and sparse:
            out.append(f"{model}: packed at 90% = {packed['size_ratio']:.3f}x dense "
                       f"(goal <= 0.14; zstd of it {packed['zstd_ratio']:.3f}x), sparse "
                       f"{sparse['size_ratio']:.3f}x, zstd of dense "
                       f"{packed['dense_zstd_bytes'] / packed['dense_bytes']:.3f}x")
        if packed8:
            out.append(f"{model}: packed int8 at 90% = {packed8['size_ratio']:.3f}x dense "
                       "(goal <= 0.06)")
        if pruned:
            out.append(f"{model}: pruned at 50% filters = {pruned['speedup_b64']:.2f}x faster "
                       "than dense at batch 64 (goal >= 2)")
    for key, label in (("runner_peak_rss_b1_mib", "batch 1"), ("runner_peak_rss_mib", "batch 64")):
        peak = max(rows, key=lambda r: r[key])
        out.append(f"runner peak RSS at {label}: at most {peak[key]:.1f} MiB ({peak['model']} "
                   f"{peak['granularity']} {peak['sparsity']:.0%} {peak['format']} "
                   f"{peak['precision']}; goal <= 80)")
    out.append(f"a Python importing only numpy + onnxruntime peaks at {floor_rss:.1f} MiB")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("MPFL_DATA_DIR"))
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test version")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--emulate", action="store_true",
                        help="int8 accuracy on emulated AVX2-only x86 and Cortex-A72 too")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("needs --data-dir or MPFL_DATA_DIR (MNIST and CIFAR-10)")
    if args.emulate:
        for name in EMULATED_TARGETS:
            reason = emulate.unavailable(emulate.target(name))
            if reason:
                parser.error(reason)
    torch.set_num_threads(1)
    profile = QUICK if args.quick else FULL
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mpfl-bench-export-") as tmp:
        for case in profile.cases:
            rows += run_case(case, profile, Path(args.data_dir), Path(tmp), args.emulate)
    floor = import_floor_rss()
    table = markdown(rows)
    summary = goals(rows, floor)
    command = "MPFL_DATA_DIR=" + shlex.quote(str(args.data_dir)) + " python " + " ".join(
        ["benchmarks/bench_export.py", *(["--quick"] if args.quick else []),
         *(["--emulate"] if args.emulate else [])])
    cpu = cpu_info()
    emulated_cpus = ({name: emulate.describe(emulate.target(name)) for name in EMULATED_TARGETS}
                     if args.emulate else {})
    doc = {
        "command": command, "quick": args.quick, "seconds": time.perf_counter() - start,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "threads": 1, "cpu": cpu.describe(),
                    "emulated_cpus": emulated_cpus},
        "import_floor_rss_mib": floor, "goals": summary, "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "export-quick" if args.quick else "export"
    (args.out / f"{name}.json").write_text(json.dumps(doc, indent=2))
    table = f"Measured on {cpu.describe()}.\n\n{table}"
    emulated_table = emulated_markdown(rows, emulated_cpus)
    if emulated_table:
        table += "\n\n" + emulated_table
    (args.out / f"{name}.md").write_text(f"{table}\n\n" + "\n".join(f"- {g}" for g in summary)
                                         + f"\n\nCommand: `{command}`\n")
    print(table)
    print()
    print("\n".join(f"- {g}" for g in summary))
    print(f"\nCommand: `{command}` ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
