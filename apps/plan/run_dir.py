"""A finished run directory in, the printed plan out (``mpfl simulate --link``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from apps.plan.compute import largest_node_samples, train_flops_per_sample
from apps.plan.rounds import node_train_seconds, rounds_from_metrics
from apps.plan.text import format_plan
from apps.plan.timing import compare
from apps.plan.units import format_duration
from hardware import Profile, get_link, get_profile
from mpfl.errors import ConfigError, MpflError
from mpfl.wire.specs import ModelSpec


def _configured_epochs(run_dir: Path) -> int:
    """``local_epochs`` from the run's config.json, or 1."""
    try:
        doc = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 1
    epochs = doc.get("local_epochs") if isinstance(doc, dict) else None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else 1


def _configured_model(run_dir: Path) -> ModelSpec | None:
    try:
        doc = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        return ModelSpec.from_dict({"name": doc["model"], "args": doc.get("model_args", {})})
    except (OSError, ValueError, KeyError, TypeError, MpflError):
        return None


def _declared_train_seconds(
    run_dir: Path, profile: Profile, local_epochs: int
) -> tuple[float, str] | None:
    """Training seconds per round on ``profile`` from its declared throughput, and the
    note that says so; None when the profile declares none or the run lacks the figures."""
    spec = _configured_model(run_dir)
    samples = largest_node_samples(run_dir)
    if profile.train_gflops is None or spec is None or samples is None:
        return None
    flops = train_flops_per_sample(spec)
    seconds = flops * samples * local_epochs / (profile.train_gflops * 1e9)
    note = (
        f"{format_duration(seconds)} per round per node on {profile.label}, from its declared "
        f"{profile.train_gflops:g} GFLOP/s (an estimate in hardware/profiles.toml, not this "
        f"host's time): {flops / 1e6:.2f} MFLOP per sample x {samples:,} samples (the largest "
        f"node) x {local_epochs} epoch(s)"
    )
    return seconds, note


def plan_from_run_dir(
    run_dir: str | Path,
    link_names: Sequence[str],
    profile: Profile | str | None = None,
    *,
    seconds_per_epoch: float | None = None,
    local_epochs: int | None = None,
    target_accuracy: float | None = None,
    per_round: bool = False,
    nodes_train_sequentially: bool = True,
) -> str:
    """The formatted comparison for a finished run directory (``mpfl simulate --link``).

    ``link_names`` are assigned to nodes in turn (one name: the whole fleet); without any,
    the profile's default link is used. ``seconds_per_epoch`` (measured on the board, e.g.
    by benchmarks/bench_edge.py) replaces the training time the run measured on this host;
    without it, a profile that declares ``train_gflops`` gives the training time, and only
    then the run's own times on this host are used; every case says which.
    ``local_epochs`` defaults to the run's ``config.json`` (1 if it has none).
    """
    chosen = get_profile(profile) if isinstance(profile, str) else profile
    names = list(link_names) or ([chosen.link] if chosen is not None else [])
    if not names:
        raise ConfigError("name a link (--link) or a hardware profile")
    links = [get_link(name) for name in names]
    folder = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent
    if local_epochs is None:
        local_epochs = _configured_epochs(folder)
    if local_epochs < 1:
        raise ConfigError("local epochs must be at least 1", local_epochs=local_epochs)
    rounds = rounds_from_metrics(run_dir, nodes_train_sequentially=nodes_train_sequentially)
    train_seconds = None if seconds_per_epoch is None else seconds_per_epoch * local_epochs
    declared = None
    if train_seconds is None and chosen is not None:
        declared = _declared_train_seconds(folder, chosen, local_epochs)
    if train_seconds is not None:
        note = (
            f"{format_duration(train_seconds)} per round per node "
            f"({local_epochs} epoch(s) x {format_duration(seconds_per_epoch or 0.0)})"
        )
    elif declared is not None:
        train_seconds, note = declared
    elif node_train_seconds(folder):
        note = "the slowest node's reported training time in each round of the run on this host"
    else:
        note = "one node's share of each round's wall time in the run on this host"
    comparison = compare(
        rounds,
        links,
        train_seconds=train_seconds,
        target_accuracy=target_accuracy,
        profile=chosen,
        compute_note=note,
    )
    return format_plan(comparison, per_round=per_round)
