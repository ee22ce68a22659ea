"""Shared pieces of the fuzz tests: byte-level mutations of valid messages, and the one
property every decoder and handler must hold on hostile bytes.

Hypothesis runs derandomized (a fixed seed per test, no example database), so CI sees the
same examples on every run; a few hundred examples per target keep the whole fuzz suite
well under a minute. ``MPFL_FUZZ_EXAMPLES`` raises the count for a longer local hunt.
"""

from __future__ import annotations

import os
import signal
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mpfl.errors import MpflError

T = TypeVar("T")

EXAMPLES = int(os.environ.get("MPFL_FUZZ_EXAMPLES", "300"))
# Per example: a decoder that loops or allocates without bound shows up as a failure
# here, not as a CI job that never ends.
HANG_S = float(os.environ.get("MPFL_FUZZ_HANG_S", "10"))

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


class Hang(Exception):
    """Not an MpflError on purpose: a hang must fail the property."""


@contextmanager
def no_hang(seconds: float = HANG_S) -> Iterator[None]:
    def fire(_signum: int, _frame: Any) -> None:
        raise Hang(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def typed_outcome(call: Callable[[], T]) -> T | MpflError:
    """``call()``'s result, or the MpflError it raised; anything else (and a hang) fails."""
    with no_hang():
        try:
            return call()
        except MpflError as exc:
            assert str(exc) and "\n" not in str(exc), repr(exc)  # a one-line error
            return exc


# -- byte-level mutations -----------------------------------------------------------------

def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "extend",
                                   "int")))
        at = draw(st.integers(0, max(len(buf), 1) - 1)) if buf else 0
        if op == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[at] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF))
                           | st.integers(0, 255))
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and buf:
            del buf[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del buf[at:]
        elif op == "extend":
            buf += draw(st.binary(min_size=1, max_size=32))
        elif op == "int" and len(buf) >= 4:
            # An interesting 32-bit value over a length, count or round field.
            at = min(at, len(buf) - 4)
            value = draw(st.sampled_from((0, 1, 2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
                                          len(buf), len(buf) + 1)))
            buf[at : at + 4] = struct.pack("<I", value)
    return bytes(buf)


def fix_envelope_crc(data: bytes) -> bytes:
    """Recompute an envelope's trailing CRC, so mutations reach the fields behind it."""
    if len(data) < 4:
        return data
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def hostile(seeds: Sequence[bytes], fix_crc: Callable[[bytes], bytes] | None = None
            ) -> st.SearchStrategy[bytes]:
    """Random bytes, valid ``seeds`` as they are, and seeds mutated at the byte level
    (with their checksum recomputed half the time when ``fix_crc`` is given)."""

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = _mutate(draw(st.sampled_from(list(seeds))), draw)
        if fix_crc is not None and draw(st.booleans()):
            data = fix_crc(data)
        return data

    return st.one_of(st.binary(max_size=256), st.sampled_from(list(seeds)), mutated())


def json_hostile(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """JSON documents mutated as text (digits, quotes, braces) as well as bytes."""

    @st.composite
    def textual(draw: st.DrawFn) -> bytes:
        text = draw(st.sampled_from(list(seeds))).decode()
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(text)))
            piece = draw(st.sampled_from(('"', "{", "}", "[", "]", ",", ":", "-", "9" * 12,
                                          "1e308", "null", "true", "0", ".5", "\\u0000",
                                          "[" * 200, "\"x\":1,")))
            cut = draw(st.integers(0, 3))
            text = text[:at] + piece + text[at + cut :]
        return text.encode("utf-8", "surrogatepass")

    return st.one_of(hostile(seeds), textual())


def view(obj: Any, depth: int = 0) -> Any:
    """A comparable picture of an object's state (arrays by value), for "unchanged" checks."""
    if isinstance(obj, np.ndarray):
        return ("array", obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return obj
    if isinstance(obj, dict):
        return {k: view(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [view(v, depth + 1) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(map(repr, obj))
    if depth < 4 and hasattr(obj, "__dict__"):
        return {k: view(v, depth + 1) for k, v in vars(obj).items() if k != "_scratch"}
    return repr(obj)
