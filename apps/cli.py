"""``mpfl``: the umbrella command (demo, simulate, report, models); parses, then calls."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from mpfl.choices import LogFormat
from mpfl.config.flags import config_options, pop_config_overrides
from mpfl.errors import ConfigError, reports_errors
from mpfl.logs import logging_options, pop_logging_options, setup_logging, wants_live_view

log = logging.getLogger("apps.cli")


@click.group(context_settings={"show_default": True})
def main() -> None:
    """Masked Pruning Federated Learning for edge fleets."""


@main.command()
@reports_errors
def models() -> None:
    """List the model zoo with parameter and unit counts."""
    from mpfl.ml.models import PRESETS, ZOO, ModelSpec, build_model, parameter_count
    from mpfl.ml.units import build_unit_map

    click.echo(f"{'model':<10} {'parameters':>11} {'filter units':>13} {'weight units':>13}")
    for name in [*ZOO, *PRESETS]:
        spec = ModelSpec(name)
        model = build_model(spec, seed=0)
        units = [build_unit_map(model, spec, g).n_units for g in ("filter", "weight")]
        click.echo(f"{name:<10} {parameter_count(model):>11,} {units[0]:>13,} {units[1]:>13,}")


def _print_partition(dataset: str, data_dir: str | None, nodes: int, scheme: str, seed: int,
                     limit: int | None) -> None:
    from apps.demo import partition_lines
    from mpfl.maths.partition import partition
    from mpfl.ml.data import load_labels

    labels = load_labels(dataset, data_dir, "train")
    parts = partition(labels, nodes, scheme, seed)
    if limit is not None:
        parts = [p[:limit] for p in parts]
    log.info(f"{dataset}, {scheme} over {nodes} nodes (samples per label 0..9):")
    for line in partition_lines(labels, parts, int(labels.max()) + 1):
        log.info(line)


def _check_model_fits(cfg: Any, dataset: str, data_dir: str | None) -> None:
    """ModelError before any process starts if the model cannot take the dataset's images:
    every node would refuse it, and the coordinator would wait out its deadlines."""
    import numpy as np

    from mpfl.ml.data import load_dataset
    from mpfl.ml.models import build_model
    from mpfl.ml.train import check_fits

    sample = load_dataset(dataset, data_dir, "train", select=lambda labels: np.arange(1))
    check_fits(build_model(cfg.model_spec), sample, model_name=cfg.model, dataset=dataset)


def _print_table(run_dir: Path) -> None:
    from apps.demo import HEADER, format_round, totals_line
    from mpfl.federation.metrics import read_metrics

    if not (run_dir / "metrics.jsonl").is_file():
        return  # no round closed
    logs = read_metrics(run_dir)
    if not logs:
        return
    log.info(HEADER)
    for record in logs:
        log.info(format_round(record))
    log.info(f"{totals_line(logs)}; run directory {run_dir}")
    log.info(f"plots and a summary of this run: mpfl report {run_dir}")


def _simulate(
    nodes: int, dataset: str, data_dir: str | None, scheme: str, limit: int | None,
    config_path: str | None, overrides: dict[str, Any], run_dir: str | None,
    broker: str | None, threads: int, evaluate: bool,
    hardware: str | None = None, links: tuple[str, ...] = (),
    corrupt: dict[int, str] | None = None,
    log_format: LogFormat = LogFormat.TEXT, verbosity: int = 0,
    metrics_port: int | None = None,
) -> Path:
    import time

    from apps.demo import DEMO_CONFIG
    from apps.launcher import SimulationPlan, run_simulation
    from mpfl.config.settings import load_config
    from mpfl.errors import FederationError

    base: dict[str, Any] = {"min_nodes": nodes, "quorum": max(1, nodes - 1)}
    if config_path is None and dataset == "digits":
        base = {**DEMO_CONFIG.to_dict(), **base}
    cfg = load_config(config_path, {**base, **overrides})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(run_dir or Path("runs") / f"{cfg.federation}-{stamp}")
    _print_partition(dataset, data_dir, nodes, scheme, cfg.seed, limit)
    _check_model_fits(cfg, dataset, data_dir)
    plan = SimulationPlan(cfg, nodes, dataset, path, data_dir, scheme, cfg.seed, limit, broker,
                          threads, dataset if evaluate else None, corrupt=corrupt or {},
                          verbosity=verbosity, metrics_port=metrics_port)
    for index, kind in sorted((corrupt or {}).items()):
        log.info(f"  node-{index} trains on {kind}")
    code = run_simulation(plan, live=wants_live_view(log_format, verbosity))
    _print_table(path)
    if code != 0:
        failed = FederationError(f"the coordinator exited with code {code}; its log: "
                                 f"{plan.coordinator_log}")
        failed.exit_code = code  # its own error (said above) decides what this one means
        raise failed
    if hardware is not None or links:
        from apps.plan import plan_from_run_dir
        from hardware import get_profile

        profile = get_profile(hardware) if hardware is not None else None
        log.info(plan_from_run_dir(path, list(links), profile))
    return path


@main.command()
@click.option("--nodes", default=4, show_default=True, help="Edge processes to start.")
@click.option("--dataset", default="digits", show_default=True,
              help="digits (bundled), mnist, fashion-mnist, cifar10 or npz.")
@click.option("--data-dir", envvar="MPFL_DATA_DIR", default=None, help="Env MPFL_DATA_DIR.")
@click.option("--partition-scheme", default="dirichlet:0.5", show_default=True,
              help="iid, dirichlet:ALPHA or shards:K.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most this many samples per node.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Federation TOML (without it, digits uses the demo's settings).")
@click.option("--run-dir", default=None, help="[default: runs/<federation>-<time>]")
@click.option("--broker", default=None, metavar="URL",
              help="Use this broker instead of the coordinator's embedded one.")
@click.option("--threads", default=1, show_default=True, help="torch threads per node.")
@click.option("--eval/--no-eval", "evaluate", default=True, show_default=True,
              help="Evaluate the global model on the dataset's test split.")
@click.option("--hardware", default=None, metavar="PROFILE",
              help="Plan for this device profile (see `mpfl hardware list`).")
@click.option("--link", "links", multiple=True, metavar="LINK",
              help="Estimate wall-clock on this link (repeat for a per-node mix), "
                   "MPFL against dense FedAvg.")
@click.option("--noise-nodes", type=click.IntRange(min=0), default=0, show_default=True,
              help="The first K nodes train on pixel-shuffled noise (robustness check).")
@click.option("--permuted-nodes", type=click.IntRange(min=0), default=0, show_default=True,
              help="The next K nodes train with permuted labels (robustness check).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="The coordinator serves Prometheus metrics on this port.  [default: off]")
@logging_options
@config_options(skip=("eval_dataset", "eval_data_dir"))
@reports_errors
def simulate(**kwargs: Any) -> None:
    """A federation as real processes: embedded broker, a coordinator, N edge nodes.

    In a terminal the coordinator's live view is drawn (rounds, nodes and their local
    epochs, bytes against dense FedAvg); otherwise one line per event."""
    log_format, verbosity = pop_logging_options(kwargs)
    setup_logging(log_format, verbosity)
    overrides = pop_config_overrides(kwargs)
    _simulate(kwargs["nodes"], kwargs["dataset"], kwargs["data_dir"], kwargs["partition_scheme"],
              kwargs["limit"], kwargs["config_path"], overrides,
              kwargs["run_dir"], kwargs["broker"], kwargs["threads"],
              kwargs["evaluate"], kwargs["hardware"], tuple(kwargs["links"]),
              _faulty_nodes(kwargs["nodes"], kwargs["noise_nodes"], kwargs["permuted_nodes"]),
              log_format, verbosity, kwargs["metrics_port"])


def _faulty_nodes(nodes: int, noise: int, permuted: int) -> dict[int, str]:
    if noise + permuted > nodes:
        raise ConfigError("more faulty nodes than nodes", nodes=nodes, faulty=noise + permuted)
    kinds = ["noise"] * noise + ["permuted-labels"] * permuted
    return dict(enumerate(kinds))


@main.command()
@click.option("--nodes", default=4, show_default=True, help="Edge nodes to simulate.")
@click.option("--rounds", default=(3, 8), type=(int, int), show_default=True,
              help="Mask rounds, then training rounds.")
@click.option("--run-dir", default=None, help="[default: runs/demo-<time>]")
@click.option("--in-process", is_flag=True,
              help="Run everything in this process over an in-memory broker (no MQTT).")
@logging_options
@reports_errors
def demo(nodes: int, rounds: tuple[int, int], run_dir: str | None, in_process: bool,
         **logging_flags: Any) -> None:
    """A whole MPFL run on the bundled 8x8 digits, through an embedded MQTT broker."""
    log_format, verbosity = pop_logging_options(logging_flags)
    setup_logging(log_format, verbosity)
    if in_process:
        from apps.demo import run_demo

        run_demo(nodes=nodes, mask_rounds=rounds[0], train_rounds=rounds[1],
                 live=wants_live_view(log_format, verbosity))
        return
    overrides = {"mask_rounds": rounds[0], "train_rounds": rounds[1]}
    path = _simulate(nodes, "digits", None, "dirichlet:0.5", None, None, overrides, run_dir,
                     None, 1, True, log_format=log_format, verbosity=verbosity)
    from apps.demo import export_demo_model

    export_demo_model(path)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(path_type=Path), default=None, metavar="RUN_DIR",
              help="A dense FedAvg run (or any run) to draw beside this one, measured.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write report.md and the plots.  [default: RUN_DIR/report]")
@reports_errors
def report(run_dir: Path, baseline: Path | None, out: Path | None) -> None:
    """Plots and a markdown summary of a run directory: accuracy, uplink against dense
    FedAvg, the final mask per layer, nodes, export."""
    from apps.report import write_report

    written = write_report(run_dir, out, baseline)
    if written.plots_note:
        click.echo(written.plots_note)
    for image in written.images:
        click.echo(f"wrote {image}")
    click.echo(f"wrote {written.markdown}")


@main.group("config")
def config_group() -> None:
    """The federation configuration: defaults, TOML file, MPFL_* environment, flags."""


@config_group.command("show")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Federation TOML file, as given to mpfl-coordinator run.")
@config_options()
@reports_errors
def config_show(**kwargs: Any) -> None:
    """Print each key's effective value and where it came from (default, file, env, flag).

    Takes the same --config, MPFL_* variables and key flags as `mpfl-coordinator run`, so
    it shows what a coordinator started the same way would use."""
    import json

    from mpfl.config.settings import load_config_with_sources

    overrides = pop_config_overrides(kwargs)
    cfg, sources = load_config_with_sources(kwargs["config_path"], overrides)
    rows = []
    for key, value in cfg.to_dict().items():
        text = json.dumps(value, sort_keys=True)  # as TOML spells it: "lenet5", 0.5, true
        rows.append((key, text, str(sources[key])))
    widths = [max(len(row[i]) for row in [("KEY", "VALUE", "SOURCE"), *rows]) for i in (0, 1)]
    for key, text, source in [("KEY", "VALUE", "SOURCE"), *rows]:
        click.echo(f"{key:<{widths[0]}}  {text:<{widths[1]}}  {source}")


@main.group("data")
def data_group() -> None:
    """Prepare datasets for a fleet."""


@data_group.command("split")
@click.option("--dataset", required=True, help="mnist, fashion-mnist, cifar10, digits or npz.")
@click.option("--data-dir", envvar="MPFL_DATA_DIR", default=None, help="Env MPFL_DATA_DIR.")
@click.option("--nodes", required=True, metavar="ID,ID,...",
              help="The node ids, in partition order (node i takes share i/N).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Writes OUT/<node id>/train.npz.")
@click.option("--partition-scheme", default="iid", show_default=True,
              help="iid, dirichlet:ALPHA or shards:K.")
@click.option("--seed", default=0, show_default=True, help="Partition seed.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most this many samples per node.")
@reports_errors
def data_split(dataset: str, data_dir: str | None, nodes: str, out: Path,
               partition_scheme: str, seed: int, limit: int | None) -> None:
    """Each node's share of a dataset, normalised, as the train.npz `mpfl-edge start
    --dataset npz --data-dir DIR` reads."""
    from apps.datasplit import split_for_nodes

    ids = [n.strip() for n in nodes.split(",") if n.strip()]
    written = split_for_nodes(dataset, data_dir, ids, out, scheme=partition_scheme, seed=seed,
                              limit=limit)
    for node_id, path in written.items():
        click.echo(f"{node_id}: {path}")


def _add_hardware_commands() -> None:
    from hardware.cli import hardware_group

    main.add_command(hardware_group)


_add_hardware_commands()

if __name__ == "__main__":
    main(prog_name="mpfl")
