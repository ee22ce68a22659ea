"""Learning benchmarks: how much accuracy MPFL keeps for how many bytes, on real data.

Run as `MPFL_DATA_DIR=/path/to/datasets python benchmarks/bench_learning.py` (or pass
--data-dir). 10 nodes, Dirichlet(0.5) label skew, every method on the same split and seed:

(a) MNIST and Fashion-MNIST with LeNet-5: MPFL weight masks at 90% sparsity (int8 values)
    against dense FedAvg, with the same number of rounds: final accuracy, total uplink.
(b) accuracy against sparsity for MPFL filter masks, dense FedAvg pruned once afterwards
    (no fine-tuning, as in the reference code), and centralised iterative pruning on the
    pooled data, on Fashion-MNIST/LeNet-5 and CIFAR-10/cnn-cifar.
(c) accuracy against cumulative uplink MB, MPFL against FedAvg (the runs of part a).

Writes benchmarks/results/learning.json, learning.md (the tables) and PNG plots, and
prints the tables with the command that made them. `--quick` runs a tiny version (small
subsets, few rounds) as a smoke test; its numbers mean nothing.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from apps.experiments import ExperimentResult, Experiments, ExperimentSettings

Progress = Callable[[str], None]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MB = 1_000_000

# The reference settings: 1 local epoch, SGD lr 0.05 momentum 0.9, batch 32,
# 10 nodes, Dirichlet(0.5), 20 rounds in all.
REFERENCE = ExperimentSettings(nodes=10, partition="dirichlet:0.5", seed=0, local_epochs=1,
                               batch_size=32, lr=0.05, momentum=0.9)


# One trainer on the pooled data takes ten times the nodes' steps per round; at their
# lr 0.05 (momentum 0.9) it diverged, so the centralised baseline uses a smaller one.
CENTRAL_LR = 0.01


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One accuracy-vs-sparsity curve of part (b)."""

    dataset: str
    model: str
    sparsities: tuple[float, ...]
    settings: ExperimentSettings


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    part_a_datasets: tuple[str, ...]
    part_a: ExperimentSettings
    sweeps: tuple[Sweep, ...]
    notes: tuple[str, ...]


def _rounds(s: ExperimentSettings) -> str:
    return f"{s.rounds} rounds ({s.mask_rounds} mask + {s.train_rounds} training)"


def _samples(s: ExperimentSettings, full: str) -> str:
    return full if s.train_limit is None else f"a seeded {s.train_limit:,}-sample subset of {full}"


def full_profile() -> Profile:
    part_a = dataclasses.replace(REFERENCE, mask_rounds=5, train_rounds=15,
                                 granularity="weight", value_codec="int8")
    fashion = dataclasses.replace(REFERENCE, mask_rounds=5, train_rounds=15,
                                  granularity="filter", train_limit=20_000,
                                  central_lr=CENTRAL_LR, eval_every_round=False)
    cifar = dataclasses.replace(REFERENCE, mask_rounds=4, train_rounds=8,
                                granularity="filter", train_limit=10_000,
                                central_lr=CENTRAL_LR, eval_every_round=False)
    sweeps = (Sweep("fashion-mnist", "lenet5", (0.1, 0.3, 0.5, 0.7, 0.9), fashion),
              Sweep("cifar10", "cnn-cifar", (0.3, 0.6, 0.9), cifar))
    notes = (
        f"(a) full MNIST / Fashion-MNIST (60k train, 10k test), {part_a.rounds} rounds each: "
        f"MPFL {_rounds(part_a)}, {part_a.schedule} schedule to 90%, weight masks, "
        f"{part_a.value_codec} values, {part_a.consensus} consensus; FedAvg "
        f"{part_a.rounds} dense fp32 rounds. MPFL (joint): the same with mode = joint, "
        "whose mask rounds also send and average the masked weights.",
        *(f"(b) {sw.dataset}: {_samples(sw.settings, 'the training set')}"
          + (" (data_batch_1 + data_batch_2)" if sw.dataset == "cifar10" else "")
          + f", full test set, {_rounds(sw.settings)}, SGD lr {sw.settings.lr} on the "
          f"nodes, sparsities "
          + "/".join(f"{round(100 * x)}" for x in sw.sparsities) + "%." for sw in sweeps),
        "(b) FedAvg then prune: the final dense FedAvg model pruned once, per layer by "
        "filter L2 norm, evaluated without fine-tuning (as in the reference code). "
        "Centralised: the same schedule on the pooled data, one epoch per mask round "
        f"(rewinding to w0), then one epoch per training round, with SGD lr {CENTRAL_LR}: "
        "at lr 0.05 (momentum 0.9) one trainer taking all the steps diverged "
        "(Fashion-MNIST at 50% fell to chance after 11 of its 15 training epochs).",
        "Sparsity is the fraction of prunable units removed (filters / hidden neurons for "
        "filter masks, Conv/Linear weights for weight masks); the classifier head (filter "
        "masks) and biases stay dense. Uplink bytes are the exact published messages "
        "(envelope included); FedAvg's uplink is the same at every sparsity.",
        "Rounds, data subsets and sparsity points were cut to fit ~35 min on a shared "
        "2-core machine; seeds fixed (0), so a rerun gives the same split and init.",
    )
    return Profile("full", ("mnist", "fashion-mnist"), part_a, sweeps, notes)


