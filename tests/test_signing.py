"""Keys, the signed frame and the Sealer/Opener pair: golden bytes and every rejection."""

from __future__ import annotations

import dataclasses
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpfl.errors import ConfigError, WireError
from mpfl.wire import encode_envelope, topics
from mpfl.wire.envelope import Envelope, Kind
from mpfl.wire.frame import COORDINATOR, HEADER_SIZE, Frame, decode_frame, seal_frame
from mpfl.wire.protocol import OFFLINE, Publish
from mpfl.wire.seal import MessageCounter, Opened, Opener, Reject, Rejected, Sealer, payload_round
from mpfl.wire.signing import Keyring, PublicKey, SigningKey, write_enrolment

FED = "fed"
TEST_KEY = SigningKey(bytes(range(32)))  # fixed: Ed25519 is deterministic, so are the bytes
STATUS = topics.node_topic(FED, "pi-01", topics.NODE_STATUS)

GOLDEN = bytes.fromhex(
    "4d504653"  # magic "MPFS"
    "01" "05" "08" "00"  # version, signer length, session length, reserved
    "03000000"  # round 3
    "0807060504030201"  # counter 0x0102030405060708
    "0b000000"  # payload length 11
    "70692d3031"  # "pi-01"
    "6162313263643334"  # "ab12cd34"
    "7b22726f756e64223a337d"  # b'{"round":3}'
    "190314114093c67d887d5d0cdd26607fcb0566cf199934b8627c069577ce6cc1"
    "917474c83377a6d49446c66bb9978a94e1dd62fb21762d133ff72dfc646d2301"
)


def test_golden_frame_bytes() -> None:
    frame = Frame("pi-01", "ab12cd34", 3, 0x0102030405060708, b'{"round":3}')
    assert TEST_KEY.public_key.text == "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
    assert seal_frame(TEST_KEY, STATUS, frame) == GOLDEN
    decoded, body, signature = decode_frame(GOLDEN)
    assert decoded == frame and len(signature) == 64 and body == GOLDEN[:-64]
    assert HEADER_SIZE == 24


@pytest.mark.parametrize("cut", [1, 64, len(GOLDEN) - 1])
def test_truncated_or_padded_frames_do_not_decode(cut: int) -> None:
    with pytest.raises(WireError):
        decode_frame(GOLDEN[:-cut])
    with pytest.raises(WireError):
        decode_frame(GOLDEN + b"\0")


# -- keys ---------------------------------------------------------------------------------


