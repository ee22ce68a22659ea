"""One line on stderr and the error's exit code for every ``MpflError``: no traceback.

Shared by ``mpfl-export`` and ``mpfl-infer``; imports nothing heavy, so the torch-free
runner can use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from mpfl.errors import MpflError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(prog: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except MpflError as exc:
                click.echo(f"{prog}: error: {exc}", err=True)
                sys.exit(exc.exit_code)

        return wrapper  # type: ignore[return-value]

    return decorate