def quick_profile() -> Profile:
    tiny = dataclasses.replace(REFERENCE, nodes=3, mask_rounds=1, train_rounds=1,
                               train_limit=300, test_limit=200)
    part_a = dataclasses.replace(tiny, granularity="weight", value_codec="int8")
    sweep = dataclasses.replace(tiny, granularity="filter", eval_every_round=False)
    return Profile(
        "quick",
        ("mnist", "fashion-mnist"),
        part_a,
        (Sweep("fashion-mnist", "lenet5", (0.5, 0.9), sweep),
         Sweep("cifar10", "cnn-cifar", (0.5,), sweep)),
        ("quick smoke profile: 3 nodes, 300 training and 200 test samples, 2 rounds; "
         "the numbers are meaningless.",),
    )


# -- running ------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, flush=True)


@dataclasses.dataclass(frozen=True)
class Job:
    """One independent unit of work; jobs run in parallel worker processes."""

    part: str
    dataset: str
    model: str
    method: str  # "fedavg-prune" runs dense FedAvg once and prunes it at every sparsity
    sparsities: tuple[float, ...]
    settings: ExperimentSettings

    @property
    def key(self) -> str:
        per_point = self.method in ("mpfl", "mpfl-joint", "central")
        point = f":{round(100 * self.sparsities[0])}" if per_point else ""
        return f"{self.part}:{self.dataset}:{self.method}{point}"


def _by_priority(sparsities: Sequence[float]) -> list[float]:
    """The highest sparsity, the one nearest 50%, the lowest, then the rest (high first):
    if the time budget runs out, the curve still has its ends and middle."""
    ordered = sorted(sparsities, reverse=True)
    first = [ordered[0], min(ordered, key=lambda s: abs(s - 0.5)), ordered[-1]]
    return list(dict.fromkeys(first + ordered))


def jobs(profile: Profile) -> list[Job]:
    """Every job of a profile, most important first: part (a), the dense runs, then the
    sweep points by :func:`_by_priority`, CIFAR-10 (the longest) before the others."""
    out = [Job("a", d, "lenet5", m, (0.9,), profile.part_a)
           for d in profile.part_a_datasets for m in ("fedavg", "mpfl", "mpfl-joint")]
    sweeps = sorted(profile.sweeps, key=lambda sw: sw.dataset != "cifar10")
    out += [Job("b", sw.dataset, sw.model, "fedavg-prune", sw.sparsities, sw.settings)
            for sw in sweeps]
    ranked = [_by_priority(sw.sparsities) for sw in sweeps]
    for rank in range(max(len(r) for r in ranked)):
        for sw, order in zip(sweeps, ranked, strict=True):
            if rank < len(order):
                out += [Job("b", sw.dataset, sw.model, m, (order[rank],), sw.settings)
                        for m in ("mpfl", "central")]
    return out


