"""The coordinator's ready file: where its broker listens, for whoever started it.

``mpfl-coordinator run --ready-file PATH`` writes one small JSON document once its broker
is up (at once with ``--broker``; after the embedded broker has started otherwise)::

    {"broker": "mqtt://127.0.0.1:41883", "pid": 12345}

It is written atomically (a temporary file in the same directory, fsync, rename), so a
reader that finds the file finds all of it. ``mpfl simulate`` waits for it to learn which
broker its nodes should join, instead of reading the coordinator's output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mpfl.errors import FederationError


@dataclass(frozen=True)
class CoordinatorReady:
    broker: str  # mqtt://host:port or mqtts://host:port, never with credentials
    pid: int

    def encode(self) -> bytes:
        return json.dumps({"broker": self.broker, "pid": self.pid}).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes, *, source: str = "<bytes>") -> CoordinatorReady:
        """Strict: exactly the two keys, with their types; anything else names the file."""
        try:
            doc = json.loads(data)
        except ValueError:
            raise FederationError("the ready file is not JSON", path=source) from None
        if not isinstance(doc, dict) or set(doc) != {"broker", "pid"}:
            raise FederationError("the ready file needs exactly broker and pid", path=source)
        broker, pid = doc["broker"], doc["pid"]
        if not isinstance(broker, str) or not broker.startswith(("mqtt://", "mqtts://")):
            raise FederationError("the ready file's broker is not an MQTT URL", path=source)
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
            raise FederationError("the ready file's pid is not a process id", path=source)
        return cls(broker, pid)


def write_ready_file(path: Path, ready: CoordinatorReady) -> None:
    """Write ``ready`` to ``path`` atomically: readers see no file or the whole document."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(ready.encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_ready_file(path: Path) -> CoordinatorReady | None:
    """The document at ``path``, or None while it does not exist yet."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = f"cannot read the ready file: {exc.strerror}"
        raise FederationError(reason, path=str(path)) from exc
    return CoordinatorReady.decode(data, source=str(path))
