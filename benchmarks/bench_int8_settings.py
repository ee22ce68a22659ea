"""int8 settings benchmark: which weight quantization computes the same on every CPU.

Run as `MPFL_DATA_DIR=/path/to/datasets python benchmarks/bench_int8_settings.py` (or pass
--data-dir), after `make emulators`. The measurements that chose `mpfl-export --int8`'s
weights (BENCHMARKS.md, "Choosing the int8 weights"). Five fp32 graphs, each quantized
with each setting of onnxruntime's `quantize_dynamic` (MatMul weights only; convolutions
stay fp32, so the settings alone differ):

- the digits MLP that tests/test_export_cli.py exports (untrained, 50% filters, pruned),
  on the 450 digits test images;
- the MLPs of tests/test_export_formats.py at 50% weights (dense) and 50% filters
  (pruned), on random normal inputs;
- MLP and LeNet-5 trained one epoch on the first 10,000 MNIST training images, 90% of
  weights pruned by magnitude per layer (dense), on the first 2,000 test images (torch
  trains with 2 threads whatever the machine: LeNet-5's model depends on the count).

Every file runs in the torch-free runner (one thread) on this CPU and under qemu on an
x86 with AVX2 but no VNNI (Haswell) and on a Raspberry Pi 4's Cortex-A72
(tests/emulation.py). Each cell is max |int8 - torch| / max |torch| over the logits, and
the share of images whose top-1 class matches torch's.

Writes benchmarks/results/int8_settings.json and int8_settings.md and prints the table.
`--quick` runs a tiny version (fewer images, a few training steps); its numbers mean
nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the export tests' model builders, emulation

import emulation as emulate  # noqa: E402
from _export_helpers import (  # noqa: E402
    random_filter_mask,
    sample_inputs,
    saved_model,
    torch_logits,
)

from export.cpu import cpu_info  # noqa: E402
from export.onnx_export import build_artifacts, reference_model  # noqa: E402
from export.options import ExportOptions  # noqa: E402
from export.runner import Runner  # noqa: E402
from mpfl.choices import ModelName  # noqa: E402
from mpfl.ml.checkpoint import SavedModel  # noqa: E402
from mpfl.ml.data import Dataset, load_dataset  # noqa: E402
from mpfl.ml.masks import local_mask, unit_scores  # noqa: E402
from mpfl.ml.models import ModelSpec, build_model  # noqa: E402
from mpfl.ml.train import train_local  # noqa: E402
from mpfl.ml.units import build_unit_map, model_state  # noqa: E402
from mpfl.wire.specs import DEFAULT_TRAIN  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DIGITS_MLP = ModelSpec(ModelName.MLP, {"image_size": 8, "hidden": [64, 32]})
TRAIN = DEFAULT_TRAIN.replace(epochs=1, batch_size=64, lr=0.05, momentum=0.9)
# LeNet-5's convolutions sum gradients in an order set by torch's thread count, and one
# epoch carries the rounding far: a fixed count trains the same model on any machine.
TRAIN_THREADS = 2
CPUS = ("native", "haswell", "cortex-a72")
SAME = 1e-4  # max |difference| / output scale between CPUs computing the same integers
CPU_LABELS = {"native": "this CPU", "haswell": "AVX2 only", "cortex-a72": "A72"}


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str
    label: str
    weight_type: str  # onnxruntime QuantType name
    reduce_range: bool
    per_channel: bool


SETTINGS = (
    Setting("qint8", "QInt8 (old)", "QInt8", False, False),
    Setting("qint8-7bit", "QInt8 7-bit", "QInt8", True, False),
    Setting("qint8-7bit-per-column", "QInt8 7-bit per column (new)", "QInt8", True, True),
    Setting("quint8", "QUInt8", "QUInt8", False, False),
)


@dataclasses.dataclass(frozen=True)
class Case:
    key: str
    label: str
    saved: SavedModel
    x: np.ndarray
    y: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Profile:
    train_samples: int
    test_samples: int
    random_samples: int
    digits_samples: int | None  # None: the whole digits test split


FULL = Profile(train_samples=10_000, test_samples=2_000, random_samples=256,
               digits_samples=None)
QUICK = Profile(train_samples=256, test_samples=64, random_samples=32, digits_samples=64)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def quantize(model: onnx.ModelProto, setting: Setting) -> onnx.ModelProto:
    """onnxruntime's dynamic quantization of the MatMul weights with ``setting``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint at WARNING
    try:
        with tempfile.TemporaryDirectory(prefix="mpfl-int8-") as tmp, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = Path(tmp) / "int8.onnx"
            quantize_dynamic(model, out, op_types_to_quantize=["MatMul"],
                             weight_type=QuantType[setting.weight_type],
                             reduce_range=setting.reduce_range,
                             per_channel=setting.per_channel)
            return onnx.load(out)
    finally:
        root.setLevel(level)


