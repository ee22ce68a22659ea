"""Robustness benchmark: 10 nodes, 2 of them bad, each aggregation rule against each attack.

Run as `MPFL_DATA_DIR=/path/to/datasets python benchmarks/bench_robust.py` (or pass
--data-dir). Fashion-MNIST, LeNet-5, the in-process federation (the coordinator's and the
nodes' own code over the in-memory transport). Kinds of bad node:

- data: ``noise`` (pixels shuffled per image, ``mpfl.ml.robustness``) and ``permuted``
  (every label moved by one class permutation): honest nodes on bad data;
- uploads (``mpfl.federation.corruption``, simulation only): ``random-mask`` (the local
  mask's kept units shuffled), ``scale`` (values x100) and ``sign-flip`` (values negated).

Each rule is a value aggregator (fedavg, median, trimmed-mean, norm-clip, nearest-median,
median-outliers), optionally with ``vote_agreement`` (outlier mask voters down-weighted).
Every rule also runs clean; the reference is the clean run with the default rule
(fedavg), and the floor is FedAvg of the honest nodes alone. Writes
benchmarks/results/robust.json and robust.md, and the table into BENCHMARKS.md between
its markers. `--quick` runs a tiny version on sklearn's digits (a smoke test: its numbers
mean nothing) into benchmarks/results/quick/ and leaves BENCHMARKS.md alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from apps.experiments import (
    ExperimentData,
    ExperimentSettings,
    federation_config,
    prepare_data,
)
from mpfl.errors import FederationError
from mpfl.federation.evaluation import dataset_evaluator
from mpfl.federation.simulation import run_in_process

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
BEGIN, END = "<!-- bench_robust:begin -->", "<!-- bench_robust:end -->"

ATTACKS = ("clean", "noise", "permuted", "random-mask", "scale", "sign-flip")
DATA_ATTACKS = ("noise", "permuted")
# The floor: FedAvg of the honest nodes alone, the bad ones left out as a perfect filter
# would. Their data goes with them: a rule that drops them cannot do better.
WITHOUT_BAD = "without-bad"
# name: (aggregator, vote_agreement)
RULES: dict[str, tuple[str, bool]] = {
    "fedavg": ("fedavg", False),
    "median": ("median", False),
    "trimmed-mean": ("trimmed-mean", False),
    "norm-clip": ("norm-clip", False),
    "median+agreement": ("median", True),
    "nearest-median": ("nearest-median", False),
    "nearest-median+agreement": ("nearest-median", True),
    "median-outliers": ("median-outliers", False),
    "median-outliers+agreement": ("median-outliers", True),
}
# Run first: the rules meant to hold an attack without costing clean non-iid rounds.
CANDIDATES = ("median-outliers", "norm-clip", "median-outliers+agreement")
TRIM = 0.2  # 2 bad nodes of 10: cut 2 values per side per coordinate


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str
    model: str
    settings: ExperimentSettings
    bad_nodes: tuple[int, ...]
    final_sparsity: float
    seeds: tuple[int, ...]
    model_args: tuple[tuple[str, Any], ...] = ()
    rules: tuple[str, ...] = tuple(RULES)  # those to run (fedavg always: the reference)

    def notes(self) -> list[str]:
        s = self.settings
        return [
            f"{self.dataset}, {self.model}, {s.nodes} nodes ({s.partition}), bad nodes "
            f"{list(self.bad_nodes)}; train subset {s.train_limit} samples "
            f"({(s.train_limit or 0) // s.nodes} a node), test subset {s.test_limit}",
            f"{s.mask_rounds} mask rounds ({s.granularity} masks, {s.consensus}, final "
            f"sparsity {self.final_sparsity:.0%}, rewind mode) + {s.train_rounds} training "
            f"rounds; {s.local_epochs} local epoch, SGD lr {s.lr} momentum {s.momentum}, "
            f"batch {s.batch_size}; fp32 values",
            f"seeds {list(self.seeds)}: each cell is the mean and the sample standard "
            "deviation over them (the seed draws the split, the initial weights and the "
            "bad nodes' corruption)",
            f"trimmed-mean cuts floor({TRIM} x {s.nodes}) values per side per coordinate; "
            "norm-clip clips each update's step from the global model to the round's median "
            "step; nearest-median averages (by sample count) all but the floor(trim x N) "
            "updates farthest from the coordinate-wise median; median-outliers drops at most as "
            "many, only those whose distance is beyond the median distance + 3 scaled MADs; "
            "+agreement: vote_agreement "
            "on (outlier mask voters down-weighted)",
        ]


DEFAULT_PARTITION = "dirichlet:1.0"


def full_profile(seeds: Sequence[int], partition: str = DEFAULT_PARTITION,
                 rules: Sequence[str] = tuple(RULES)) -> Profile:
    # Dirichlet alpha 1.0: every node holds most classes in uneven shares, so honest
    # updates disagree as on a real fleet, yet not so much (alpha 0.5 leaves nodes with
    # two or three classes) that an honest minority-class node is indistinguishable from
    # a bad one, which no aggregation rule can tell apart from its values alone.
    settings = ExperimentSettings(
        nodes=10, partition=partition, mask_rounds=3, train_rounds=6,
        granularity="filter", train_limit=8000, test_limit=5000, local_epochs=1,
        batch_size=32, lr=0.05, momentum=0.9, eval_every_round=False,
    )
    return Profile("full", "fashion-mnist", "lenet5", settings, (3, 7), 0.5, tuple(seeds),
                   rules=tuple(dict.fromkeys(["fedavg", *rules])))


def quick_profile() -> Profile:
    settings = ExperimentSettings(
        nodes=10, partition="iid", mask_rounds=1, train_rounds=1, granularity="filter",
        train_limit=600, test_limit=200, local_epochs=1, batch_size=32, lr=0.05,
        momentum=0.9, eval_every_round=False,
    )
    return Profile("quick", "digits", "mlp", settings, (3, 7), 0.3, (0,),
                   (("hidden", (32,)),))


@lru_cache(maxsize=8)
def _data(dataset: str, data_dir: str | None, settings: ExperimentSettings) -> ExperimentData:
    return prepare_data(dataset, data_dir, settings)


def run_one(profile: Profile, data_dir: str | None, attack: str, rule: str,
            seed: int) -> dict[str, Any]:
    """One federation; its final accuracy and time."""
    import torch

    torch.set_num_threads(1)  # one thread per worker: steady on a shared machine
    bad = profile.bad_nodes
    settings = replace(
        profile.settings, seed=seed,
        noise_nodes=bad if attack == "noise" else (),
        permuted_nodes=bad if attack == "permuted" else (),
    )
    data = _data(profile.dataset, data_dir, settings)
    aggregator, agreement = RULES[rule]
    # The experiments' config (fp32 values averaged as they are: the rules are compared
    # on exact values), with the rule under test.
    cfg = replace(
        federation_config("robust", profile.model,
                          {**data.model_args, **dict(profile.model_args)},
                          profile.final_sparsity, settings),
        aggregator=aggregator, vote_agreement=agreement, trim=TRIM,
    ).validate()
    node_data = data.node_data
    if attack == WITHOUT_BAD:
        node_data = [d for i, d in enumerate(node_data) if i not in bad]
        cfg = replace(cfg, min_nodes=len(node_data), quorum=len(node_data)).validate()
    corrupt = {} if attack in ("clean", WITHOUT_BAD, *DATA_ATTACKS) else dict.fromkeys(
        bad, attack)
    start = time.perf_counter()
    evaluate = dataset_evaluator(cfg.model_spec, data.test)
    out: dict[str, Any] = {"attack": attack, "rule": rule, "seed": seed}
    try:
        server = run_in_process(cfg, node_data, None, corrupt=corrupt)
    except FederationError as exc:
        # The attack won: e.g. x100 values drove the average (and then every honest
        # node) to NaN, whose uploads the coordinator drops, so the round never closes.
        return {**out, "accuracy": None, "failed": str(exc),
                "seconds": time.perf_counter() - start}
    loss, accuracy = evaluate(server.final_state())
    return {**out, "accuracy": accuracy, "loss": loss if np.isfinite(loss) else None,
            "sparsity": server.sparsity(), "seconds": time.perf_counter() - start}


def run_order(seeds: Sequence[int], rules: Sequence[str] = tuple(RULES)
              ) -> list[tuple[str, str, int]]:
    """Every (attack, rule, seed), those that carry the verdict first: the reference
    (clean fedavg) and the CANDIDATES under every attack, then what each attack does to
    fedavg, then the other rules. Each (attack, rule) runs over every seed before the next, so a
    sweep stopped early leaves whole cells."""
    pairs = [("clean", "fedavg"), (WITHOUT_BAD, "fedavg"),
             *((a, r) for r in CANDIDATES for a in ATTACKS),
             *((a, "fedavg") for a in ATTACKS)]
    pairs += [(a, r) for r in RULES for a in ATTACKS if (a, r) not in pairs]
    return [(a, r, s) for a, r in dict.fromkeys(pairs) if r in rules for s in seeds]


def logged_runs(log: Path) -> list[dict[str, Any]]:
    """The runs already in ``log`` (one JSON object a line); none if there is no log."""
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def run_all(profile: Profile, data_dir: str | None, jobs: int, log: Path | None = None,
            done_before: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Every run not in ``done_before``; each result is appended to ``log`` as it arrives."""
    have = {(r["attack"], r["rule"], r["seed"]) for r in done_before}
    every = run_order(profile.seeds, profile.rules)
    todo = [t for t in every if t not in have]
    out: list[dict[str, Any]] = [r for r in done_before
                                 if (r["attack"], r["rule"], r["seed"]) in set(every)]

    def done(result: dict[str, Any]) -> None:
        out.append(result)
        if log is not None:
            with log.open("a") as f:
                f.write(json.dumps(result) + "\n")
        acc = "failed" if result["accuracy"] is None else f"{result['accuracy']:.4f}"
        print(f"[{len(out)}/{len(every)}] {result['attack']:<11} {result['rule']:<20} seed "
              f"{result['seed']}: {acc} ({result['seconds']:.0f} s)", flush=True)

    if jobs <= 1:
        for t in todo:
            done(run_one(profile, data_dir, *t))
        return out
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(run_one, profile, data_dir, *t) for t in todo]:
            done(future.result())
    return out


