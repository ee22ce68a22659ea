"""The report's PNG figures, drawn headless (Agg) from ``apps.report.series`` only.

matplotlib is an optional extra (``pip install 'mpfl[report]'``): ``figures`` raises
``PlotsUnavailable`` without it and the report is written without pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from apps.report import series as S
from apps.report.rundir import RunRecord
from mpfl.choices import Mode, Phase

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'mpfl[report]'"
DPI = 110
# One colour per role, the same in every figure.
MPFL_COLOUR, DENSE_COLOUR, BASELINE_COLOUR = "tab:blue", "tab:grey", "tab:orange"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(f"plots need matplotlib: {INSTALL_HINT}") from None
    matplotlib.use("Agg")  # no display on a gateway or in CI
    import matplotlib.pyplot as plt

    return plt


def _line(ax: Axes, series: S.Series, colour: str, style: str = "-o") -> None:
    ax.plot(series.x, series.y, style, color=colour, markersize=4, label=series.label)


def _phase_band(ax: Axes, run: RunRecord, why: str = "") -> None:
    """Shade the mask rounds, so a curve that starts late or a step in it is explained."""
    from matplotlib.ticker import MaxNLocator

    mask_rounds = [r.round for r in run.rounds if r.phase == Phase.MASK]
    if mask_rounds:
        ax.axvspan(min(mask_rounds) - 0.5, max(mask_rounds) + 0.5, color="tab:green",
                   alpha=0.08, label="mask rounds" + why)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def accuracy_figure(run: RunRecord, baseline: RunRecord | None) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    rewind = run.config.mode == Mode.REWIND
    _phase_band(ax, run, " (rewind: no global model to evaluate)" if rewind else "")
    _line(ax, S.accuracy_per_round(run, f"MPFL ({run.name})"), MPFL_COLOUR)
    if baseline is not None:
        _line(ax, S.accuracy_per_round(baseline, _baseline_label(baseline)), BASELINE_COLOUR,
              "--s")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy per round: {_model_line(run)}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def uplink_figure(run: RunRecord, baseline: RunRecord | None) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    _line(ax, S.accuracy_against_uplink(run, f"MPFL ({run.name}, measured)"), MPFL_COLOUR)
    if baseline is not None:
        _line(ax, S.accuracy_against_uplink(baseline, _baseline_label(baseline)),
              BASELINE_COLOUR, "--s")
    else:
        _line(ax, S.dense_equivalent(run), DENSE_COLOUR, ":^")
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("cumulative uplink, all nodes (MB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    sent = sum(r.uplink_bytes for r in run.rounds)
    if baseline is not None:
        ratio = sum(r.uplink_bytes for r in baseline.rounds) / sent if sent else None
        against = f"{baseline.name} (measured)"
    else:
        ratio, against = S.savings(run), "the same rounds sent dense"
    if ratio is None:
        title = "Accuracy against uplink"
    elif ratio >= 1.05:
        title = f"Accuracy against uplink: {ratio:.1f}x less than {against}"
    else:
        title = f"Accuracy against uplink: no saving against {against}"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sparsity_figure(run: RunRecord) -> Figure:
    plt = _pyplot()
    layers = run.layers
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.45 * max(1, len(layers))))
    names = [f"{layer.tensor} ({layer.units:,} units)" for layer in layers]
    values = [100 * layer.sparsity for layer in layers]
    bars = ax.barh(names, values, color=MPFL_COLOUR)
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in values], label_type="center",
                 color="white", fontsize=8)
    target = 100 * run.config.final_sparsity
    ax.axvline(target, color="black", linestyle="--", linewidth=1)
    ax.invert_yaxis()  # layers top to bottom in model order
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"units pruned (%, {run.config.granularity} granularity; "
                  f"dashed: target {target:.0f}%)")
    ax.set_title(f"Final mask per layer ({run.mask_source})")
    fig.tight_layout()
    return fig


def nodes_figure(run: RunRecord) -> Figure:
    plt = _pyplot()
    totals = S.node_totals(run.rounds, run.node_reports, run.known_nodes)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 0.9 + 0.4 * max(2, len(totals))),
                                      sharey=True)
    names = [t.node for t in totals]
    answered = left.barh(names, [t.rounds_answered for t in totals], color=MPFL_COLOUR)
    left.bar_label(answered, label_type="center", color="white", fontsize=8)
    left.axvline(len(run.rounds), color="black", linestyle="--", linewidth=1)
    left.set_xlabel(f"rounds answered in time (dashed: {len(run.rounds)} closed)")
    left.invert_yaxis()
    sent = right.barh(names, [t.reported_upload_bytes / 1e3 for t in totals], color=MPFL_COLOUR)
    right.bar_label(sent, fmt="%.1f", label_type="center", color="white", fontsize=8)
    right.set_xlabel("uplink reported by the node (kB)")
    fig.suptitle("Participation and bytes per node")
    fig.tight_layout()
    return fig


def bits_figure(run: RunRecord) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    _phase_band(ax, run)
    bits = S.bits_per_parameter(run.rounds, run.parameters)
    bars = ax.bar(bits.x, bits.y, color=MPFL_COLOUR, label=bits.label)
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(32, color=DENSE_COLOUR, linestyle=":", label="dense fp32 (32 bits)")
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("round")
    ax.set_ylabel("uplink bits per parameter (log scale)")
    ax.set_title(f"Uplink per node-round: {_model_line(run)}")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figures(run: RunRecord, baseline: RunRecord | None) -> dict[str, Figure]:
    """Every figure by file name; the ones the run has no data for are left out."""
    out = {"accuracy.png": accuracy_figure(run, baseline),
           "accuracy_vs_uplink.png": uplink_figure(run, baseline),
           "uplink_bits.png": bits_figure(run),
           "nodes.png": nodes_figure(run)}
    if run.layers:
        out["layer_sparsity.png"] = sparsity_figure(run)
    return out


def save(figs: dict[str, Figure], out_dir: Path) -> list[Path]:
    plt = _pyplot()
    paths = []
    for name, fig in figs.items():
        fig.savefig(out_dir / name, dpi=DPI)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths


def _baseline_label(baseline: RunRecord) -> str:
    kind = "dense FedAvg" if baseline.is_dense else "baseline"
    return f"{kind} ({baseline.name}, measured)"


def _model_line(run: RunRecord) -> str:
    nodes = max((len(r.participants) for r in run.rounds), default=0)
    return f"{run.config.model}, {nodes} nodes"