def fp32_graph(saved: SavedModel) -> onnx.ModelProto:
    """The fp32 export the int8 one starts from: pruned for filters, dense for weights."""
    fmt = "pruned" if saved.granularity == "filter" else "dense"
    artifact, _, _ = build_artifacts(saved, ExportOptions(format=fmt))
    return onnx.load_from_string(artifact.data)


def trained(name: str, train: Dataset) -> SavedModel:
    """``name`` trained one epoch, then 90% of its weights pruned by magnitude per layer."""
    spec = ModelSpec(ModelName(name))
    model = build_model(spec, seed=0)
    torch.set_num_threads(TRAIN_THREADS)
    try:
        train_local(model, train, TRAIN, seed=0)
    finally:
        torch.set_num_threads(1)
    unit_map = build_unit_map(model, spec, "weight")
    state = model_state(model)
    mask = local_mask(unit_scores(state, unit_map), unit_map.full_mask(), unit_map.slices, 0.9)
    return SavedModel(spec, "weight", unit_map.apply(state, mask), mask, {})


def build_cases(data_dir: Path, profile: Profile) -> list[Case]:
    model = build_model(DIGITS_MLP, seed=0)
    unit_map = build_unit_map(model, DIGITS_MLP, "filter")
    mask = random_filter_mask(unit_map.n_units, unit_map.slices, 0.5, seed=0)
    digits_saved = SavedModel(DIGITS_MLP, "filter", unit_map.apply(model_state(model), mask),
                              mask, {})
    digits = load_dataset("digits", None, "test")
    n = profile.digits_samples or len(digits.y)
    random_x = sample_inputs("mlp", profile.random_samples)
    cases = [
        Case("digits-mlp-f50", "digits MLP, 50% filters, pruned", digits_saved,
             digits.x[:n], digits.y[:n]),
        Case("mlp-w50", "MLP 784-200-100-10, 50% weights (random inputs)",
             saved_model("mlp", "weight", 0.5), random_x, None),
        Case("mlp-f50", "MLP, 50% filters, pruned (random inputs)",
             saved_model("mlp", "filter", 0.5), random_x, None),
    ]
    train = load_dataset("mnist", data_dir, "train").subset(np.arange(profile.train_samples))
    test = load_dataset("mnist", data_dir, "test")
    tx, ty = test.x[: profile.test_samples], test.y[: profile.test_samples]
    for name, label in (("mlp", "MLP on MNIST, 90% weights"),
                        ("lenet5", "LeNet-5 on MNIST, 90% weights")):
        say(f"training {name} on {profile.train_samples} MNIST images")
        cases.append(Case(f"{name}-mnist-w90", label, trained(name, train), tx, ty))
    return cases


def score(ref: np.ndarray, out: np.ndarray, y: np.ndarray | None) -> dict[str, Any]:
    top1 = out.argmax(1)
    return {
        "rel_max_diff": float(np.abs(out - ref).max() / np.abs(ref).max()),
        "top1_agreement": float((top1 == ref.argmax(1)).mean()),
        "accuracy_delta": None if y is None else float((top1 == y).mean()
                                                        - (ref.argmax(1) == y).mean()),
    }


