"""The v1 federation protocol above the envelope: state documents, hellos, updates.

Both sides are written "sans I/O": they take ``(topic, payload)`` and return the
``Publish`` actions to perform, so the same logic runs over MQTT, over the in-memory
transport, and in unit tests.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from mpfl.errors import WireError

PROTOCOL_VERSION = 1
PHASES = ("waiting", "mask", "train", "done", "failed")
OFFLINE = b"offline"
_SAMPLES = struct.Struct("<I")


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


def encode_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_json(payload: bytes, what: str) -> dict[str, Any]:
    """A JSON object from the wire, or a WireError saying which message was bad."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # hostile deep nesting recurses
        raise WireError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise WireError(f"{what} must be a JSON object")
    return doc


def encode_update(samples: int, values_payload: bytes) -> bytes:
    """An update payload: the node's sample count (u32 LE), then the coded values."""
    if not 1 <= samples <= 0xFFFFFFFF:
        raise WireError("an update's sample count must fit a u32 and be >= 1", samples=samples)
    return _SAMPLES.pack(samples) + values_payload


def decode_update(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < _SAMPLES.size:
        raise WireError("update payload shorter than its sample count")
    (samples,) = _SAMPLES.unpack_from(payload)
    if samples == 0:
        raise WireError("update reports zero samples")
    return samples, payload[_SAMPLES.size :]


@dataclass(frozen=True)
class Hello:
    """What a node announces on ``nodes/<id>/status`` (retained)."""

    node_id: str
    samples: int
    hardware: str = "unknown"
    versions: dict[str, str] | None = None

    def encode(self) -> bytes:
        return encode_json({"status": "online", "node_id": self.node_id, "samples": self.samples,
                            "hardware": self.hardware, "versions": self.versions or {}})

    @staticmethod
    def decode(payload: bytes) -> Hello | None:
        """None for the last-will "offline"; WireError for anything malformed."""
        if payload in (OFFLINE, b""):
            return None
        doc = decode_json(payload, "node status")
        samples, node_id = doc.get("samples"), doc.get("node_id")
        # bool is an int in Python; JSON true is not a sample count.
        if type(samples) is not int or samples < 1 or not isinstance(node_id, str):
            raise WireError("node status needs node_id and samples >= 1")
        versions = doc.get("versions") if isinstance(doc.get("versions"), dict) else None
        return Hello(node_id, samples, str(doc.get("hardware", "unknown")), versions)
