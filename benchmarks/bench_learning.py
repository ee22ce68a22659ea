"""Learning benchmarks: how much accuracy MPFL keeps for how many bytes, on real data.

Run as `MPFL_DATA_DIR=/path/to/datasets python benchmarks/bench_learning.py` (or pass
--data-dir). 10 nodes, Dirichlet(0.5) label skew, every method on the same split and seed:

(a) MNIST and Fashion-MNIST with LeNet-5, over several seeds: MPFL weight masks at 90%
    sparsity against dense FedAvg with the same number of rounds, as an ablation (int8
    values, then int4 deltas, error feedback, server momentum, one change per row): final
    accuracy, uplink in bits per parameter, total MB.
(b) accuracy against sparsity for MPFL filter masks, dense FedAvg pruned once afterwards
    (no fine-tuning, as in the reference code), and centralised iterative pruning on the
    pooled data, on Fashion-MNIST/LeNet-5 and CIFAR-10/cnn-cifar.
(c) accuracy against cumulative uplink, the default MPFL against dense FedAvg (part a).

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
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from apps.experiments import ExperimentResult, Experiments

# The helper modules sit next to this file; put them on the path also when the script is
# loaded by file name (tests/test_learning.py uses importlib), not run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_plan import (  # noqa: E402
    DEFAULT_LABEL,
    Job,
    Profile,
    _by_priority,  # noqa: F401  (tests/test_learning.py reaches the plan through here)
    full_profile,
    jobs,
    quick_profile,
)
from learning_report import (  # noqa: E402
    group_part_a,
    plot_sparsity,
    plot_uplink,
    table_a,
    table_b,
)

Progress = Callable[[str], None]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- running ------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, flush=True)


def run_job(job: Job, ex: Experiments, say_: Progress = say) -> list[ExperimentResult]:
    ex.progress = lambda text: say_(f"[{job.key}] {text.strip()}")
    if job.variant:
        name = f"{job.part}-{job.dataset}-{job.variant}-s{job.settings.seed}"
        result = ex.run(name, job.dataset, job.model, job.method, job.sparsities[0],
                        job.settings)
        say_(f"[{job.key}] accuracy {result.accuracy:.4f}, uplink {result.uplink_bytes:,} B, "
             f"{result.seconds:.0f} s")
        return [result]
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
    if args.keep_jobs is not None:  # a rerun picks up where a stopped one left off
        for job in list(pending):
            kept = args.keep_jobs / job_file(job)
            if kept.is_file():
                pending.remove(job)
                docs = json.loads(kept.read_text())
                done[job.key] = [ExperimentResult.from_dict(d) for d in docs]
                say(f"[{job.key}] kept from an earlier run: {kept}")
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
            out = tmp / job_file(job)
            cmd = [sys.executable, str(script), "--data-dir", str(args.data_dir), "--job",
                   job.key, "--job-out", str(out), "--threads", "1", "--parts", args.parts]
            if args.train_limit:
                cmd += ["--train-limit", str(args.train_limit)]
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
            if args.keep_jobs is not None:
                args.keep_jobs.mkdir(parents=True, exist_ok=True)
                shutil.copy(out, args.keep_jobs / out.name)
    return done, skipped


def run_all(profile: Profile, args: argparse.Namespace
            ) -> tuple[dict[str, list[ExperimentResult]], list[str]]:
    """Every job's results, and the keys of jobs the time budget left out."""
    todo = jobs(profile, args.parts)
    if args.jobs <= 1:
        ex = Experiments(args.data_dir)  # one process: datasets load once
        return {job.key: run_job(job, ex) for job in todo}, []
    with tempfile.TemporaryDirectory(prefix="mpfl-bench-learning-") as tmp:
        return run_pool(todo, args, Path(tmp))


def job_file(job: Job) -> str:
    return job.key.replace(":", "_") + ".json"


def load_jobs(profile: Profile, args: argparse.Namespace
              ) -> tuple[dict[str, list[ExperimentResult]], list[str]]:
    """The results a run kept (--keep-jobs), and the keys of jobs it has none for."""
    done: dict[str, list[ExperimentResult]] = {}
    for job in jobs(profile, args.parts):
        path = args.from_jobs / job_file(job)
        if path.is_file():
            done[job.key] = [ExperimentResult.from_dict(d) for d in json.loads(path.read_text())]
    return done, [j.key for j in jobs(profile, args.parts) if j.key not in done]


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
    parser.add_argument("--parts", default="ab", choices=("a", "b", "ab"),
                        help="a: the seeded ablation against dense FedAvg; b: accuracy "
                             "against sparsity (default: both)")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="part (a) trains on a seeded subset of this many samples "
                             "(default: the full training sets)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads in this process")
    parser.add_argument("--from-jobs", type=Path, default=None,
                        help="run nothing: make the tables and plots from the job results a "
                             "run kept in this directory (see --keep-jobs)")
    parser.add_argument("--keep-jobs", type=Path, default=None,
                        help="keep each job's results here as it finishes, and take the "
                             "ones already there instead of running them again")
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
    job = next((j for j in jobs(profile, args.parts) if j.key == args.job), None)
    if job is None or args.job_out is None:
        raise SystemExit(f"unknown job {args.job!r} or no --job-out")
    results = run_job(job, Experiments(args.data_dir))
    args.job_out.write_text(json.dumps([r.to_dict() for r in results], default=str))


