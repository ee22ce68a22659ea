"""Wire format v1: the binary envelope and the mask and value codecs it carries.

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
from mpfl.wire.values import DELTA, ValueCodec, decode_values, encode_values

__all__ = [
    "CRC_SIZE",
    "DELTA",
    "Envelope",
    "FINGERPRINT_SIZE",
    "HEADER_SIZE",
    "Kind",
    "MAGIC",
    "MAX_NODE_ID_BYTES",
    "MIN_MESSAGE_SIZE",
    "MaskCodec",
    "VERSION",
    "ValueCodec",
    "binary_entropy",
    "decode_envelope",
    "decode_mask",
    "decode_values",
    "encode_envelope",
    "encode_mask",
    "encode_values",
    "message_size",
]
