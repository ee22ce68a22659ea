"""The mpfl exception tree, with the exit code each maps to at the command line.

    MpflError                 1   anything mpfl raises on purpose
    +-- ConfigError           2   a bad flag, config key or value
    +-- DataError             3   a missing or malformed dataset / file
    +-- ModelError            4   unknown model, mask or checkpoint that does not fit
    +-- WireError             5   bytes that do not decode as a v1 message
    |   +-- FingerprintMismatch   a message for another model or granularity
    |   +-- DocumentError         a JSON document with a bad, missing or unknown field
    +-- FederationError       6   a round that cannot complete (quorum lost, timeout)
    +-- ExportError           7   an export or its verification failed
    +-- HardwareError         8   an unknown profile, or a budget the board cannot hold

Errors carry their context (node id, round, topic, path) as attributes and render it in
one line, so a command-line tool can print ``str(err)`` and exit with ``err.exit_code``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class MpflError(Exception):
    exit_code = 1

    def __init__(self, message: str, **context: Any) -> None:
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}
        super().__init__(message)

    def __str__(self) -> str:
        if not self.context:
            return self.message
        where = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({where})"


class ConfigError(MpflError):
    exit_code = 2


class DataError(MpflError):
    exit_code = 3


class ModelError(MpflError):
    exit_code = 4


class WireError(MpflError):
    exit_code = 5


class FingerprintMismatch(WireError):
    pass


class DocumentError(WireError):
    """A protocol document that does not decode: ``"server state: round: expected int,
    got str"``. ``reason`` names the kind of defect (``wrong-type``, ``missing-field``,
    ``unknown-field``, ``out-of-range``, ``unknown-value``, ``not-json``, ...) so a
    receiver can count them; ``field`` is the dotted path, or "" for the whole document.
    """

    def __init__(self, document: str, problem: str, *, field: str = "",
                 reason: str = "invalid") -> None:
        self.document, self.problem, self.field, self.reason = document, problem, field, reason
        where = f"{field}: " if field else ""
        super().__init__(f"{document}: {where}{problem}")


class FederationError(MpflError):
    exit_code = 6


class ExportError(MpflError):
    exit_code = 7


class HardwareError(MpflError):
    exit_code = 8


def lookup(registry: Mapping[Any, T], name: str, what: str, key: str) -> T:
    """``registry[name]``, or a ConfigError that lists the known names (context ``key``).

    Registries are keyed by a ``StrEnum`` of ``mpfl.choices``, whose members equal their
    names, so a plain string finds its entry."""
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ConfigError(f"unknown {what} {name!r}; known: {known}", **{key: name}) from None


def reports_errors(command: F) -> F:
    """A command-line entry point that turns an MpflError into one line on stderr,
    ``PROG: error: what (where)``, and exits with the error's code: never a traceback
    for a user's mistake."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MpflError as exc:
            import click

            ctx = click.get_current_context(silent=True)
            prog = ctx.find_root().info_name if ctx is not None else None
            click.echo(f"{prog}: error: {exc}" if prog else f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]
