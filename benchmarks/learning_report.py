"""The tables and plots of bench_learning.py, made from finished experiment results."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from learning_plan import DEFAULT_LABEL, Profile, Sweep, Variant

from apps.experiments import ExperimentResult

MB = 1_000_000


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def bits_per_param(r: ExperimentResult) -> float:
    """Uplink bits per model parameter per node-round: 32 is a dense fp32 upload."""
    return 32.0 * r.uplink_bytes / r.dense_uplink_bytes if r.dense_uplink_bytes else 0.0


def _spread(xs: Sequence[float], digits: int = 2) -> str:
    """Mean ± sample standard deviation (just the value for one seed)."""
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.fmean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


# Part (a): results by variant key, then by dataset, then by seed.
PartA = Mapping[str, Mapping[str, Mapping[int, ExperimentResult]]]


def group_part_a(results: Sequence[tuple[str, ExperimentResult]]) -> PartA:
    """``(variant key, result)`` pairs, grouped for the tables and the plot."""
    out: dict[str, dict[str, dict[int, ExperimentResult]]] = {}
    for key, r in results:
        out.setdefault(key, {}).setdefault(r.dataset, {})[r.settings.seed] = r
    return out


def table_a(grouped: PartA, profile: Profile, variants: Sequence[Variant]) -> str:
    """One row per variant and dataset: accuracy and its gap to dense FedAvg (mean ± sd
    over the seeds both ran), uplink in bit/param, total MB and its ratio to dense."""
    rows = []
    dense = grouped.get("fedavg", {})
    for dataset in profile.part_a_datasets:
        for v in variants:
            runs = grouped.get(v.key, {}).get(dataset, {})
            if not runs:
                continue
            seeds = sorted(runs)
            acc = [100 * runs[s].accuracy for s in seeds]
            paired = [s for s in seeds if s in dense.get(dataset, {})]
            gap = "-" if v.key == "fedavg" or not paired else _spread(
                [100 * (runs[s].accuracy - dense[dataset][s].accuracy) for s in paired])
            bits = statistics.fmean(bits_per_param(runs[s]) for s in seeds)
            mb = statistics.fmean(runs[s].uplink_bytes for s in seeds) / MB
            ratio = "-"
            if v.key != "fedavg" and dataset in dense:
                dense_mb = statistics.fmean(r.uplink_bytes for r in dense[dataset].values()) / MB
                ratio = f"1/{dense_mb / mb:.0f}"
            per_seed = " / ".join(f"{a:.2f}" for a in acc)
            label = v.label + (" = **default**" if v.key == profile.default
                               and v.label != DEFAULT_LABEL else "")
            rows.append([dataset, label, _spread(acc), gap, f"{bits:.3f}", f"{mb:.2f}", ratio,
                         per_seed, ",".join(map(str, seeds))])
    header = ["dataset", "method", "accuracy % (mean ± sd)", "Δ pt vs dense", "uplink bit/param",
              "uplink MB (all nodes)", "vs dense", "accuracy per seed", "seeds"]
    return _table(header, rows)


# Part (b): results by (method, target sparsity), then by seed; dense FedAvg at sparsity 0.
PartB = Mapping[tuple[str, float], Mapping[int, ExperimentResult]]


def group_part_b(results: Sequence[ExperimentResult], sweep: Sweep) -> PartB:
    """The sweep's results: its dataset's, at its number of rounds."""
    out: dict[tuple[str, float], dict[int, ExperimentResult]] = {}
    for r in results:
        if (r.dataset, r.settings.rounds) == (sweep.dataset, sweep.settings.rounds):
            out.setdefault((r.method, round(r.target_sparsity, 6)), {})[r.settings.seed] = r
    return out


def _cell(runs: Mapping[int, ExperimentResult]) -> str:
    return _spread([100 * r.accuracy for r in runs.values()]) if runs else "-"


def _gap(runs: Mapping[int, ExperimentResult], other: Mapping[int, ExperimentResult]) -> str:
    """``runs`` minus ``other`` in points, paired by seed (mean ± sd)."""
    seeds = sorted(set(runs) & set(other))
    if not seeds:
        return "-"
    return _spread([100 * (runs[s].accuracy - other[s].accuracy) for s in seeds])


def table_b(results: Sequence[ExperimentResult], profile: Profile) -> str:
    """Per sweep: each sparsity's accuracy for MPFL, FedAvg then prune and centralised
    pruning (mean ± sd over the seeds each ran), MPFL's gaps to the other two and to
    dense FedAvg (paired by seed), and MPFL's uplink; then dense FedAvg's curve."""
    blocks = []
    for sweep in profile.sweeps:
        grouped = group_part_b(results, sweep)
        if not grouped:
            continue  # not run (the time budget): the skipped jobs are listed
        dense = grouped.get(("fedavg", 0.0), {})
        rows = []
        for s in sweep.sparsities:
            mpfl, prune, central = (grouped.get((m, round(s, 6)), {})
                                    for m in ("mpfl", "fedavg-prune", "central"))
            bits = (f"{statistics.fmean(bits_per_param(r) for r in mpfl.values()):.3f}"
                    if mpfl else "-")
            rows.append([f"{s:.0%}", _cell(mpfl), _cell(prune), _gap(mpfl, prune),
                         _cell(central), _gap(mpfl, dense), bits,
                         ",".join(map(str, sorted(mpfl)))])
        title = f"{sweep.dataset} / {sweep.model}, filter masks, {sweep.settings.rounds} rounds"
        if dense:
            first = next(iter(dense.values()))
            title += (f", {first.train_samples:,} training / {first.test_samples:,} test "
                      f"images; dense FedAvg {_cell(dense)}% (seeds "
                      f"{','.join(map(str, sorted(dense)))})")
        header = ["sparsity", "MPFL %", "FedAvg then prune %", "MPFL − prune pt",
                  "centralised %", "MPFL − dense pt", "MPFL uplink bit/param", "MPFL seeds"]
        blocks.append(f"**{title}**\n\n" + _table(header, rows))
        if dense:
            blocks.append(f"**{sweep.dataset}: dense FedAvg's test accuracy % by round**\n\n"
                          + dense_curve(dense))
    return "\n\n".join(blocks)


def accuracy_by_round(r: ExperimentResult) -> dict[int, float]:
    """Test accuracy in % of each round that was evaluated."""
    return {x.round: 100 * x.accuracy for x in r.rounds if x.accuracy is not None}


def dense_curve(dense: Mapping[int, ExperimentResult], every: int = 2) -> str:
    """Dense FedAvg's accuracy every ``every`` rounds, per seed and their mean: whether it
    had stopped rising when the runs ended."""
    curves = {seed: accuracy_by_round(r) for seed, r in sorted(dense.items())}
    last = max((max(c, default=0) for c in curves.values()), default=0)
    shown = sorted({1, *range(every, last + 1, every), last}) if last else []
    rows = [[f"seed {seed}"] + [f"{c[t]:.2f}" if t in c else "-" for t in shown]
            for seed, c in curves.items()]
    if len(curves) > 1:
        rows.append(["mean"] + [
            f"{statistics.fmean(c[t] for c in curves.values()):.2f}"
            if all(t in c for c in curves.values()) else "-" for t in shown])
    return _table(["round", *map(str, shown)], rows)


# -- plots --------------------------------------------------------------------------------


def plot_uplink(grouped: PartA, profile: Profile, path: Path) -> None:
    """Final accuracy against uplink bit/param, one point per method (mean over seeds, bars
    from the lowest to the highest seed): the default and each ablation row against dense
    FedAvg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = [d for d in profile.part_a_datasets if any(d in g for g in grouped.values())]
    if not datasets:
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 6.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # a colour per row (> 10)
        for v in profile.variants:
            runs = list(grouped.get(v.key, {}).get(dataset, {}).values())
            if not runs:
                continue
            label = DEFAULT_LABEL if v.key == profile.default else v.label
            acc = np.array([100 * r.accuracy for r in runs])
            bits = float(np.mean([bits_per_param(r) for r in runs]))
            main = v.key in ("fedavg", profile.default)
            ax.errorbar([bits], [acc.mean()], yerr=[[acc.mean() - acc.min()],
                                                     [acc.max() - acc.mean()]],
                        fmt="o" if main else "s", markersize=8 if main else 5, capsize=4,
                        label=f"{label} ({len(runs)} seed(s))", zorder=3 if main else 2)
        ax.set_xscale("log")
        ax.set_xlabel("uplink, bit per parameter per node-round (log scale)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"{dataset} / LeNet-5, {profile.part_a.nodes} nodes, "
                     f"{profile.part_a.partition}, 90% weights")
        ax.grid(True, which="both", alpha=0.3)
    # One legend under both panels: inside, ten methods would cover the points.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0.0, 0.25, 1.0, 1.0))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sparsity(results: Sequence[ExperimentResult], profile: Profile, path: Path) -> None:
    """Top: accuracy against sparsity per sweep (mean over seeds, bars from the lowest to
    the highest seed). Bottom: dense FedAvg's accuracy by round, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sweeps = [(sw, group_part_b(results, sw)) for sw in profile.sweeps]
    sweeps = [(sw, grouped) for sw, grouped in sweeps if grouped]
    if not sweeps:
        return
    fig, axes = plt.subplots(2, len(sweeps), figsize=(5.5 * len(sweeps), 8), squeeze=False)
    labels = {"mpfl": "MPFL default (filter masks)", "fedavg-prune": "FedAvg then prune",
              "central": "centralised iterative pruning"}
    for col, (sweep, grouped) in enumerate(sweeps):
        ax, below = axes[0][col], axes[1][col]
        for method, style in (("mpfl", "-o"), ("fedavg-prune", "--s"), ("central", "-.^")):
            points = sorted((s, runs) for (m, s), runs in grouped.items() if m == method)
            if not points:
                continue
            x = [100 * s for s, _ in points]
            acc = [np.array([100 * r.accuracy for r in runs.values()]) for _, runs in points]
            mean = np.array([a.mean() for a in acc])
            bars = [mean - [a.min() for a in acc], [a.max() for a in acc] - mean]
            ax.errorbar(x, mean, yerr=bars, fmt=style, capsize=3, label=labels[method])
        dense = grouped.get(("fedavg", 0.0), {})
        if dense:
            ax.axhline(float(np.mean([100 * r.accuracy for r in dense.values()])),
                       color="grey", linestyle=":", label="dense FedAvg")
        for seed, r in sorted(dense.items()):
            curve = accuracy_by_round(r)
            if curve:
                below.plot(list(curve), list(curve.values()), "-", label=f"seed {seed}")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("sparsity (% of filters / neurons pruned)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"{sweep.dataset} / {sweep.model}, {sweep.settings.rounds} rounds")
        below.set_xlabel("round")
        below.set_ylabel("test accuracy (%)")
        below.set_title(f"{sweep.dataset}: dense FedAvg by round")
        for a in (ax, below):
            a.grid(True, alpha=0.3)
            if a.get_legend_handles_labels()[0]:
                a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
