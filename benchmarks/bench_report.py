"""A real MNIST federation and its dense FedAvg baseline, turned into the report the README shows.

    MPFL_DATA_DIR=/path/to/datasets .venv/bin/python benchmarks/bench_report.py

Both runs are ``mpfl simulate`` federations (a coordinator, an embedded broker and one
process per node, talking MQTT), on the same partition and seed: MPFL (LeNet-5, weight
masks to 80% sparsity, int8 values) and dense FedAvg (fp32) for as many rounds. Then
``mpfl report RUN --baseline DENSE --out benchmarks/results/report`` draws them. Writes
benchmarks/results/report/ (report.md and its plots), benchmarks/results/report.json and
the table between its markers in BENCHMARKS.md. One seed: this shows what the report
says about a run, not how MPFL compares in general (that is the learning section).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apps.launcher import SimulationPlan, run_simulation
from apps.report import RunRecord, read_run, write_report
from apps.report.series import bits_per_parameter, final_accuracy, savings
from mpfl.choices import Phase
from mpfl.config.settings import PLAIN_MPFL, FederationConfig
from mpfl.errors import FederationError

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- bench_report:begin -->", "<!-- bench_report:end -->"
TITLE = "## A run report: MNIST, MPFL against dense FedAvg"


def configs(nodes: int, mask_rounds: int, train_rounds: int) -> tuple[FederationConfig, ...]:
    mpfl = FederationConfig(
        federation="report-mpfl", model="lenet5", granularity="weight", final_sparsity=0.8,
        mask_rounds=mask_rounds, train_rounds=train_rounds, value_codec="int8",
        **PLAIN_MPFL, min_nodes=nodes, quorum=nodes, round_timeout=900.0, seed=0,
    ).validate()
    dense = dataclasses.replace(mpfl, federation="report-dense", mask_rounds=0,
                                train_rounds=mask_rounds + train_rounds, final_sparsity=0.0,
                                value_codec="fp32").validate()
    return mpfl, dense


def simulate(cfg: FederationConfig, run_dir: Path, args: argparse.Namespace) -> float:
    """Run one federation to the end; its wall time in seconds."""
    if run_dir.exists():  # the coordinator would resume a finished run: start afresh
        shutil.rmtree(run_dir)
    plan = SimulationPlan(cfg, args.nodes, "mnist", run_dir, args.data_dir, args.partition,
                          cfg.seed, args.limit, eval_dataset="mnist")
    start = time.perf_counter()
    code = run_simulation(plan, echo=lambda line: print(f"  [{cfg.federation}] {line}"))
    if code != 0:
        raise FederationError(f"{cfg.federation} failed; see {plan.coordinator_log}",
                              exit_code=code)
    return time.perf_counter() - start


def row(run: RunRecord, seconds: float) -> dict[str, Any]:
    sent = sum(r.uplink_bytes for r in run.rounds)
    train = [r for r in run.rounds if r.phase == Phase.TRAIN]
    bits = bits_per_parameter(train, run.parameters).y
    return {
        "run": run.name, "rounds": len(run.rounds), "accuracy": final_accuracy(run),
        "sparsity": run.rounds[-1].sparsity, "uplink_bytes": sent,
        "dense_equivalent_ratio": savings(run),
        "train_bits_per_parameter": sum(bits) / len(bits) if bits else None,
        "seconds": seconds,
    }


def table(rows: Sequence[dict[str, Any]], baseline_bytes: int) -> str:
    lines = ["| run | rounds | final accuracy | sparsity | uplink MB | less than dense run "
             "| bits/param/node, train rounds | wall time |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['rounds']} | {100 * r['accuracy']:.2f}% | "
            f"{100 * r['sparsity']:.1f}% | {r['uplink_bytes'] / 1e6:.3f} | "
            f"{baseline_bytes / r['uplink_bytes']:.1f}x | {r['train_bits_per_parameter']:.2f} | "
            f"{r['seconds']:.0f} s |")
    return "\n".join(lines)


def write_section(text: str, path: Path = BENCHMARKS_MD) -> None:
    current = path.read_text()
    block = f"{BEGIN}\n{TITLE}\n\n{text}\n{END}"  # heading inside: one block to merge
    if BEGIN in current and END in current:
        before, rest = current.split(BEGIN, 1)
        path.write_text(before + block + rest.split(END, 1)[1])
    else:
        path.write_text(current.rstrip("\n") + f"\n\n{block}\n")


def _shown(path: Path) -> str:
    """A path as the command lines above would name it: from the repository root."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MPFL_DATA_DIR"),
                        help="directory holding mnist/ (default: $MPFL_DATA_DIR)")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--limit", type=int, default=1500, help="samples per node")
    parser.add_argument("--partition", default="dirichlet:0.5")
    parser.add_argument("--rounds", type=int, nargs=2, default=(3, 6),
                        metavar=("MASK", "TRAIN"), help="MPFL's rounds; dense runs their sum")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-report")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "report")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("no dataset directory: pass --data-dir or set MPFL_DATA_DIR")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    env = "" if any(a.startswith("--data-dir") for a in given) else (
        "MPFL_DATA_DIR=/path/to/datasets ")
    command = env + ".venv/bin/python benchmarks/bench_report.py" + "".join(
        f" {shlex.quote(a)}" for a in given)
    mpfl_cfg, dense_cfg = configs(args.nodes, *args.rounds)
    mpfl_dir, dense_dir = args.runs_dir / "mnist-mpfl", args.runs_dir / "mnist-dense"
    seconds = {mpfl_dir: simulate(mpfl_cfg, mpfl_dir, args),
               dense_dir: simulate(dense_cfg, dense_dir, args)}
    report = write_report(mpfl_dir, args.out, dense_dir)
    runs = [read_run(mpfl_dir), read_run(dense_dir)]
    rows = [row(run, seconds[run.path]) for run in runs]
    settings = {k: v for k, v in vars(args).items() if k not in ("data_dir", "runs_dir", "out")}
    result = {"command": command, "settings": settings, "runs": rows,
              "report": _shown(report.markdown)}
    (RESULTS_DIR / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    shown = f"mpfl report {_shown(mpfl_dir)} --baseline {_shown(dense_dir)} --out " \
            f"{_shown(args.out)}"
    text = (
        f"    {command}\n\n"
        f"MNIST, LeNet-5, {args.nodes} nodes of {args.limit} samples ({args.partition}), "
        f"one seed, every node a process talking MQTT. MPFL: {args.rounds[0]} mask + "
        f"{args.rounds[1]} training rounds, weight masks to 80%, int8 values; dense FedAvg: "
        f"{sum(args.rounds)} rounds of fp32. The report below is `{shown}` "
        f"([report.md]({result['report']})); wall times are this shared 2-core machine's.\n\n"
        + table(rows, rows[1]["uplink_bytes"])
        + f"\n\n![accuracy against uplink]({_shown(args.out)}/accuracy_vs_uplink.png)"
    )
    if args.out == RESULTS_DIR / "report":
        write_section(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