def report(profile: Profile, results: dict[str, list[ExperimentResult]], skipped: list[str],
           command: str, elapsed: float, workers: int, out_dir: Path, parts: str = "ab",
           kept: bool = False) -> dict[str, Any]:
    """Tables, plots and learning.json from every job's results; ``kept``: they were read
    back from --from-jobs, so ``elapsed`` is the jobs' own time over ``workers``."""
    todo = jobs(profile, parts)
    by_key = {j.key: j for j in todo}
    order = {j.key: i for i, j in enumerate(sorted(todo, key=lambda j: j.part))}
    keys = sorted(results, key=order.__getitem__)
    tagged = [(by_key[k].variant, r) for k in keys if by_key[k].part == "a" for r in results[k]]
    grouped = group_part_a(tagged)
    part_b = [r for k in keys if by_key[k].part == "b" for r in results[k]]
    plot_uplink(grouped, profile, out_dir / "learning_uplink.png")
    a = profile.part_a
    threads = "one torch thread per worker" if workers > 1 else (
        f"{torch.get_num_threads()} torch threads")
    headline = [dataclasses.replace(v, label=DEFAULT_LABEL) if v.key == profile.default else v
                for v in profile.variants if v.key in ("fedavg", profile.default)]
    blocks = [
        f"Command: `{command}` ({elapsed / 60:.1f} min "
        + ("of job time over " if kept else "wall on ")
        + f"{os.cpu_count()} cores, {workers} worker process(es), {threads}, "
        f"torch {torch.__version__})",
        "Settings:\n\n" + "\n".join(f"- {n}" for n in profile.notes
                                     if not n.startswith("(") or n[1] in parts)
        + (f"\n- Skipped (time budget): {', '.join(skipped)}" if skipped else ""),
    ]
    if "a" in parts:
        ran = sorted({r.settings.seed for _, r in tagged})
        setting = (f"LeNet-5, {a.nodes} nodes, {a.partition}, {a.local_epochs} local "
                   f"epoch(s), SGD lr {a.lr} momentum {a.momentum}, batch {a.batch_size}, "
                   f"90% weight sparsity, seeds run: {', '.join(map(str, ran))} (of "
                   f"{', '.join(map(str, profile.seeds))})")
        blocks += [f"(a) headline: the default against dense FedAvg, {setting}\n\n"
                   + table_a(grouped, profile, headline),
                   "(a) ablation: each row adds one change to the row above\n\n"
                   + table_a(grouped, profile, profile.variants),
                   "(c) final accuracy against uplink bit/param: learning_uplink.png"]
    if "b" in parts:
        plot_sparsity(part_b, profile, out_dir / "learning_sparsity.png")
        blocks += ["(b) accuracy vs sparsity\n\n" + table_b(part_b, profile),
                   "(b) as a plot: learning_sparsity.png"]
    markdown = "\n\n".join(blocks)
    doc = {
        "profile": profile.name,
        "command": command,
        "parts": parts,
        "elapsed_seconds": elapsed,
        "job_seconds": {key: sum(r.seconds for r in rs) for key, rs in results.items()},
        "machine": {"cpus": os.cpu_count(), "workers": workers, "torch": torch.__version__,
                    "python": platform.python_version()},
        "notes": list(profile.notes),
        "default": profile.default,
        "skipped_jobs": skipped,
        "part_a": [dict(r.to_dict(), variant=v) for v, r in tagged],
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
    profile = quick_profile() if args.quick else full_profile(args.train_limit)
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
    if args.from_jobs is not None:
        results, skipped = load_jobs(profile, args)
        elapsed = sum(r.seconds for rs in results.values() for r in rs) / max(args.jobs, 1)
    else:
        results, skipped = run_all(profile, args)
        elapsed = time.perf_counter() - start
    return report(profile, results, skipped, command, elapsed, args.jobs, out_dir, args.parts,
                  kept=args.from_jobs is not None)


if __name__ == "__main__":
    main()
