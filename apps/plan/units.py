"""Durations and byte counts in the units people read them in."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """Seconds in the largest unit that keeps the number readable: 8.0 s, 4.5 min, 2.3 d."""
    if not math.isfinite(seconds):
        return "n/a"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    if seconds >= 1:
        return f"{seconds:.1f} s"
    return f"{seconds * 1000:.0f} ms"


def format_bytes(n: float) -> str:
    """Decimal units, as link speeds are quoted: 1.2 kB, 3.4 MB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"

