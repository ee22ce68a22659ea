"""The signed frame: any payload (binary envelope or JSON document) as it goes on the wire.

All integers are little-endian and unsigned. The layout, in order:

    offset      size  field
    0           4     magic            b"MPFS"
    4           1     version          1
    5           1     signer length    S, 1..64
    6           1     session length   E, 0..64 (0: the sender knows no session yet)
    7           1     reserved         must be 0
    8           4     round            the round the payload belongs to (0: none)
    12          8     counter          per sender, strictly increasing
    20          4     payload length   L
    24          S     signer           ASCII: a node id, or "coordinator"
    24+S        E     session          ASCII: the coordinator session the sender is in
    24+S+E      L     payload          the message itself, unchanged
    end-64      64    signature        Ed25519

The signature covers ``DOMAIN``, the MQTT topic (u16 length, then UTF-8) and every byte
of the frame before the signature. Binding the topic (which carries the federation
prefix and, for node messages, the node id) means a valid message copied to another
topic, another federation or another node's topic fails; the counter and the session make
a replay fail; the domain tag keeps these signatures from being valid for anything else
signed with the same key. Decoding is strict: one byte too few or too many is an error.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from mpfl.errors import WireError
from mpfl.wire.signing import SIGNATURE_SIZE, PublicKey, SigningKey

MAGIC = b"MPFS"
VERSION = 1
DOMAIN = b"mpfl/signed-frame/v1\x00"
COORDINATOR = "coordinator"  # the signer id of every server message
MAX_ID = 64

# magic, version, signer length, session length, reserved, round, counter, payload length
_HEADER = struct.Struct("<4sBBBBIQI")
_TOPIC_LEN = struct.Struct("<H")
HEADER_SIZE = _HEADER.size  # 24
_ID_RE = re.compile(rb"[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Frame:
    signer: str
    session: str
    round: int
    counter: int
    payload: bytes

    def header(self) -> bytes:
        signer, session = self.signer.encode("ascii"), self.session.encode("ascii")
        if not 1 <= len(signer) <= MAX_ID or len(session) > MAX_ID:
            raise WireError("frame signer must be 1-64 and session 0-64 ASCII characters")
        if not 0 <= self.round <= 0xFFFF_FFFF or not 0 <= self.counter < 1 << 64:
            raise WireError("frame round must fit a u32 and counter a u64")
        fixed = _HEADER.pack(MAGIC, VERSION, len(signer), len(session), 0, self.round,
                             self.counter, len(self.payload))
        return fixed + signer + session


def signed_bytes(topic: str, body: bytes) -> bytes:
    """What the signature covers: domain tag, topic, then the frame up to the signature."""
    encoded = topic.encode("utf-8")
    return DOMAIN + _TOPIC_LEN.pack(len(encoded)) + encoded + body


def seal_frame(key: SigningKey, topic: str, frame: Frame) -> bytes:
    body = frame.header() + frame.payload
    return body + key.sign(signed_bytes(topic, body))


def is_framed(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def decode_frame(data: bytes) -> tuple[Frame, bytes, bytes]:
    """``(frame, signed body, signature)``; a WireError for anything that is not exactly a
    frame. Says nothing about whether the signature is valid (see ``verify_frame``)."""
    if len(data) < HEADER_SIZE + 1 + SIGNATURE_SIZE:
        raise WireError("signed frame too short", size=len(data))
    magic, version, s_len, e_len, reserved, rnd, counter, p_len = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("not a signed frame (bad magic)")
    if version != VERSION:
        raise WireError("unsupported signed frame version", version=version)
    if reserved != 0:
        raise WireError("signed frame reserved byte must be 0")
    if not 1 <= s_len <= MAX_ID or e_len > MAX_ID:
        raise WireError("signed frame id lengths out of range", signer=s_len, session=e_len)
    end = HEADER_SIZE + s_len + e_len + p_len
    if len(data) != end + SIGNATURE_SIZE:
        raise WireError("signed frame length does not match its header", size=len(data),
                        expected=end + SIGNATURE_SIZE)
    signer = data[HEADER_SIZE : HEADER_SIZE + s_len]
    session = data[HEADER_SIZE + s_len : HEADER_SIZE + s_len + e_len]
    if not _ID_RE.fullmatch(signer) or not _ID_RE.fullmatch(session):
        raise WireError("signed frame ids must be letters, digits, '-' or '_'")
    frame = Frame(signer.decode("ascii"), session.decode("ascii"), rnd, counter,
                  data[HEADER_SIZE + s_len + e_len : end])
    return frame, data[:end], data[end:]


def verify_frame(key: PublicKey, topic: str, body: bytes, signature: bytes) -> bool:
    return key.verify(signature, signed_bytes(topic, body))