def run_job(job: Job, ex: Experiments, say_: Progress = say) -> list[ExperimentResult]:
    ex.progress = lambda text: say_(f"[{job.key}] {text.strip()}")
    out = []
    if job.method in ("fedavg-prune", "fedavg"):
        say_(f"[{job.key}] dense FedAvg")
        out.append(ex.run(f"{job.part}-{job.dataset}-fedavg", job.dataset, job.model,
                          "fedavg", 0.0, job.settings))
        if job.method == "fedavg":
            return out
    for s in job.sparsities:
        say_(f"[{job.key}] {job.method} at {s:.0%}")
        result = ex.run(f"{job.part}-{job.dataset}-{job.method}-{round(s * 100)}", job.dataset,
                        job.model, job.method, s, job.settings)
        say_(f"[{job.key}] {job.method} at {s:.0%}: accuracy {result.accuracy:.4f}, "
             f"uplink {result.uplink_bytes:,} B, {result.seconds:.0f} s")
        out.append(result)
    return out


def run_pool(todo: Sequence[Job], args: argparse.Namespace, tmp: Path
             ) -> tuple[dict[str, list[ExperimentResult]], list[str]]:
    """Run each job in its own single-threaded process, ``args.jobs`` at a time.

    Single-threaded workers keep their speed on a busy machine (a multi-threaded torch
    slows down sharply when other processes take its cores); results come back as JSON.
    No job starts once ``args.budget_minutes`` have passed; the ones left are reported.
    """
    script = Path(__file__).resolve()
    start = time.perf_counter()
    pending = list(todo)
    running: list[tuple[Job, subprocess.Popen[bytes], Path]] = []
    done: dict[str, list[ExperimentResult]] = {}
    skipped: list[str] = []
    while pending or running:
        over = args.budget_minutes is not None and (
            time.perf_counter() - start > 60 * args.budget_minutes)
        if over and pending:
            say(f"time budget of {args.budget_minutes} min used up: skipping "
                + ", ".join(j.key for j in pending))
            skipped = [j.key for j in pending]
            pending = []
        while pending and len(running) < args.jobs:
            job = pending.pop(0)
            out = tmp / (job.key.replace(":", "_") + ".json")
            cmd = [sys.executable, str(script), "--data-dir", str(args.data_dir), "--job",
                   job.key, "--job-out", str(out), "--threads", "1"]
            if args.quick:
                cmd.append("--quick")
            running.append((job, subprocess.Popen(cmd), out))
        time.sleep(0.2)
        for entry in list(running):
            job, proc, out = entry
            code = proc.poll()
            if code is None:
                continue
            running.remove(entry)
            if code != 0:
                for _, other, _ in running:
                    other.kill()
                raise SystemExit(f"job {job.key} failed with exit code {code}")
            docs = json.loads(out.read_text())
            done[job.key] = [ExperimentResult.from_dict(d) for d in docs]
    return done, skipped


def run_all(profile: Profile, args: argparse.Namespace
            ) -> tuple[dict[str, list[ExperimentResult]], list[str]]:
    """Every job's results, and the keys of jobs the time budget left out."""
    todo = jobs(profile)
    if args.jobs <= 1:
        ex = Experiments(args.data_dir)  # one process: datasets load once
        return {job.key: run_job(job, ex) for job in todo}, []
    with tempfile.TemporaryDirectory(prefix="mpfl-bench-learning-") as tmp:
        return run_pool(todo, args, Path(tmp))


# -- tables -------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _method_label(r: ExperimentResult) -> str:
    if r.method == "fedavg":
        return "dense FedAvg"
    mode = " (joint)" if r.method == "mpfl-joint" else ""
    return f"MPFL{mode} weights {r.sparsity:.0%}"


def table_a(results: Sequence[ExperimentResult]) -> str:
    rows = []
    dense = {r.dataset: r for r in results if r.method == "fedavg"}
    for r in results:
        s = r.settings
        per_node_round = r.uplink_bytes / (s.nodes * s.rounds)
        base = dense.get(r.dataset)
        ratio = delta = "-"
        if base is not None and base is not r and r.uplink_bytes:
            ratio = f"1/{base.uplink_bytes / r.uplink_bytes:.1f}"
            delta = f"{100 * (r.accuracy - base.accuracy):+.2f}"
        label = _method_label(r)
        values = "fp32" if r.method == "fedavg" else s.value_codec
        rows.append([r.dataset, label, values, str(s.rounds), f"{100 * r.accuracy:.2f}%",
                     delta, f"{r.uplink_bytes / MB:.3f}", f"{per_node_round:,.0f}", ratio])
    header = ["dataset", "method", "values", "rounds", "accuracy", "Δ pt", "uplink MB (all)",
              "uplink B / node / round", "uplink vs dense"]
    return _table(header, rows)