Cell = tuple[float, float] | None  # (mean, standard deviation) of the accuracy


def summarize(runs: list[dict[str, Any]], seeds: Sequence[int]
              ) -> dict[str, dict[str, Cell]]:
    """Mean and spread of the accuracy by attack and rule over ``seeds``; a failed run
    counts as 0 (None: every seed failed). A cell missing a seed is left out."""
    table: dict[str, dict[str, Cell]] = {}
    for attack in (*ATTACKS, WITHOUT_BAD):
        table[attack] = {}
        for rule in RULES:
            by_seed = {r["seed"]: r["accuracy"] for r in runs
                       if r["attack"] == attack and r["rule"] == rule}
            if not set(seeds) <= set(by_seed):
                continue
            accs = [by_seed[s] for s in seeds]
            scored = np.array([0.0 if a is None else a for a in accs])
            if all(a is None for a in accs):
                table[attack][rule] = None
            else:
                spread = float(scored.std(ddof=1)) if len(scored) > 1 else 0.0
                table[attack][rule] = (float(scored.mean()), spread)
    return table


def _mean(cell: Cell) -> float:
    return 0.0 if cell is None else cell[0]


def _cell(row: dict[str, Cell], rule: str) -> str:
    if rule not in row:
        return "n/r"
    cell = row[rule]
    return "failed" if cell is None else f"{100 * cell[0]:.1f} ± {100 * cell[1]:.1f}"


