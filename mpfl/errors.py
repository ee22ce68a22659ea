"""The mpfl exception tree, with the exit code each maps to at the command line.

    MpflError                 1   anything mpfl raises on purpose
    +-- ConfigError           2   a bad flag, config key or value
    |   +-- BrokerRefused    11   the broker refused the login (user, password, client id)
    |   +-- TlsError         12   the TLS handshake failed (CA file, certificate, host name)
    |   +-- ForeignRunDir    14   a run directory that belongs to another federation
    |   +-- PortInUse        15   a port this process must listen on is taken
    +-- DataError             3   a missing or malformed dataset / file
    +-- ModelError            4   unknown model, mask or checkpoint that does not fit
    +-- WireError             5   bytes that do not decode as a v1 message
    |   +-- FingerprintMismatch   a message for another model or granularity
    |   +-- DocumentError         a JSON document with a bad, missing or unknown field
    +-- FederationError       6   a round that cannot complete (quorum lost, timeout)
    |   +-- BrokerUnreachable 10  no broker answered within --connect-timeout
    |   +-- NodeDied         13   a node process of a simulation exited with an error
    +-- ExportError           7   an export or its verification failed
    +-- HardwareError         8   an unknown profile, or a budget the board cannot hold
    +-- Interrupted         130   SIGINT or SIGTERM arrived while waiting (not a fault)

``ExitCode`` lists every code once; the README's table is written from it. Errors carry
their context (node id, round, topic, path) as attributes and render it in one line, so a
command-line tool can print ``str(err)`` and exit with ``err.exit_code``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from enum import IntEnum
from functools import wraps
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class ExitCode(IntEnum):
    """What a command's exit status means; each error class below maps to one of these.

    Services under systemd restart on any of them except those a restart cannot fix
    (``PERMANENT``)."""

    OK = 0
    ERROR = 1
    CONFIG = 2
    DATA = 3
    MODEL = 4
    WIRE = 5
    FEDERATION = 6
    EXPORT = 7
    HARDWARE = 8
    BROKER_UNREACHABLE = 10
    BROKER_REFUSED = 11
    TLS = 12
    NODE_DIED = 13
    FOREIGN_RUN_DIR = 14
    PORT_IN_USE = 15
    INTERRUPTED = 130


# A restart cannot fix these: wrong settings, credentials, certificates or board.
PERMANENT = (ExitCode.CONFIG, ExitCode.MODEL, ExitCode.HARDWARE, ExitCode.BROKER_REFUSED,
             ExitCode.TLS, ExitCode.FOREIGN_RUN_DIR)


class MpflError(Exception):
    exit_code: int = ExitCode.ERROR

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
    exit_code: int = ExitCode.CONFIG


class DataError(MpflError):
    exit_code: int = ExitCode.DATA


class ModelError(MpflError):
    exit_code: int = ExitCode.MODEL


class WireError(MpflError):
    exit_code: int = ExitCode.WIRE


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
    exit_code: int = ExitCode.FEDERATION


class ExportError(MpflError):
    exit_code: int = ExitCode.EXPORT


class HardwareError(MpflError):
    exit_code: int = ExitCode.HARDWARE


class BrokerRefused(ConfigError):
    """The broker answered and refused this login: retrying cannot help."""

    exit_code: int = ExitCode.BROKER_REFUSED


class TlsError(ConfigError):
    """The TLS handshake failed: an unknown CA, an expired certificate or a host name the
    certificate does not name."""

    exit_code: int = ExitCode.TLS


class ForeignRunDir(ConfigError):
    """A run directory written by another federation: resuming it would mix two runs."""

    exit_code: int = ExitCode.FOREIGN_RUN_DIR


class PortInUse(ConfigError):
    exit_code: int = ExitCode.PORT_IN_USE


class BrokerUnreachable(FederationError):
    """No broker accepted a connection in time; it may come up later (systemd retries)."""

    exit_code: int = ExitCode.BROKER_UNREACHABLE


class NodeDied(FederationError):
    exit_code: int = ExitCode.NODE_DIED


class Interrupted(MpflError):
    """A stop request (SIGINT, SIGTERM) ended a wait: not a fault, so services catch it
    and stop as they would between rounds."""

    exit_code: int = ExitCode.INTERRUPTED


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
        except KeyboardInterrupt:  # Ctrl-C before the command installed its own handler
            _exit_with(Interrupted("interrupted (SIGINT)"))
        except MpflError as exc:
            _exit_with(exc)

    return wrapper  # type: ignore[return-value]


def _exit_with(exc: MpflError) -> None:
    import click

    ctx = click.get_current_context(silent=True)
    prog = ctx.find_root().info_name if ctx is not None else None
    click.echo(f"{prog}: error: {exc}" if prog else f"error: {exc}", err=True)
    sys.exit(exc.exit_code)