def run_case(case: Case, work: Path, cpus: Sequence[str]) -> list[dict[str, Any]]:
    """Quantize ``case`` with every setting and score each file on each CPU."""
    ref = torch_logits(reference_model(case.saved)[0], case.x)
    graph = fp32_graph(case.saved)
    paths = []
    for setting in SETTINGS:
        path = work / f"{case.key}__{setting.key}.onnx"
        path.write_bytes(quantize(graph, setting).SerializeToString())
        paths.append(path)
    outputs: dict[str, list[np.ndarray]] = {
        "native": [Runner(p, threads=1).predict(case.x) for p in paths]}
    data = work / f"{case.key}.npz"
    np.savez(data, x=case.x)
    for cpu in cpus:
        if cpu == "native":
            continue
        say(f"{case.key}: {len(case.x)} inputs x {len(paths)} files on emulated {cpu}")
        outs = emulate.logits(emulate.target(cpu), data, paths, work, timeout=7200)
        outputs[cpu] = [np.load(p) for p in outs]
    rows = []
    scale = float(np.abs(ref).max())
    for i, setting in enumerate(SETTINGS):
        per_cpu = {cpu: score(ref, outputs[cpu][i], case.y) for cpu in outputs}
        for cpu, result in per_cpu.items():
            gap = float(np.abs(outputs[cpu][i] - outputs["native"][i]).max()) / scale
            # The same integers give the same outputs up to fp32 rounding order (the
            # tolerance of tests/test_export_emulated.py); more means other integers.
            result |= {"rel_max_diff_to_native": gap, "same_as_native": gap <= SAME}
        rows.append({"case": case.key, "model": case.label, "setting": setting.key,
                     "inputs": len(case.x), "cpus": per_cpu,
                     "same_on_every_cpu": all(r["same_as_native"] for r in per_cpu.values())})
    return rows


def cell(result: dict[str, Any]) -> str:
    agree = result["top1_agreement"]
    share = "100%" if agree == 1.0 else f"{100 * agree:.1f}%"
    return f"{result['rel_max_diff']:.3f} {share}"


def markdown(rows: Sequence[dict[str, Any]], cpus: Sequence[str]) -> str:
    """One column per setting; a setting whose outputs differ between CPUs gets one cell per
    CPU (this / AVX2 only / A72), those that compute something else than this CPU in bold."""
    split = {r["setting"] for r in rows if not r["same_on_every_cpu"]}
    header = ["model"] + [
        s.label + (": " + " / ".join(CPU_LABELS[c] for c in cpus) if s.key in split else "")
        for s in SETTINGS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in dict.fromkeys(r["case"] for r in rows):
        mine = {r["setting"]: r for r in rows if r["case"] == key}
        cells = [next(iter(mine.values()))["model"]]
        for s in SETTINGS:
            results = mine[s.key]["cpus"]
            if s.key not in split:
                cells.append(cell(results["native"]))
                continue
            cells.append(" / ".join(
                cell(results[c]) if results[c]["same_as_native"] else f"**{cell(results[c])}**"
                for c in cpus))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("MPFL_DATA_DIR"))
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test version")
    parser.add_argument("--native-only", action="store_true",
                        help="skip the emulated CPUs (no `make emulators` needed)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("needs --data-dir or MPFL_DATA_DIR (MNIST)")
    cpus = ("native",) if args.native_only else CPUS
    for name in cpus[1:]:
        reason = emulate.unavailable(emulate.target(name))
        if reason:
            parser.error(f"{reason}; or pass --native-only")
    torch.set_num_threads(1)
    profile = QUICK if args.quick else FULL
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mpfl-bench-int8-") as tmp:
        for case in build_cases(Path(args.data_dir), profile):
            rows += run_case(case, Path(tmp), cpus)
    import onnxruntime

    cpu = cpu_info()
    described = {"native": cpu.describe(),
                 **{c: emulate.describe(emulate.target(c)) for c in cpus[1:]}}
    command = "MPFL_DATA_DIR=" + shlex.quote(str(args.data_dir)) + " python " + " ".join(
        ["benchmarks/bench_int8_settings.py", *(["--quick"] if args.quick else []),
         *(["--native-only"] if args.native_only else [])])
    table = markdown(rows, cpus)
    doc = {
        "command": command, "quick": args.quick, "seconds": time.perf_counter() - start,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__, "threads": 1, "cpus": described},
        "profile": dataclasses.asdict(profile),
        "settings": [dataclasses.asdict(s) for s in SETTINGS], "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "int8_settings-quick" if args.quick else "int8_settings"
    (args.out / f"{name}.json").write_text(json.dumps(doc, indent=2))
    where = "; ".join(f"{CPU_LABELS[c]}: {described[c]}" for c in cpus)
    text = f"onnxruntime {onnxruntime.__version__}; {where}.\n\n{table}"
    (args.out / f"{name}.md").write_text(f"{text}\n\nCommand: `{command}`\n")
    print(text)
    print(f"\nCommand: `{command}` ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