def markdown(profile: Profile, table: dict[str, dict[str, Cell]], command: str,
             elapsed: float, jobs: int) -> str:
    reference = _mean(table["clean"].get("fedavg"))
    rules = [r for r in RULES if r in profile.rules]
    floor = table[WITHOUT_BAD].get("fedavg")
    head = ("| bad nodes | " + " | ".join(rules)
            + " | best rule | drop (pt) | <= 1 pt | above the floor (pt) |")
    rows = [head, "|" + "---|" * (len(rules) + 5)]
    worst: dict[str, float | None] = dict.fromkeys(rules, -math.inf)
    for attack in ATTACKS:
        accs = table[attack]
        done = [r for r in rules if r in accs]
        cells = " | ".join(_cell(accs, r) for r in rules)
        if done:
            best = max(done, key=lambda r: _mean(accs[r]))
            drop = 100 * (reference - _mean(accs[best]))
            verdict = "-" if attack == "clean" else ("yes" if drop <= 1.0 else "no")
            above = "" if floor is None or attack == "clean" else (
                f"{100 * (_mean(accs[best]) - floor[0]):+.1f}")
            rows.append(f"| {attack} | {cells} | {best} | {drop:+.1f} | {verdict} | {above} |")
        else:
            rows.append(f"| {attack} | {cells} | n/r | | | |")
        if attack != "clean":
            for r in rules:
                w = worst[r]
                worst[r] = None if w is None or r not in accs else max(
                    w, 100 * (reference - _mean(accs[r])))
    rows.append("| worst drop (pt) | " + " | ".join(
        "n/r" if worst[r] is None else f"{worst[r]:+.1f}" for r in rules) + " | | | | |")
    missing = any(r not in table[a] for a in ATTACKS for r in rules)
    complete = {r: w for r, w in worst.items() if w is not None}
    one_rule = min(complete, key=lambda r: complete[r]) if complete else None
    verdict_line = ("No rule was run under every attack." if one_rule is None else
                    f"One rule for every attack: **{one_rule}** (worst drop "
                    f"{complete[one_rule]:+.1f} pt"
                    + (", among the rules run under every attack)." if missing else ")."))
    bad = len(profile.bad_nodes)
    floor_line = ("" if floor is None else
                  f"The floor: FedAvg of the {profile.settings.nodes - bad} honest nodes "
                  f"alone (the {bad} bad ones left out, as a perfect filter would) reaches "
                  f"{_cell(table[WITHOUT_BAD], 'fedavg')}%, a drop of "
                  f"{100 * (reference - floor[0]):+.1f} pt: the bad nodes' share of the data "
                  "goes with them, so a rule that drops them cannot do better. Above the "
                  "floor: the best rule's mean accuracy minus the floor's.")
    seeds = (f"mean ± standard deviation over {len(profile.seeds)} seeds"
             if len(profile.seeds) > 1
             else "ONE seed only (no spread measured: differences under ~1 pt are noise)")
    return "\n".join([
        f"Command: `{command}` ({elapsed / 60:.1f} min wall on {os.cpu_count()} shared "
        f"cores, {jobs} worker process(es), one torch thread each)",
        "",
        "Settings:",
        "",
        *[f"- {n}" for n in profile.notes()],
        "",
        f"Final test accuracy (%), {seeds}. Drop: the clean fedavg run "
        f"({100 * reference:.1f}%) minus the best rule's mean accuracy under that attack "
        "(negative: better than clean); worst drop: a rule's largest drop over the five "
        "attacks. failed: the run never finished (the attack drove the model to NaN, whose "
        "uploads are dropped, so a round never closed); a failed seed counts as 0."
        + (" n/r: not run (the sweep runs the reference and "
           f"{' and '.join(CANDIDATES)} first and was stopped before these)." if missing else ""),
        "",
        *rows,
        "",
        verdict_line,
        *(["", floor_line] if floor_line else []),
        "",
        "What each attack costs each rule: the rule's clean accuracy minus its accuracy "
        "under the attack (pt, means over the same seeds), so a rule's own cost on clean "
        "data is left out:",
        "",
        *own_clean_rows(table, rules),
    ])


