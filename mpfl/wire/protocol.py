"""The v1 federation protocol above the envelope: state documents, hellos, updates.

Both sides are written "sans I/O": they take ``(topic, payload)`` and return the
``Publish`` actions to perform, so the same logic runs over MQTT, over the in-memory
transport, and in unit tests.

The JSON documents are frozen structs decoded strictly on both sides (``mpfl.wire.strict``):
an unknown or missing key, a wrong type or an out-of-range value is a ``DocumentError``
naming the field, which a receiver counts and drops.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec

from mpfl.choices import Granularity, LayerSparsity, Mode, ModelScope, Phase, ValueCodecName
from mpfl.errors import DocumentError, WireError
from mpfl.wire.specs import ModelSpec, TrainSpec
from mpfl.wire.strict import decode_document, encode_document

PROTOCOL_VERSION: Final = 1
PHASES = tuple(Phase)
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


def decode_update(payload: bytes) -> tuple[int, memoryview]:
    """The sample count and the coded values: a view into ``payload``, not a copy (a dense
    fp32 update is a quarter of a megabyte, and the value decoder copies it anyway)."""
    if len(payload) < _SAMPLES.size:
        raise WireError("update payload shorter than its sample count")
    (samples,) = _SAMPLES.unpack_from(payload)
    if samples == 0:
        raise WireError("update reports zero samples")
    return samples, memoryview(payload)[_SAMPLES.size :]


_U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
_NAME = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
_TOKEN = Annotated[str, msgspec.Meta(max_length=64)]


class _Versioned(msgspec.Struct):
    """Only the protocol version, read before the strict decode: a document of another
    version is reported as such, not as a list of unknown fields."""

    protocol: Any = None


class StateDocument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``server/state`` (retained): where the federation is and what this round asks.

    ``session`` changes with each coordinator process (nodes resend a finished round's
    cached bytes to a new one); ``run`` stays for the whole run directory. Rounds count
    across phases: mask rounds 1..mask_rounds, then training rounds.
    """

    protocol: Literal[1]
    federation: _NAME
    session: _TOKEN
    run: _TOKEN
    phase: Phase
    round: _U32
    mask_rounds: _U32
    train_rounds: _U32
    target_sparsity: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)]
    # How target_sparsity is shared among the layers (nodes prune as the vote will).
    layer_sparsity: LayerSparsity
    deadline: Annotated[float, msgspec.Meta(ge=0.0, le=1e12)]  # Unix time, seconds
    model: ModelSpec
    granularity: Granularity
    fingerprint: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]
    model_scope: ModelScope
    train: TrainSpec
    value_codec: ValueCodecName
    mode: Mode
    delta: bool
    # Nodes carry each round's quantisation error into their next upload.
    error_feedback: bool
    error: str | None  # why the federation failed

    def __post_init__(self) -> None:
        # ValueError: msgspec reports it as a validation error of this document.
        total = self.mask_rounds + self.train_rounds
        if self.round > total:
            raise ValueError(f"round {self.round} is past the last round ({total})")
        if self.phase.is_round and self.round < 1:
            raise ValueError(f"a {self.phase} phase needs a round >= 1")

    @property
    def mask_in_force(self) -> int:
        """The round whose consensus mask this round trains under (0: all ones)."""
        return min(self.round - 1, self.mask_rounds)

    def encode(self) -> bytes:
        return encode_document(self)


def decode_state(payload: bytes) -> StateDocument:
    """A ``server/state`` payload, or a ``DocumentError`` naming what is wrong with it."""
    what = "server state"
    version = decode_document(payload, _Versioned, what).protocol
    if version != PROTOCOL_VERSION:
        raise DocumentError(what, f"version {version!r}, this build speaks {PROTOCOL_VERSION}",
                            field="protocol", reason="protocol-version")
    return decode_document(payload, StateDocument, what)


class Hello(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a node announces on ``nodes/<id>/status`` (retained)."""

    node_id: _NAME
    samples: Annotated[int, msgspec.Meta(ge=1, le=0xFFFF_FFFF)]
    hardware: Annotated[str, msgspec.Meta(max_length=128)] = "unknown"
    versions: dict[str, str] = msgspec.field(default_factory=dict)
    status: Literal["online"] = "online"

    def encode(self) -> bytes:
        return encode_document(self)

    @staticmethod
    def decode(payload: bytes) -> Hello | None:
        """None for the last-will "offline"; ``DocumentError`` for anything malformed."""
        if payload in (OFFLINE, b""):
            return None
        return decode_document(payload, Hello, "node status")


class Progress(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``nodes/<id>/progress`` (QoS 0, not retained): local epochs done in ``round``.

    Informational, for the operator's live view; signed like every node message.
    """

    round: Annotated[int, msgspec.Meta(ge=1, le=0xFFFF_FFFF)]
    epoch: _U32
    epochs: Annotated[int, msgspec.Meta(ge=1, le=0xFFFF)]

    def __post_init__(self) -> None:
        if self.epoch > self.epochs:
            raise ValueError(f"epoch {self.epoch} is past the last ({self.epochs})")

    def encode(self) -> bytes:
        return encode_document(self)

    @staticmethod
    def decode(payload: bytes) -> Progress:
        return decode_document(payload, Progress, "node progress")
