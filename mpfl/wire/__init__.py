"""Wire format v1: the binary envelope, the mask and value codecs it carries, and the
typed JSON documents (state, training and model specs, hello) decoded strictly.

Pure functions over bytes and numpy arrays; no network I/O and no torch.
"""

from mpfl.wire.entropy import binary_entropy
from mpfl.wire.envelope import (
    CRC_SIZE,
    FINGERPRINT_SIZE,
    HEADER_SIZE,
    MAGIC,
    MAX_NODE_ID_BYTES,
    MIN_MESSAGE_SIZE,
    VERSION,
    Envelope,
    Kind,
    decode_envelope,
    encode_envelope,
    message_size,
)
from mpfl.wire.masks import MaskCodec, decode_mask, encode_mask
from mpfl.wire.protocol import Hello, StateDocument, decode_state
from mpfl.wire.specs import DEFAULT_TRAIN, ModelSpec, TrainSpec
from mpfl.wire.values import DELTA, ValueCodec, decode_values, encode_values

__all__ = [
    "CRC_SIZE",
    "DEFAULT_TRAIN",
    "DELTA",
    "Envelope",
    "FINGERPRINT_SIZE",
    "HEADER_SIZE",
    "Hello",
    "Kind",
    "MAGIC",
    "MAX_NODE_ID_BYTES",
    "MIN_MESSAGE_SIZE",
    "MaskCodec",
    "ModelSpec",
    "StateDocument",
    "TrainSpec",
    "VERSION",
    "ValueCodec",
    "binary_entropy",
    "decode_envelope",
    "decode_mask",
    "decode_state",
    "decode_values",
    "encode_envelope",
    "encode_mask",
    "encode_values",
    "message_size",
]
