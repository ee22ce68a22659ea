"""Who may log in and what each may touch: random passwords, Mosquitto hashes, the ACL.

Passwords are 192-bit random tokens, so re-provisioning rotates every one. The password
file is hashed by ``mosquitto_passwd`` when it is installed, else by the same PBKDF2 in
Python; files holding secrets are created with mode 0600 from their first byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mpfl.errors import ConfigError, MpflError
from mpfl.wire.topics import node_filter, nodes_filter, server_filter, topic_prefix

PasswordHasher = Literal["auto", "mosquitto_passwd", "builtin"]

# Mosquitto 2.x `mosquitto_passwd` defaults: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte
# salt, stored as `$7$<iterations>$<b64 salt>$<b64 hash>`. The count is low, but the
# passwords are 192-bit random tokens, so offline guessing is hopeless anyway.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
PASSWORD_BYTES = 24

SECRET_MODE = 0o600


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def generate(cls, username: str) -> Credentials:
        """A user with a fresh random password."""
        return cls(username, secrets.token_urlsafe(PASSWORD_BYTES))


def write_file(path: Path, text: str, mode: int) -> None:
    """Write ``text``; the file has ``mode`` from its first byte (secrets never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # an existing file keeps its old mode through O_CREAT
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- password hashes


def mosquitto_password_hash(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Hash a password the way Mosquitto 2.x does (``$7$``: PBKDF2-HMAC-SHA512)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_mosquitto_password(password: str, encoded: str) -> bool:
    """Check a password against a ``$7$`` hash from a Mosquitto password file."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(parts[2]))
    return hmac.compare_digest(digest, expected)


def choose_hasher(hasher: PasswordHasher) -> str | None:
    """Path of mosquitto_passwd to use, or None for the built-in hash."""
    if hasher not in ("auto", "mosquitto_passwd", "builtin"):
        raise ConfigError("unknown password hasher", hasher=hasher)
    if hasher == "builtin":
        return None
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"])
    binary = shutil.which("mosquitto_passwd", path=search)
    if hasher == "mosquitto_passwd" and binary is None:
        raise ConfigError("mosquitto_passwd is not installed (use the built-in hasher)")
    return binary


def write_password_file(users: Mapping[str, str], path: Path, binary: str | None) -> None:
    """Write a Mosquitto password file for ``users`` (name -> plaintext password)."""
    if binary is None:
        lines = [f"{user}:{mosquitto_password_hash(pw)}" for user, pw in users.items()]
        write_file(path, "\n".join(lines) + "\n", SECRET_MODE)
        return
    # `mosquitto_passwd -U` hashes a plaintext file in place: unlike `-b user password`,
    # the passwords never appear on a command line where other local users could see them.
    staging = path.with_name(f".{path.name}.plain")
    try:
        write_file(staging, "".join(f"{u}:{pw}\n" for u, pw in users.items()), SECRET_MODE)
        done = subprocess.run(
            [binary, "-U", str(staging)], capture_output=True, text=True, timeout=60, check=False
        )
        hashed = staging.read_text(encoding="utf-8").splitlines()
        if done.returncode != 0 or [line.split(":", 1)[0] for line in hashed] != list(users):
            raise MpflError(
                "mosquitto_passwd could not hash the password file",
                returncode=done.returncode,
                stderr=done.stderr.strip() or None,
            )
        if any(line.split(":", 1)[1] in users.values() for line in hashed):
            raise MpflError("mosquitto_passwd left a password in plain text")
        os.replace(staging, path)
        os.chmod(path, SECRET_MODE)
    finally:
        staging.unlink(missing_ok=True)


def acl_text(federation: str, node_ids: Sequence[str], coordinator_user: str,
             region: str | None = None) -> str:
    """The Mosquitto ACL file: nodes write their own topics and read the server's. On a
    regional gateway (``region``) the server topics come down the bridge from the root:
    the regional coordinator only reads them, and writes under its own node topics."""
    lines = [
        f"# mpfl broker ACL for federation {federation!r} ({topic_prefix(federation)}).",
        "# Anonymous clients are refused by mosquitto.conf (allow_anonymous false).",
        "",
        f"user {coordinator_user}",
        f"topic read {nodes_filter(federation)}",
    ]
    if region is None:
        lines.append(f"topic readwrite {server_filter(federation)}")
    else:
        lines += [f"topic read {server_filter(federation)}",
                  f"topic write {node_filter(federation, region)}"]
    for node_id in node_ids:
        lines += [
            "",
            f"user {node_id}",
            f"topic write {node_filter(federation, node_id)}",
            f"topic read {server_filter(federation)}",
        ]
    return "\n".join(lines) + "\n"
