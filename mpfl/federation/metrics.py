"""Round logs: what each closed round did, one JSON line each in a run's ``metrics.jsonl``."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpfl.errors import DataError


@dataclass
class RoundLog:
    """What one closed round did: the metrics line written to the run directory."""

    round: int
    phase: str
    target_sparsity: float
    sparsity: float
    participants: list[str]
    uplink_bytes: int
    downlink_bytes: int
    dense_uplink_bytes: int
    accuracy: float | None = None
    loss: float | None = None
    seconds: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)
    # Bytes by message kind as the transport counted them (chunk headers included);
    # filled in by the service that owns the transport, empty in-process.
    wire: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy of every participant id took most of a
        # checkpoint's time with 10,000 nodes. The lists and dicts are still copied.
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        doc["participants"] = list(self.participants)
        doc["dropped"] = dict(self.dropped)
        doc["wire"] = {k: dict(v) for k, v in self.wire.items()}
        return doc

    @staticmethod
    def from_dict(doc: Any) -> RoundLog:
        """A metrics line back into a RoundLog; DataError when it is not one."""
        if not isinstance(doc, dict):
            raise DataError("metrics line is not a JSON object")
        for key, kind in _LOG_KEYS.items():
            value = doc.get(key)
            if key not in doc or isinstance(value, bool) or not isinstance(value, kind):
                raise DataError(f"metrics line lacks a valid {key!r}")
        if not all(isinstance(p, str) for p in doc["participants"]):
            raise DataError("participants must be node id strings")
        accuracy = doc["accuracy"]
        if not (accuracy is None or 0.0 <= accuracy <= 1.0) or not math.isfinite(doc["seconds"]):
            raise DataError("accuracy or seconds out of range")
        if min(doc["uplink_bytes"], doc["downlink_bytes"], doc["dense_uplink_bytes"]) < 0:
            raise DataError("byte counts must not be negative")
        names = {f.name for f in dataclasses.fields(RoundLog)}
        return RoundLog(**{k: v for k, v in doc.items() if k in names})


_LOG_KEYS: dict[str, type | tuple[type, ...]] = {
    "round": int, "phase": str, "participants": list, "uplink_bytes": int,
    "downlink_bytes": int, "dense_uplink_bytes": int, "accuracy": (int, float, type(None)),
    "seconds": (int, float), "target_sparsity": (int, float), "sparsity": (int, float),
}


def read_metrics(path: str | Path) -> list[RoundLog]:
    """The round logs of a run's ``metrics.jsonl`` (given the file or its run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read metrics: {exc.strerror or exc}", path=str(path)) from exc
    logs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            logs.append(RoundLog.from_dict(json.loads(line)))
        except ValueError as exc:
            raise DataError("metrics line is not JSON", path=str(path), line=number) from exc
        except DataError as exc:
            raise DataError(exc.message, path=str(path), line=number) from exc
    return logs
