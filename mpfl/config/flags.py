"""Click options for every ``FederationConfig`` key, generated from the dataclass.

``--final-sparsity 0.8`` sets ``final_sparsity``; booleans get ``--delta/--no-delta``;
``model_args`` takes JSON. Every option defaults to None, so an unset flag leaves the
TOML file's or the ``MPFL_*`` environment's value in force (see ``mpfl.config.settings``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import click

from mpfl.choices import names
from mpfl.config.settings import CHOICES, KEY_HELP, FederationConfig

F = TypeVar("F", bound=Callable[..., Any])


def _option(f: dataclasses.Field[Any]) -> Callable[[F], F]:
    flag = "--" + f.name.replace("_", "-")
    default = f.default
    # The option's own default stays None, so an unset flag leaves the file's or the
    # environment's value in force; the help shows the config's default in click's style.
    if isinstance(default, bool):
        shown = flag[2:] if default else f"no-{flag[2:]}"
    elif default is dataclasses.MISSING:  # model_args: a JSON object
        shown = "{}"
    else:
        shown = repr(default) if default == "" else str(default)
    help_text = f"{KEY_HELP[f.name]} (env MPFL_{f.name.upper()})  [default: {shown}]"
    if isinstance(default, bool):
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
    if default is dataclasses.MISSING:
        return click.option(flag, f.name, default=None, metavar="JSON", help=help_text)
    kind: Any = click.Choice(names(CHOICES[f.name])) if f.name in CHOICES else type(default)
    return click.option(flag, f.name, type=kind, default=None, help=help_text)


def config_options(skip: Iterable[str] = ()) -> Callable[[F], F]:
    """Decorate a command with one option per config key (except ``skip``)."""
    skipped = set(skip)
    fields = [f for f in dataclasses.fields(FederationConfig) if f.name not in skipped]

    def decorate(func: F) -> F:
        for f in reversed(fields):
            func = _option(f)(func)
        return func

    return decorate


def pop_config_overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the config keys from a command's kwargs; return the ones that were given."""
    names = {f.name for f in dataclasses.fields(FederationConfig)}
    taken = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    return {k: v for k, v in taken.items() if v is not None}


def config_to_args(cfg: FederationConfig, skip: Iterable[str] = ()) -> list[str]:
    """Command-line flags that reproduce ``cfg`` (for starting a coordinator process)."""
    return settings_to_args({f.name: getattr(cfg, f.name)
                             for f in dataclasses.fields(FederationConfig) if f.name not in skip})


def settings_to_args(settings: Mapping[str, Any]) -> list[str]:
    """Command-line flags for some config keys (e.g. ``settings.PLAIN_MPFL``)."""
    args: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, dict):
            args += [flag, json.dumps(value, sort_keys=True)]
        else:
            args += [flag, str(value)]
    return args