def own_clean_rows(table: dict[str, dict[str, Cell]], rules: list[str]) -> list[str]:
    rows = ["| bad nodes | " + " | ".join(rules) + " |", "|" + "---|" * (len(rules) + 1)]
    for attack in ATTACKS[1:]:
        cells = ["n/r" if r not in table[attack] or r not in table["clean"] else
                 f"{100 * (_mean(table['clean'][r]) - _mean(table[attack][r])):+.1f}"
                 for r in rules]
        rows.append(f"| {attack} | " + " | ".join(cells) + " |")
    return rows


def write_benchmarks_md(text: str, path: Path = BENCHMARKS_MD) -> None:
    """Put ``text`` between the markers of BENCHMARKS.md (a new section the first time)."""
    current = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current and END in current:
        before, rest = current.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        path.write_text(before + block + after)
    else:
        section = "\n## Robustness: 2 bad nodes of 10, each rule against each attack\n\n"
        path.write_text(current.rstrip("\n") + "\n" + section + block + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MPFL_DATA_DIR"),
                        help="directory holding fashion-mnist/ (default: $MPFL_DATA_DIR)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run on digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--partition", default=DEFAULT_PARTITION,
                        help="how the training set is split over the nodes (iid, "
                             "dirichlet:ALPHA); another split than the default writes to "
                             "benchmarks/results/robust-SPLIT and leaves BENCHMARKS.md alone")
    parser.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES),
                        help="the rules to run (fedavg, the reference, always runs)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in robust_runs.jsonl; run only the rest")
    parser.add_argument("--report-only", action="store_true",
                        help="write the tables from robust_runs.jsonl, running nothing")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default: benchmarks/results, "
                             "benchmarks/results/quick with --quick)")
    args = parser.parse_args(argv)
    if not args.quick and not args.data_dir:
        parser.error("give --data-dir or set MPFL_DATA_DIR")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    profile = quick_profile() if args.quick else full_profile(args.seeds, args.partition,
                                                              args.rules)
    own_split = args.partition != DEFAULT_PARTITION
    out_dir: Path = args.out or (
        RESULTS_DIR / "quick" if args.quick else
        RESULTS_DIR / f"robust-{args.partition.replace(':', '')}" if own_split else RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    given = list(sys.argv[1:] if argv is None else argv)
    # The dataset folder as a placeholder: the command is for anyone to rerun.
    env = "" if args.quick or any(a.startswith("--data-dir") for a in given) else (
        "MPFL_DATA_DIR=/path/to/datasets ")
    command = env + ".venv/bin/python benchmarks/bench_robust.py" + "".join(
        f" {shlex.quote(a)}" for a in given if a not in ("--resume", "--report-only"))
    start = time.perf_counter()
    log = out_dir / "robust_runs.jsonl"
    resume = args.resume or args.report_only
    done_before = logged_runs(log) if resume else []
    if not resume:
        log.unlink(missing_ok=True)
    if args.report_only:
        wanted = set(run_order(profile.seeds, profile.rules))
        runs = [r for r in done_before if (r["attack"], r["rule"], r["seed"]) in wanted]
    else:
        runs = run_all(profile, None if args.quick else args.data_dir, args.jobs, log,
                       done_before)
    elapsed = time.perf_counter() - start
    table = summarize(runs, profile.seeds)
    if resume:  # this invocation's wall time, plus the logged runs' share of theirs
        elapsed += sum(r["seconds"] for r in done_before) / max(1, args.jobs)
    text = markdown(profile, table, command, elapsed, args.jobs)
    doc = {"profile": profile.name, "command": command, "elapsed_seconds": elapsed,
           "notes": profile.notes(), "settings": asdict(profile.settings),
           "bad_nodes": list(profile.bad_nodes), "seeds": list(profile.seeds),
           "accuracy": {attack: {rule: None if cell is None else
                                 {"mean": cell[0], "sd": cell[1]}
                                 for rule, cell in row.items()}
                        for attack, row in table.items()},
           "runs": runs}
    (out_dir / "robust.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out_dir / "robust.md").write_text(text + "\n")
    if not args.quick and args.out is None and not own_split:
        write_benchmarks_md(text)
    print("\n" + text, flush=True)
    return doc


if __name__ == "__main__":
    main()
