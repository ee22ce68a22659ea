"""Byte-level fuzzing of every wire decoder: the envelope, the mask and value codecs, the
chunk parser and reassembler, the state document, the hello, the update and the node
metrics. Whatever the bytes, a decoder returns a well-formed value or raises a typed
one-line ``MpflError``: never another exception, never a hang (see ``_fuzz``)."""

from __future__ import annotations

import json

import numpy as np
from _fuzz import FUZZ, fix_envelope_crc, hostile, json_hostile, typed_outcome
from hypothesis import given
from hypothesis import strategies as st

from mpfl.config.settings import FederationConfig
from mpfl.errors import MpflError
from mpfl.federation.server import FederationServer
from mpfl.wire import (
    Envelope,
    Kind,
    MaskCodec,
    ValueCodec,
    decode_envelope,
    decode_mask,
    decode_values,
    encode_envelope,
    encode_mask,
    encode_values,
)
from mpfl.wire.chunks import HEADER_SIZE, Reassembler, parse_chunk, split_payload
from mpfl.wire.protocol import Hello, decode_json, decode_state, decode_update, encode_update

FP = bytes.fromhex("0102030405060708")
RNG = np.random.default_rng(12)

ENVELOPES = [
    encode_envelope(Envelope(Kind.MODEL, 0, FP, "", 1, b"\0" * 12)),
    encode_envelope(Envelope(Kind.MASK, 3, FP, "", 2, bytes(range(9)))),
    encode_envelope(Envelope(Kind.LOCAL_MASK, 1, FP, "node-0", 1, b"\xa5\x0f")),
    encode_envelope(Envelope(Kind.UPDATE, 7, FP, "n" * 64, 0x81, b"\1\0\0\0" + b"\0" * 8)),
]


@FUZZ
@given(data=hostile(ENVELOPES, fix_envelope_crc),
       expected=st.sampled_from([None, FP, bytes(8)]),
       kind=st.sampled_from([None, *Kind]))
def test_envelope_decode(data: bytes, expected: bytes | None, kind: Kind | None) -> None:
    out = typed_outcome(lambda: decode_envelope(data, expected_fingerprint=expected,
                                                expected_kind=kind))
    if isinstance(out, Envelope):
        assert encode_envelope(out) == data  # one encoding per message
        assert expected is None or out.fingerprint == expected
        assert kind is None or out.kind == kind


MASK_SIZES = (0, 1, 7, 8, 13, 100)
SCOPE = RNG.random(100) < 0.6


def _mask_seeds() -> list[bytes]:
    seeds = []
    for n in MASK_SIZES:
        for density in (0.0, 0.1, 0.5, 0.97):
            mask = RNG.random(n) < density
            seeds += [encode_mask(mask, codec=c)[1] for c in MaskCodec]
    seeds += [encode_mask(SCOPE & (RNG.random(100) < 0.5), SCOPE, c)[1] for c in MaskCodec]
    return seeds


@FUZZ
@given(payload=hostile(_mask_seeds()), codec=st.sampled_from([0, 1, 2, 3, 4, 255, 0xFFFF]),
       n=st.sampled_from(MASK_SIZES), scoped=st.booleans())
def test_mask_decode(payload: bytes, codec: int, n: int, scoped: bool) -> None:
    scope = SCOPE if scoped else None
    n = 100 if scoped else n
    out = typed_outcome(lambda: decode_mask(codec, payload, n, scope=scope))
    if isinstance(out, np.ndarray):
        assert out.dtype == np.bool_ and out.shape == (n,)
        assert scope is None or not np.any(out & ~scope)  # never revives a pruned unit


SIZES = [3, 0, 5, 1]
BASE = RNG.standard_normal(9).astype(np.float32)


def _value_seeds() -> list[bytes]:
    values = RNG.standard_normal(9).astype(np.float32)
    seeds = [encode_values(values, SIZES, c)[1] for c in ("fp32", "fp16", "int8")]
    seeds += [encode_values(values, SIZES, c, BASE)[1] for c in ("fp32", "fp16", "int8")]
    return seeds


