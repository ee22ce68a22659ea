"""The tables and plots of bench_learning.py, made from finished experiment results."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from learning_plan import DEFAULT_LABEL, Profile, Variant

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
