"""One logging setup for every command: the standard library's loggers, three renderings.

Services log through ``logging.getLogger(__name__)``; the command line picks how records
look, once, with :func:`setup_logging`:

- ``text`` in a terminal: rich's handler (time, level, message), drawn above a live view
  when one is shown (both write through :func:`console`);
- ``text`` without one (a pipe, systemd, CI): one plain line per event, with a timestamp
  and level, so ``journalctl`` and ``grep`` can filter;
- ``json``: one JSON object per line. A record's structured fields (``extra={...}``, see
  :func:`fields`) become keys beside ``time``, ``level``, ``logger`` and ``message``.

``--quiet`` keeps warnings and errors, ``--verbose`` adds debug lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from functools import cache
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from mpfl.choices import LogFormat

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

# Third-party loggers that talk about their own plumbing at INFO.
_NOISY = ("amqtt", "transitions", "asyncio", "PIL", "matplotlib")
_FIELDS_KEY = "mpfl_fields"


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a record with structured fields: ``log.info("...", extra=fields(
    event="round-closed", round=3))``. Text renderings show only the message."""
    return {_FIELDS_KEY: values}


def record_fields(record: logging.LogRecord) -> Mapping[str, Any]:
    return getattr(record, _FIELDS_KEY, None) or {}


@cache
def console() -> Console:
    """The terminal both log lines and the live view write to (stdout, as the commands'
    output always went)."""
    from rich.console import Console  # imported when needed: commands start faster

    return Console(file=sys.stdout, stderr=False)


def is_terminal() -> bool:
    return sys.stdout.isatty()


def wants_live_view(log_format: LogFormat, verbosity: int = 0) -> bool:
    """A live view belongs in a terminal, with text logs (JSON is for machines), unless
    ``--quiet`` asked for warnings only."""
    return log_format is LogFormat.TEXT and verbosity >= 0 and is_terminal()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, UTC timestamps with milliseconds."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(record_fields(record))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + \
        f".{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-30T10:40:01.123Z INFO  coordinator.service: round 1/4 ...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def level_for(verbosity: int) -> int:
    """-1 (``--quiet``): warnings and worse; 0: info; 1 (``--verbose``): debug."""
    return {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)


def make_handler(log_format: LogFormat, stream: IO[str] | None = None,
                 rich: bool | None = None) -> logging.Handler:
    """The handler for ``log_format``: rich in a terminal for text unless ``rich`` says
    otherwise; ``stream`` (default stdout) for the plain renderings."""
    if rich is None:
        rich = log_format is LogFormat.TEXT and stream is None and is_terminal()
    if rich:
        from rich.logging import RichHandler

        return RichHandler(console=console(), show_path=False, rich_tracebacks=False,
                           log_time_format="%H:%M:%S")
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else TextFormatter())
    return handler


def setup_logging(log_format: LogFormat | str = LogFormat.TEXT, verbosity: int = 0,
                  stream: IO[str] | None = None) -> None:
    """Route every logger to one handler at the chosen level (replacing earlier setups)."""
    log_format = LogFormat(log_format)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(log_format, stream))
    root.setLevel(level_for(verbosity))
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def logging_options(command: F) -> F:
    """``--log-format``, ``--verbose`` and ``--quiet``, passed on as ``log_format`` and
    ``verbosity`` (-1, 0 or 1)."""
    command = click.option("--quiet", "-q", "quiet", is_flag=True,
                           help="Only warnings and errors.")(command)
    command = click.option("--verbose", "-v", "verbose", is_flag=True,
                           help="Debug lines too.")(command)
    return click.option("--log-format", type=click.Choice([f.value for f in LogFormat]),
                        default=LogFormat.TEXT.value, show_default=True, envvar="MPFL_LOG_FORMAT",
                        help="text (rich in a terminal) or json: one object per line "
                             "(env MPFL_LOG_FORMAT).")(command)


def pop_logging_options(kwargs: dict[str, Any]) -> tuple[LogFormat, int]:
    """Take the options of :func:`logging_options` out of a command's ``kwargs``."""
    quiet, verbose = kwargs.pop("quiet"), kwargs.pop("verbose")
    return LogFormat(kwargs.pop("log_format")), (1 if verbose else -1 if quiet else 0)


def verbosity_args(verbosity: int) -> list[str]:
    """The flags that give a child process the same verbosity."""
    return {-1: ["--quiet"], 0: []}.get(verbosity, ["--verbose"])


def replay(line: str, default_logger: str) -> None:
    """A child process's JSON log line, logged here as if it were ours (its level, logger,
    message and fields), so one rendering applies to the whole fleet; a line that is not
    one (a crash's traceback) is logged as a warning of ``default_logger``."""
    doc: Any = None
    with contextlib.suppress(ValueError):
        doc = json.loads(line)
    if not isinstance(doc, dict) or not isinstance(doc.get("message"), str):
        logging.getLogger(default_logger).warning(line)
        return
    level = logging.getLevelName(str(doc.get("level", "info")).upper())
    name = str(doc.get("logger", default_logger))
    logger = logging.getLogger(name)
    if not isinstance(level, int) or not logger.isEnabledFor(level):
        return
    known = {"time", "level", "logger", "message", "exception"}
    extra = fields(**{k: v for k, v in doc.items() if k not in known})
    message = doc["message"] + (f"\n{doc['exception']}" if "exception" in doc else "")
    logger.handle(logger.makeRecord(name, level, "(child)", 0, message, (), None,
                                    extra=extra))
