"""The tables and plots of bench_learning.py, made from finished experiment results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from learning_plan import Profile

from apps.experiments import ExperimentResult

MB = 1_000_000


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