def table_b(results: Sequence[ExperimentResult], profile: Profile) -> str:
    blocks = []
    for sweep in profile.sweeps:
        mine = [r for r in results if r.dataset == sweep.dataset and r.name.startswith("b-")]
        dense = next((r for r in mine if r.method == "fedavg"), None)
        rows = []
        for s in sweep.sparsities:
            cells = {r.method: r for r in mine if r.method != "fedavg"
                     and abs(r.target_sparsity - s) < 1e-9}
            mpfl = cells.get("mpfl")
            row = [f"{s:.0%}"]
            for method in ("mpfl", "fedavg-prune", "central"):
                r = cells.get(method)
                row.append(f"{100 * r.accuracy:.2f}%" if r else "-")
            row.append(f"{mpfl.uplink_bytes / MB:.2f}" if mpfl else "-")
            row.append(f"{dense.uplink_bytes / MB:.2f}" if dense else "-")
            rows.append(row)
        title = f"{sweep.dataset} / {sweep.model}, filter masks, {sweep.settings.rounds} rounds"
        if dense is not None:
            title += (f", {dense.train_samples:,} training / {dense.test_samples:,} test "
                      f"images; dense FedAvg {100 * dense.accuracy:.2f}%")
        header = ["sparsity", "MPFL", "FedAvg then prune", "centralised", "MPFL uplink MB",
                  "FedAvg uplink MB"]
        blocks.append(f"**{title}**\n\n" + _table(header, rows))
    return "\n\n".join(blocks)


# -- plots --------------------------------------------------------------------------------


