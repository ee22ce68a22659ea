"""``mpfl``: the umbrella command (demo, models). Only parses and calls library code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from mpfl.errors import MpflError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Turn an MpflError into one line on stderr and its exit code: no traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MpflError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


@click.group()
def main() -> None:
    """Masked Pruning Federated Learning for edge fleets."""


@main.command()
@reports_errors
def models() -> None:
    """List the model zoo with parameter and unit counts."""
    from mpfl.models import PRESETS, ZOO, ModelSpec, build_model, parameter_count
    from mpfl.units import build_unit_map

    click.echo(f"{'model':<10} {'parameters':>11} {'filter units':>13} {'weight units':>13}")
    for name in [*ZOO, *PRESETS]:
        spec = ModelSpec(name)
        model = build_model(spec, seed=0)
        units = [build_unit_map(model, spec, g).n_units for g in ("filter", "weight")]
        click.echo(f"{name:<10} {parameter_count(model):>11,} {units[0]:>13,} {units[1]:>13,}")


@main.command()
@click.option("--nodes", default=4, show_default=True, help="Edge nodes to simulate.")
@click.option("--rounds", default=(3, 8), type=(int, int), show_default=True,
              help="Mask rounds, then training rounds.")
@reports_errors
def demo(nodes: int, rounds: tuple[int, int]) -> None:
    """A whole MPFL run on the bundled 8x8 digits: masks by vote, then masked training."""
    from mpfl.demo import run_demo

    run_demo(nodes=nodes, mask_rounds=rounds[0], train_rounds=rounds[1], echo=click.echo)


if __name__ == "__main__":
    main()