def test_key_files_round_trip_and_private_is_0600(tmp_path) -> None:
    key = SigningKey.generate()
    path = key.save(tmp_path / "node.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert SigningKey.load(path) == key
    pub = key.public_key.save(tmp_path / "node.pub")
    assert PublicKey.load(pub) == key.public_key
    assert key.raw.hex() not in repr(key) and str(key.raw) not in repr(key)


@pytest.mark.parametrize("text", ["", "ed25519-private", "ed25519-private !!!",
                                  "ed25519-private AAAA", "ed25519-public " + "A" * 44])
def test_malformed_key_files_name_the_file(tmp_path, text: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        SigningKey.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_key_file_names_the_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="missing.key: key file not found"):
        SigningKey.load(tmp_path / "missing.key")


def test_enrolment_round_trip_and_errors(tmp_path) -> None:
    keys = {n: SigningKey.generate().public_key for n in ("pi-01", "pi-02")}
    ring = Keyring.load_enrolment(write_enrolment(tmp_path / "enrolled.toml", keys))
    assert dict(ring.nodes) == keys
    bad = tmp_path / "bad.toml"
    bad.write_text('[nodes]\n"no/slash" = "AAAA"\n')
    with pytest.raises(ConfigError):
        Keyring.load_enrolment(bad)
    bad.write_text('[nodes]\npi-01 = "AAAA"\n')
    with pytest.raises(ConfigError, match="bad.toml"):
        Keyring.load_enrolment(bad)
    with pytest.raises(ConfigError, match="enrolment file not found"):
        Keyring.load_enrolment(tmp_path / "none.toml")


# -- Sealer and Opener --------------------------------------------------------------------

NODE_KEY, COORD_KEY, OTHER_KEY = (SigningKey(bytes([i]) * 32) for i in (1, 2, 3))
SESSION = "s1"


def coordinator_opener() -> Opener:
    ring = Keyring(None, {"pi-01": NODE_KEY.public_key, "pi-02": OTHER_KEY.public_key})
    return Opener(ring, FED, session=lambda: SESSION)


def node_sealer(start: int = 1000) -> Sealer:
    return Sealer(NODE_KEY, "pi-01", SESSION, MessageCounter(start))


def upload(round_: int = 2, node: str = "pi-01") -> Publish:
    env = Envelope(Kind.UPDATE, round_, b"\1" * 8, node, 0, b"values")
    return Publish(topics.node_topic(FED, node, topics.NODE_UPDATE), encode_envelope(env))


def reason(result: Opened | Rejected) -> Reject | None:
    return result.reason if isinstance(result, Rejected) else None


def test_a_sealed_upload_opens_to_the_same_payload() -> None:
    message = upload()
    opened = coordinator_opener().open(message.topic, node_sealer().seal(message).payload)
    assert isinstance(opened, Opened)
    assert opened.payload == message.payload and opened.frame.round == 2


def test_every_rejection_reason() -> None:
    opener, sealer, message = coordinator_opener(), node_sealer(), upload()
    sealed = sealer.seal(message)
    assert reason(opener.open(message.topic, message.payload)) is Reject.UNSIGNED
    assert reason(opener.open(message.topic, sealed.payload[:-1])) is Reject.BAD_FRAME
    # the same message re-topicked, on another node's topic or outside the federation
    other = topics.node_topic(FED, "pi-02", topics.NODE_UPDATE)
    assert reason(opener.open(other, sealed.payload)) is Reject.WRONG_TOPIC
    assert reason(opener.open("mpfl/v1/fed/server/state", sealed.payload)) is Reject.WRONG_TOPIC
    moved = topics.node_topic(FED, "pi-01", topics.NODE_MASK)
    assert reason(opener.open(moved, sealed.payload)) is Reject.BAD_SIGNATURE
    # an unenrolled id signing its own messages with its own key
    ghost = Sealer(OTHER_KEY, "ghost", SESSION).seal(upload(node="ghost"))
    assert reason(opener.open(ghost.topic, ghost.payload)) is Reject.UNKNOWN_SIGNER
    # pi-01's topic and id, signed with someone else's key
    forged = Sealer(OTHER_KEY, "pi-01", SESSION).seal(message)
    assert reason(opener.open(message.topic, forged.payload)) is Reject.BAD_SIGNATURE
    assert isinstance(opener.open(message.topic, sealed.payload), Opened)
    assert reason(opener.open(message.topic, sealed.payload)) is Reject.REPLAY
    older = node_sealer(start=10).seal(message)
    assert reason(opener.open(message.topic, older.payload)) is Reject.REPLAY
    stale = Sealer(NODE_KEY, "pi-01", "old-session", MessageCounter(5000)).seal(message)
    assert reason(opener.open(message.topic, stale.payload)) is Reject.WRONG_SESSION
    lying = seal_frame(NODE_KEY, message.topic, Frame("pi-01", SESSION, 7, 6000, message.payload))
    assert reason(opener.open(message.topic, lying)) is Reject.WRONG_ROUND


def test_other_federations_topic_fails() -> None:
    message = upload()
    sealed = node_sealer().seal(message)
    elsewhere = topics.node_topic("fed2", "pi-01", topics.NODE_UPDATE)
    ring = Keyring(None, {"pi-01": NODE_KEY.public_key})
    assert reason(Opener(ring, "fed2", lambda: SESSION).open(elsewhere, sealed.payload)) is (
        Reject.BAD_SIGNATURE)


def test_the_will_has_its_own_replay_slot_and_no_session() -> None:
    opener = coordinator_opener()
    sealer = Sealer(NODE_KEY, "pi-01", "", MessageCounter(100))
    will = sealer.seal(Publish(STATUS, OFFLINE, retain=True))  # at connect: no session yet
    sealer.session = SESSION
    hello = sealer.seal(Publish(STATUS, b'{"node_id":"pi-01","samples":5}', retain=True))
    assert isinstance(opener.open(STATUS, hello.payload), Opened)
    assert isinstance(opener.open(STATUS, will.payload), Opened)  # older than the hello
    assert reason(opener.open(STATUS, will.payload)) is Reject.REPLAY
    # a will does not pass for a hello: its signature covers "offline"
    tampered = will.payload.replace(OFFLINE, b"offlinf")
    assert reason(opener.open(STATUS, tampered)) is Reject.BAD_SIGNATURE


def test_a_node_takes_the_session_from_the_newest_server_frame() -> None:
    ring = Keyring(COORD_KEY.public_key, {})
    opener = Opener(ring, FED)
    state = topics.server_topic(FED, topics.SERVER_STATE)
    model = topics.server_topic(FED, topics.SERVER_MODEL)
    new = Sealer(COORD_KEY, COORDINATOR, "new", MessageCounter(200))
    old = Sealer(COORD_KEY, COORDINATOR, "old", MessageCounter(100))
    assert isinstance(opener.open(state, new.seal(Publish(state, b'{"round":1}')).payload), Opened)
    # an older retained model of the same process arrives after the state: still taken
    assert isinstance(opener.open(model, old.seal(Publish(model, b"x")).payload), Opened)
    assert opener.session == "new"
    node_signed = Sealer(NODE_KEY, COORDINATOR, "new").seal(Publish(state, b"{}"))
    assert reason(opener.open(state, node_signed.payload)) is Reject.BAD_SIGNATURE
    assert reason(opener.open(STATUS, node_signed.payload)) is Reject.WRONG_TOPIC


def test_payload_round() -> None:
    assert payload_round(upload(9).payload) == 9
    assert payload_round(b'{"round": 4, "x": 1}') == 4
    for junk in (b"", b"{", b'{"round": true}', b'{"round": -1}', b"[1]", OFFLINE, b"MPFL"):
        assert payload_round(junk) == 0


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_byte_change_is_rejected(data: st.DataObject) -> None:
    message = upload()
    sealed = bytearray(node_sealer().seal(message).payload)
    i = data.draw(st.integers(0, len(sealed) - 1))
    sealed[i] ^= data.draw(st.integers(1, 255))
    assert isinstance(coordinator_opener().open(message.topic, bytes(sealed)), Rejected)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    result = coordinator_opener().open(upload().topic, b"MPFS" + payload)
    assert isinstance(result, Rejected)


def test_frame_field_limits() -> None:
    with pytest.raises(WireError):
        Frame("", "", 0, 0, b"").header()
    with pytest.raises(WireError):
        dataclasses.replace(Frame("a", "", 0, 0, b""), round=1 << 32).header()
