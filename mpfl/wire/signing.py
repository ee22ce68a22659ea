"""Ed25519 identities: key files, and the keyring a receiver verifies signatures with.

A key file is one line of text: a tag naming what it holds, then the raw 32-byte key in
base64 (``ed25519-private AAAA...`` or ``ed25519-public AAAA...``), so a key can be read,
copied into a TOML file or compared by eye. Private key files are created with mode 0600
before a byte is written. Every problem with a key file is a ``ConfigError`` of one line
that names the file.

The coordinator's enrolment list (``enrolled.toml``) maps each node id to its public key::

    [nodes]
    pi-01 = "base64..."
    pi-02 = "base64..."
"""

from __future__ import annotations

import base64
import binascii
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mpfl.errors import ConfigError
from mpfl.wire import topics

KEY_SIZE = 32
SIGNATURE_SIZE = 64
PRIVATE_TAG = "ed25519-private"
PUBLIC_TAG = "ed25519-public"


def _decode_key(text: str, what: str, source: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source}: {what} is not base64") from None
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"{source}: {what} must be {KEY_SIZE} bytes, got {len(raw)}")
    return raw


def _read_key_file(path: Path, tag: str) -> bytes:
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"{path}: key file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read key file ({exc})") from None
    got_tag, _, body = text.strip().partition(" ")
    if got_tag != tag:
        raise ConfigError(f"{path}: not an {tag} key file (first word must be {tag!r})")
    return _decode_key(body, "the key", str(path))


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key: verifies signatures."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_SIZE:
            raise ConfigError(f"an Ed25519 public key is {KEY_SIZE} bytes, got {len(self.raw)}")

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    @property
    def text(self) -> str:
        """Base64 of the raw key, as ``enrolled.toml`` holds it."""
        return base64.b64encode(self.raw).decode("ascii")

    @classmethod
    def from_text(cls, text: str, source: str = "public key") -> PublicKey:
        return cls(_decode_key(text, "the public key", source))

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        return cls(_read_key_file(path, PUBLIC_TAG))

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(f"{PUBLIC_TAG} {self.text}\n", encoding="ascii")
        return path


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key: signs. Its repr never shows the key."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_SIZE:
            raise ConfigError(f"an Ed25519 private key is {KEY_SIZE} bytes, got {len(self.raw)}")

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    @property
    def public_key(self) -> PublicKey:
        public = Ed25519PrivateKey.from_private_bytes(self.raw).public_key()
        return PublicKey(public.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.raw).sign(message)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        return cls(_read_key_file(path, PRIVATE_TAG))

    def save(self, path: Path) -> Path:
        """Write the key to a new 0600 file (the mode is set at creation, so the key is never
        readable by others, even briefly); an existing file is replaced."""
        path = Path(path)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{PRIVATE_TAG} {base64.b64encode(self.raw).decode('ascii')}\n")
        return path


@dataclass(frozen=True)
class Keyring:
    """The public keys a receiver trusts: the coordinator's (on nodes) and the enrolled
    nodes' (on the coordinator). A signer that is not here is an unknown signer."""

    coordinator: PublicKey | None = None
    nodes: Mapping[str, PublicKey] = field(default_factory=dict)

    def node(self, node_id: str) -> PublicKey | None:
        return self.nodes.get(node_id)

    @classmethod
    def load_enrolment(cls, path: Path) -> Keyring:
        """The coordinator's keyring: ``[nodes] <id> = "<base64 public key>"``."""
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: enrolment file not found") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the enrolment file ({exc})") from None
        table = doc.get("nodes")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: the enrolment file needs a [nodes] table")
        nodes: dict[str, PublicKey] = {}
        for node_id, text in table.items():
            if not isinstance(text, str):
                raise ConfigError(f"{path}: node {node_id!r} must map to a base64 string")
            nodes[topics.validate_node_id(node_id)] = PublicKey.from_text(
                text, f"{path} (node {node_id})")
        return cls(None, nodes)


def write_enrolment(path: Path, nodes: Mapping[str, PublicKey]) -> Path:
    """Write ``enrolled.toml`` (node ids are validated topic levels, so they need no quoting)."""
    lines = ["# Enrolled nodes: node id = Ed25519 public key (base64). Generated by",
             "# `mpfl-coordinator provision`; a node not listed here is never accepted.",
             "[nodes]"]
    lines += [f'{topics.validate_node_id(n)} = "{key.text}"' for n, key in sorted(nodes.items())]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
