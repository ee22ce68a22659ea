"""Training throughput in GFLOP/s on this host: the anchor of the profiles' ``train_gflops``.

Run as ``nice -n 19 python benchmarks/bench_train_speed.py``; prints a markdown table,
writes benchmarks/results/train_speed.json and the table into BENCHMARKS.md between its
markers. For each zoo model it counts the FLOPs of one training step per sample (torch's
``FlopCounterMode``, as the link planner does: ``apps.plan.compute``) and times the real
local training loop (``mpfl.ml.train.train_local``: SGD with momentum, batch 32, one
torch thread) over 2,048 synthetic images of the model's input shape (throughput does
not depend on the pixel values), after a warm-up epoch; the median of ``--repeats``
epochs. GFLOP/s = FLOPs per sample x samples per second. The last columns turn each
model's FLOPs into seconds per 6,000-sample epoch at two profiles' declared speeds, which
is what ``mpfl simulate --hardware P --link L`` plans with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"
BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
BEGIN, END = "<!-- operator-errors:begin -->", "<!-- operator-errors:end -->"
COMMAND = "nice -n 19 python benchmarks/bench_train_speed.py"
MODELS = ("mlp", "lenet5", "cnn-cifar", "resnet8")
SAMPLES = 2048
EPOCH = 6000  # the partition size the edge benchmark and the README use
PLANNED = ("rpi4", "rpi5")


def measure(name: str, repeats: int) -> dict[str, float | str]:
    import numpy as np
    import torch

    from apps.plan.compute import input_shape, train_flops_per_sample
    from mpfl.ml.data import Dataset
    from mpfl.ml.models import build_model
    from mpfl.ml.train import train_local
    from mpfl.wire.specs import DEFAULT_TRAIN, ModelSpec

    torch.set_num_threads(1)
    spec = ModelSpec(name)
    flops = train_flops_per_sample(spec)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, *input_shape(spec))).astype(np.float32)
    data = Dataset("synthetic", x, rng.integers(0, 10, SAMPLES), 10)
    spec_train = DEFAULT_TRAIN  # one epoch, batch 32, SGD lr 0.05 momentum 0.9
    model = build_model(spec, seed=0)
    train_local(model, data, spec_train, seed=0)  # warm-up
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        train_local(model, data, spec_train, seed=r)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"model": name, "mflop_per_sample": flops / 1e6,
            "samples_per_s": SAMPLES / seconds, "gflops": flops * SAMPLES / seconds / 1e9}


def markdown(rows: list[dict[str, float | str]], host: str) -> str:
    from hardware import get_profile

    profiles = [get_profile(name) for name in PLANNED]
    head = ("| model | MFLOP per sample (train step) | samples/s | GFLOP/s | "
            + " | ".join(f"s per {EPOCH:,}-sample epoch at {p.name}'s declared "
                         f"{p.train_gflops:g} GFLOP/s" for p in profiles) + " |")
    lines = [
        f"Training throughput on this host ({host}; 1 torch thread, batch 32, SGD), "
        "and the epoch times the link planner derives from the profiles' declared speeds.",
        "",
        f"Command: `{COMMAND}`",
        "",
        head,
        "|" + "---|" * (4 + len(profiles)),
    ]
    for r in rows:
        planned = [float(r["mflop_per_sample"]) * 1e6 * EPOCH / ((p.train_gflops or 1) * 1e9)
                   for p in profiles]
        lines.append(f"| {r['model']} | {float(r['mflop_per_sample']):.2f} | "
                     f"{float(r['samples_per_s']):,.0f} | {float(r['gflops']):.2f} | "
                     + " | ".join(f"{s:.1f}" for s in planned) + " |")
    lines += ["", "The declared figures (hardware/profiles.toml) are estimates scaled from this "
              "host's figures, not measurements on the boards: small models keep torch far "
              "below a CPU's peak, which is why the GFLOP/s column spreads so widely."]
    return "\n".join(lines)


def write_benchmarks_md(text: str, part: str) -> None:
    """Put ``text`` in this part's block inside the operator-errors section of BENCHMARKS.md
    (the section and the block are added the first time)."""
    current = BENCHMARKS_MD.read_text()
    if BEGIN not in current or END not in current:
        current = (current.rstrip("\n") + "\n\n## Operability: failures and planning figures"
                   f"\n\n{BEGIN}\n{END}\n")
    head, rest = current.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    start, stop = f"<!-- {part}:begin -->", f"<!-- {part}:end -->"
    block = f"{start}\n{text}\n{stop}"
    if start in body and stop in body:
        before, after = body.split(start, 1)
        body = before + block + after.split(stop, 1)[1]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(head + BEGIN + body + END + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [measure(name, args.repeats) for name in MODELS]
    from hardware.detect import read_machine

    machine = read_machine()
    load = os.getloadavg()[0]  # a shared machine: other jobs slow every figure down
    host = (f"{platform.machine()}, {machine.cpu or 'unknown CPU'}, {machine.cores} cores, "
            f"load average {load:.1f} at the end")
    text = markdown(rows, host)
    print(text)
    print(f"\n(run time {time.perf_counter() - started:.0f} s)")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"host": host, "command": COMMAND, "rows": rows},
                                      indent=2) + "\n")
        write_benchmarks_md(text, "train-speed")


if __name__ == "__main__":
    main()
