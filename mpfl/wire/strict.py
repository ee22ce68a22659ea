"""Strict decoding of JSON protocol documents into frozen msgspec structs.

One place turns msgspec's errors into a ``DocumentError`` that names the document and the
field in one line (``"server state: round: expected int, got str"``) and says which kind
of defect it was, so a receiver can count rejected documents by reason.

Strict means: an unknown key, a missing key, a wrong type (``true`` is not an int, ``1.5``
is not an int, ``"3"`` is not a number), a value outside its declared range or an unknown
enum name are all errors. Encoding is canonical: sorted keys, no spaces.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import msgspec

from mpfl.errors import DocumentError

T = TypeVar("T")

_AT = re.compile(r"^(?P<problem>.*?)(?: - at `(?P<path>.*)`)?$", re.DOTALL)
_BACKTICKED = re.compile(r"`([^`]*)`")


def _path(raw: str | None) -> str:
    """msgspec's ``$.train.lr`` or ``key` in `$.model.args`` as ``train.lr`` / ``key in
    model.args``."""
    if not raw:
        return ""
    return raw.replace("` in `", " in ").replace("$.", "").replace("$", "")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def document_error(exc: msgspec.ValidationError, document: str) -> DocumentError:
    """A one-line ``DocumentError`` for one of msgspec's validation errors."""
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any string
    problem, path = match["problem"], _path(match["path"])
    named = _BACKTICKED.search(problem)
    if problem.startswith("Object missing required field") and named:
        return DocumentError(document, "missing", field=_join(path, named[1]),
                             reason="missing-field")
    if problem.startswith("Object contains unknown field") and named:
        return DocumentError(document, "unknown field", field=_join(path, named[1]),
                             reason="unknown-field")
    if problem.startswith("Invalid enum value"):
        return DocumentError(document, "unknown value " + problem.split("value ", 1)[1],
                             field=path, reason="unknown-value")
    text = _BACKTICKED.sub(r"\1", problem)
    text = text[:1].lower() + text[1:]
    if ", got " in problem:
        reason = "wrong-type"
    elif problem.startswith(("Expected", "Number out of range")):
        reason = "out-of-range"
    else:  # a consistency check of the document itself (its __post_init__)
        reason = "invalid"
    return DocumentError(document, text, field=path, reason=reason)


def decode_document(payload: bytes, kind: type[T], document: str) -> T:
    """``payload`` as a ``kind``, or a ``DocumentError`` naming ``document`` and the field."""
    try:
        return msgspec.json.decode(payload, type=kind)
    except msgspec.ValidationError as exc:
        raise document_error(exc, document) from None
    except (msgspec.DecodeError, RecursionError) as exc:  # hostile deep nesting recurses
        raise DocumentError(document, f"not JSON: {exc}", reason="not-json") from None


def convert_document(data: Any, kind: type[T], document: str) -> T:
    """Already-parsed builtins (a TOML table, a dict) as a ``kind``, checked as strictly."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise document_error(exc, document) from None


def checked(value: T, document: str) -> T:
    """``value`` itself once its declared ranges hold (struct constructors do not check)."""
    return convert_document(msgspec.to_builtins(value), type(value), document)


def encode_document(value: Any) -> bytes:
    """Canonical JSON: sorted keys, compact separators (stable bytes for golden tests)."""
    return json.dumps(msgspec.to_builtins(value), sort_keys=True,
                      separators=(",", ":")).encode()