@FUZZ
@given(payload=hostile(_value_seeds()),
       codec=st.sampled_from([*map(int, ValueCodec), 0, 4, 0x80, 0x84, 0xFFFF]),
       with_base=st.booleans())
def test_value_decode(payload: bytes, codec: int, with_base: bool) -> None:
    out = typed_outcome(lambda: decode_values(codec, payload, SIZES,
                                              BASE if with_base else None))
    if isinstance(out, np.ndarray):
        assert out.dtype == np.float32 and out.shape == (9,)


def _update_seeds() -> list[bytes]:
    return [encode_update(n, p) for n in (1, 500, 0xFFFF_FFFF) for p in _value_seeds()[:2]]


@FUZZ
@given(payload=hostile(_update_seeds()))
def test_update_decode(payload: bytes) -> None:
    out = typed_outcome(lambda: decode_update(payload))
    if isinstance(out, tuple):
        samples, body = out
        assert 1 <= samples <= 0xFFFF_FFFF and body == payload[4:]


WHOLE = [bytes(RNG.integers(0, 256, size, dtype=np.uint8)) for size in (1500, 3000, 4100)]
CHUNKS = [c for w in WHOLE for c in split_payload(w, HEADER_SIZE + 1024)]


@FUZZ
@given(payload=hostile(CHUNKS))
def test_chunk_parse(payload: bytes) -> None:
    out = typed_outcome(lambda: parse_chunk(payload))
    if isinstance(out, tuple):
        header, data = out
        assert 0 <= header.index < header.count and header.count >= 2
        assert data == payload[HEADER_SIZE:]


@FUZZ
@given(stream=st.lists(st.tuples(st.sampled_from(["a", "b"]), hostile(CHUNKS)), max_size=24))
def test_chunk_reassembly(stream: list[tuple[str, bytes]]) -> None:
    """Any interleaving of good, repeated, mutated and foreign chunks: only WireErrors,
    the held bytes stay within the budget, and a completed message is one that was sent
    (its length and CRC hold) or a payload that was never chunked."""
    reassembler = Reassembler(max_pending=4, max_bytes=8000)
    for topic, payload in stream:
        out = typed_outcome(lambda: reassembler.feed(topic, payload))  # noqa: B023
        if isinstance(out, bytes) and out is not payload:
            assert out in WHOLE or payload[:4] != b"MPCK"
        assert 0 <= reassembler._held <= reassembler.max_bytes
        assert reassembler._held == sum(e.size for e in reassembler._sets.values())
        assert reassembler.pending <= reassembler.max_pending


CFG = FederationConfig(federation="fz", model="mlp", model_args={"image_size": 8, "hidden": [8]},
                       granularity="filter", mask_rounds=1, train_rounds=1)
STATE = FederationServer(CFG).state_doc().encode()
STATES = [STATE, STATE.replace(b'"waiting"', b'"mask"').replace(b'"round":0', b'"round":1')]


@FUZZ
@given(payload=json_hostile(STATES))
def test_state_document_decode(payload: bytes) -> None:
    out = typed_outcome(lambda: decode_state(payload))
    if not isinstance(out, MpflError):
        assert decode_state(out.encode()) == out  # what decodes re-encodes the same


HELLOS = [Hello("node-1", 500, "pi4", {"mpfl": "0.1.0"}).encode(),
          Hello("n", 0xFFFF_FFFF).encode(), b"offline", b""]


@FUZZ
@given(payload=json_hostile(HELLOS[:2]) | hostile(HELLOS))
def test_hello_decode(payload: bytes) -> None:
    out = typed_outcome(lambda: Hello.decode(payload))
    if isinstance(out, Hello):
        assert 1 <= out.samples <= 0xFFFF_FFFF and len(out.hardware) <= 128


METRICS = [json.dumps({"round": 1, "loss": 0.5, "accuracy": 0.9}).encode()]


@FUZZ
@given(payload=json_hostile(METRICS))
def test_node_metrics_decode(payload: bytes) -> None:
    out = typed_outcome(lambda: decode_json(payload, "node metrics"))
    assert isinstance(out, (dict, MpflError))
