"""Protocol documents above the envelope: JSON, hellos and update payloads."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpfl.choices import Phase
from mpfl.errors import WireError
from mpfl.wire.protocol import (
    OFFLINE,
    PHASES,
    Hello,
    Publish,
    decode_json,
    decode_update,
    encode_json,
    encode_update,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_json_documents_round_trip(doc: dict[str, object]) -> None:
    payload = encode_json(doc)
    assert decode_json(payload, "doc") == doc
    assert payload == encode_json(dict(reversed(list(doc.items()))))  # canonical: sorted keys


@pytest.mark.parametrize(
    "payload", [b"", b"\xff\xfe", b"{", b"[1, 2]", b"3", b'"text"', b"null",
                b"[" * 100_000 + b"]" * 100_000],
)
def test_bad_json_is_a_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError) as info:
        decode_json(payload, "server state")
    assert "server state" in str(info.value)


@given(st.integers(1, 2**32 - 1), st.binary(max_size=64))
def test_update_payload_round_trips(samples: int, body: bytes) -> None:
    payload = encode_update(samples, body)
    assert payload[:4] == struct.pack("<I", samples)  # u32 little-endian, then the values
    assert decode_update(payload) == (samples, body)


def test_update_golden_bytes() -> None:
    assert encode_update(258, b"\xaa") == b"\x02\x01\x00\x00\xaa"


@pytest.mark.parametrize("payload", [b"", b"\x01\x00\x00", b"\x00\x00\x00\x00rest"])
def test_bad_update_payloads_are_wire_errors(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_update(payload)


@pytest.mark.parametrize("samples", [0, -1, 2**32])
def test_unencodable_sample_counts_are_wire_errors(samples: int) -> None:
    with pytest.raises(WireError):
        encode_update(samples, b"")


@given(st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True), st.integers(1, 10**9),
       st.text(max_size=20), st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
def test_hello_round_trips(node_id: str, samples: int, hardware: str,
                           versions: dict[str, str]) -> None:
    hello = Hello(node_id, samples, hardware, versions)
    assert Hello.decode(hello.encode()) == hello
    bare = Hello(node_id, samples, hardware)  # no versions: sent as an empty object
    assert Hello.decode(bare.encode()) == Hello(node_id, samples, hardware, {})
    assert json.loads(hello.encode())["status"] == "online"


def test_offline_and_empty_status_mean_gone() -> None:
    assert Hello.decode(OFFLINE) is None
    assert Hello.decode(b"") is None


@pytest.mark.parametrize(
    "doc",
    [{"samples": 3}, {"node_id": "a"}, {"node_id": "a", "samples": 0},
     {"node_id": "a", "samples": -2}, {"node_id": "a", "samples": "3"},
     {"node_id": "a", "samples": True}, {"node_id": "a", "samples": 2.5},
     {"node_id": 7, "samples": 3}, {"node_id": "a/b", "samples": 3},
     {"node_id": "a", "samples": 2**32}],
)
def test_malformed_hellos_are_wire_errors(doc: dict[str, object]) -> None:
    with pytest.raises(WireError):
        Hello.decode(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"versions": [1]}, "node status: versions: expected object, got array"),
     ({"hardware": 5}, "node status: hardware: expected str, got int"),
     ({"status": "busy"}, "node status: status: unknown value 'busy'"),
     ({"colour": "red"}, "node status: colour: unknown field")],
)
def test_hellos_are_decoded_strictly(extra: dict[str, object], message: str) -> None:
    """Optional fields are typed too: a wrong one is an error naming it, not a guess."""
    doc = {"node_id": "n1", "samples": 4, **extra}
    with pytest.raises(WireError) as info:
        Hello.decode(json.dumps(doc).encode())
    assert str(info.value) == message


def test_publish_defaults_and_phases() -> None:
    message = Publish("t", b"x")
    assert (message.retain, message.qos) == (False, 1)
    assert PHASES[0] == "waiting" and {"mask", "train", "done", "failed"} <= set(PHASES)
    assert tuple(Phase) == PHASES