def plot_uplink(results: Sequence[ExperimentResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r.dataset for r in results))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for r in results:
            if r.dataset != dataset:
                continue
            points = [(x.cumulative_uplink_bytes / MB, 100 * x.accuracy) for x in r.rounds
                      if x.accuracy is not None]
            label = _method_label(r) + (", fp32" if r.method == "fedavg"
                                        else f", {r.settings.value_codec}")
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("cumulative uplink, all nodes (MB, log scale)")
        ax.set_ylabel("test accuracy (%)")
        first = next(r for r in results if r.dataset == dataset).settings
        ax.set_title(f"{dataset} / LeNet-5, {first.nodes} nodes, {first.partition}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sparsity(results: Sequence[ExperimentResult], profile: Profile, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(profile.sweeps)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    labels = {"mpfl": "MPFL (filter masks)", "fedavg-prune": "FedAvg then prune",
              "central": "centralised iterative pruning"}
    for ax, sweep in zip(axes[0], profile.sweeps, strict=True):
        mine = [r for r in results if r.dataset == sweep.dataset and r.name.startswith("b-")]
        for method, style in (("mpfl", "-o"), ("fedavg-prune", "--s"), ("central", "-.^")):
            pts = sorted((100 * r.target_sparsity, 100 * r.accuracy) for r in mine
                         if r.method == method)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=labels[method])
        dense = next((r for r in mine if r.method == "fedavg"), None)
        if dense is not None:
            ax.axhline(100 * dense.accuracy, color="grey", linestyle=":", label="dense FedAvg")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("sparsity (% of filters / neurons pruned)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{sweep.dataset} / {sweep.model}, {sweep.settings.rounds} rounds")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MPFL_DATA_DIR"),
                        help="directory holding mnist/, fashion-mnist/, cifar-10/ "
                             "(default: $MPFL_DATA_DIR)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (< 1 minute)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default: benchmarks/results, "
                             "benchmarks/results/quick with --quick)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes, one torch thread each; 1 runs everything in "
                             "this process (default: 2, and 1 with --quick)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="start no job after this many minutes (default: 30, none with "
                             "--quick); skipped jobs are listed and left out of the tables")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads in this process")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # a worker: run one job only
    parser.add_argument("--job-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("give --data-dir or set MPFL_DATA_DIR")
    if args.jobs is None:
        args.jobs = 1 if args.quick else 2
    if args.budget_minutes is None and not args.quick:
        args.budget_minutes = 30.0
    return args


def worker(profile: Profile, args: argparse.Namespace) -> None:
    """Run the one job named by --job and write its results as JSON to --job-out."""
    job = next((j for j in jobs(profile) if j.key == args.job), None)
    if job is None or args.job_out is None:
        raise SystemExit(f"unknown job {args.job!r} or no --job-out")
    results = run_job(job, Experiments(args.data_dir))
    args.job_out.write_text(json.dumps([r.to_dict() for r in results], default=str))


def report(profile: Profile, results: dict[str, list[ExperimentResult]], skipped: list[str],
           command: str, elapsed: float, workers: int, out_dir: Path) -> dict[str, Any]:
    """Tables, plots and learning.json from every job's results."""
    order = {j.key: i for i, j in enumerate(sorted(jobs(profile), key=lambda j: j.part))}
    flat = [r for key in sorted(results, key=order.__getitem__) for r in results[key]]
    part_a = [r for r in flat if r.name.startswith("a-")]
    part_a.sort(key=lambda r: (profile.part_a_datasets.index(r.dataset), r.method != "fedavg"))
    part_b = [r for r in flat if r.name.startswith("b-")]
    plot_uplink(part_a, out_dir / "learning_uplink.png")
    plot_sparsity(part_b, profile, out_dir / "learning_sparsity.png")
    a = profile.part_a
    threads = "one torch thread per worker" if workers > 1 else (
        f"{torch.get_num_threads()} torch threads")
    markdown = "\n\n".join([
        f"Command: `{command}` ({elapsed / 60:.1f} min wall on {os.cpu_count()} cores, "
        f"{workers} worker process(es), {threads}, torch {torch.__version__})",
        "Settings:\n\n" + "\n".join(f"- {n}" for n in profile.notes)
        + (f"\n- Skipped (time budget): {', '.join(skipped)}" if skipped else ""),
        f"(a) MPFL weight masks vs dense FedAvg, LeNet-5, {a.nodes} nodes, {a.partition}, "
        f"{a.local_epochs} local epoch(s), SGD lr {a.lr} momentum {a.momentum}, "
        f"batch {a.batch_size}, seed {a.seed}\n\n" + table_a(part_a),
        "(b) accuracy vs sparsity\n\n" + table_b(part_b, profile),
        "(c) accuracy vs cumulative uplink: learning_uplink.png; (b) as a plot: "
        "learning_sparsity.png",
    ])
    doc = {
        "profile": profile.name,
        "command": command,
        "elapsed_seconds": elapsed,
        "job_seconds": {key: sum(r.seconds for r in rs) for key, rs in results.items()},
        "machine": {"cpus": os.cpu_count(), "workers": workers, "torch": torch.__version__,
                    "python": platform.python_version()},
        "notes": list(profile.notes),
        "skipped_jobs": skipped,
        "part_a": [r.to_dict() for r in part_a],
        "part_b": [r.to_dict() for r in part_b],
    }
    (out_dir / "learning.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out_dir / "learning.md").write_text(markdown + "\n")
    say("\n" + markdown)
    return doc


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = quick_profile() if args.quick else full_profile()
    if args.job:
        worker(profile, args)
        return {}
    out_dir: Path = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    given = list(sys.argv[1:] if argv is None else argv)
    env = "" if any(a.startswith("--data-dir") for a in given) else (
        f"MPFL_DATA_DIR={args.data_dir} ")
    command = env + "python benchmarks/bench_learning.py" + "".join(
        f" {shlex.quote(a)}" for a in given)
    say(f"profile {profile.name}: {args.jobs} worker(s), torch {torch.__version__}")
    for note in profile.notes:
        say(f"  {note}")
    start = time.perf_counter()
    results, skipped = run_all(profile, args)
    elapsed = time.perf_counter() - start
    return report(profile, results, skipped, command, elapsed, args.jobs, out_dir)


if __name__ == "__main__":
    main()
