"""Generate a deployment kit for one federation: broker credentials, ACLs, config, env files.

    kit/
      README.txt          what goes where, step by step
      mosquitto.conf      gateway broker config (TLS listener, auth, ACLs, persistence)
      passwd              Mosquitto password file (PBKDF2-SHA512 hashes)
      acl                 per-node topic rights
      coordinator.env     coordinator credentials   -> gateway:/etc/mpfl/coordinator.env
      nodes/<id>.env      one node's credentials    -> node:/etc/mpfl/node.env
      systemd/            the two service units
      certs/              empty: put ca.crt, server.crt, server.key here (see README.txt)

Each node may publish only under ``mpfl/v1/<fed>/nodes/<id>/`` and read ``server/``; the
coordinator reads ``nodes/`` and writes ``server/``. Passwords are random per run, so
re-provisioning (``force=True``) rotates every credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Literal

import click

from mpfl.errors import ConfigError, MpflError
from mpfl.wire.topics import node_filter, nodes_filter, server_filter, topic_prefix, validate_name

PasswordHasher = Literal["auto", "mosquitto_passwd", "builtin"]

# Mosquitto 2.x `mosquitto_passwd` defaults: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte
# salt, stored as `$7$<iterations>$<b64 salt>$<b64 hash>`. The count is low, but the
# passwords are 192-bit random tokens, so offline guessing is hopeless anyway.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
PASSWORD_BYTES = 24

DEFAULT_BROKER_DIR = "/etc/mosquitto/mpfl"
DEFAULT_PERSISTENCE_DIR = "/var/lib/mosquitto/"
DEFAULT_CA_FILE = "/etc/mpfl/ca.crt"

_SECRET_MODE = 0o600
_PUBLIC_MODE = 0o644
_HOST_RE = re.compile(r"[A-Za-z0-9.\-:\[\]]{1,253}")
_UNITS = ("mpfl-edge.service", "mpfl-coordinator.service")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ProvisionResult:
    out: Path
    federation: str
    broker_url: str
    coordinator: Credentials
    nodes: Mapping[str, Credentials]
    files: tuple[Path, ...]
    password_tool: str


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


def _choose_hasher(hasher: PasswordHasher) -> str | None:
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


def _password_file(users: Mapping[str, str], path: Path, binary: str | None) -> None:
    """Write a Mosquitto password file for ``users`` (name -> plaintext password)."""
    if binary is None:
        lines = [f"{user}:{mosquitto_password_hash(pw)}" for user, pw in users.items()]
        _write(path, "\n".join(lines) + "\n", _SECRET_MODE)
        return
    # `mosquitto_passwd -U` hashes a plaintext file in place: unlike `-b user password`,
    # the passwords never appear on a command line where other local users could see them.
    staging = path.with_name(f".{path.name}.plain")
    try:
        _write(staging, "".join(f"{u}:{pw}\n" for u, pw in users.items()), _SECRET_MODE)
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
        os.chmod(path, _SECRET_MODE)
    finally:
        staging.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- content


def acl_text(federation: str, node_ids: Sequence[str], coordinator_user: str) -> str:
    """The Mosquitto ACL file: nodes write their own topics and read the server's."""
    lines = [
        f"# mpfl broker ACL for federation {federation!r} ({topic_prefix(federation)}).",
        "# Anonymous clients are refused by mosquitto.conf (allow_anonymous false).",
        "",
        f"user {coordinator_user}",
        f"topic read {nodes_filter(federation)}",
        f"topic readwrite {server_filter(federation)}",
    ]
    for node_id in node_ids:
        lines += [
            "",
            f"user {node_id}",
            f"topic write {node_filter(federation, node_id)}",
            f"topic read {server_filter(federation)}",
        ]
    return "\n".join(lines) + "\n"


def mosquitto_conf_text(
    *, port: int, broker_dir: str, persistence_dir: str = DEFAULT_PERSISTENCE_DIR
) -> str:
    """The gateway's mosquitto.conf, from the packaged template."""
    template = resources.files("hardware").joinpath("deploy/mosquitto.conf.template")
    base = broker_dir.rstrip("/")
    return Template(template.read_text(encoding="utf-8")).substitute(
        port=port,
        password_file=f"{base}/passwd",
        acl_file=f"{base}/acl",
        cafile=f"{base}/certs/ca.crt",
        certfile=f"{base}/certs/server.crt",
        keyfile=f"{base}/certs/server.key",
        # Mosquitto appends the database file name to this, so it must end with "/".
        persistence_dir=persistence_dir.rstrip("/") + "/",
    )


def _env_text(header: str, values: Mapping[str, str]) -> str:
    return f"# {header}\n" + "".join(f"{key}={value}\n" for key, value in values.items())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _readme_text(
    *,
    federation: str,
    broker_url: str,
    broker_host: str,
    broker_dir: str,
    node_ids: Sequence[str],
    coordinator_user: str,
    ca_file: str,
) -> str:
    first = node_ids[0]
    ca_dir = os.path.dirname(ca_file) or "."
    san = f"{'IP' if _is_ip(broker_host) else 'DNS'}:{broker_host.strip('[]')}"
    return f"""\
mpfl deployment kit -- federation {federation!r}, broker {broker_url}
Nodes: {", ".join(node_ids)}; coordinator user: {coordinator_user}

Files
  mosquitto.conf    gateway: the broker config (TLS listener, passwords, ACLs)
  passwd, acl       gateway: {broker_dir}/ (group mosquitto, mode 0640)
  certs/            gateway: {broker_dir}/certs/ (ca.crt, server.crt, server.key)
  coordinator.env   gateway: /etc/mpfl/coordinator.env (owner mpfl, mode 0600)
  nodes/<id>.env    node <id>: /etc/mpfl/node.env (owner mpfl, mode 0600)
  systemd/          /etc/systemd/system/ on the gateway (coordinator) and nodes (edge)
  ca.crt            every machine: {ca_file} (from certs/, public)

The env files and passwd hold secrets: copy them over SSH, never commit them.
Provisioning again with --force replaces every password.

1. TLS certificates (skip if you have a CA). The server certificate must name
   {broker_host} in its subjectAltName:
     cd certs
     openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
       -keyout ca.key -out ca.crt -days 3650 -subj "/CN=mpfl {federation} CA"
     openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
       -keyout server.key -out server.csr -subj "/CN={broker_host}"
     openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \\
       -days 825 -out server.crt \\
       -extfile <(printf "subjectAltName={san}\\nextendedKeyUsage=serverAuth")
   Keep ca.key offline.

2. Gateway (Mosquitto 2.x + coordinator):
     sudo apt-get install -y mosquitto
     sudo install -d -o root -g mosquitto -m 0750 {broker_dir} {broker_dir}/certs
     sudo install -o root -g mosquitto -m 0640 passwd acl {broker_dir}/
     sudo install -o root -g mosquitto -m 0640 certs/server.key {broker_dir}/certs/
     sudo install -m 0644 certs/ca.crt certs/server.crt {broker_dir}/certs/
     sudo install -m 0644 mosquitto.conf /etc/mosquitto/mosquitto.conf
     sudo systemctl restart mosquitto
     sudo useradd --system --home-dir /var/lib/mpfl --shell /usr/sbin/nologin mpfl
     sudo install -d -m 0755 {ca_dir}
     sudo install -m 0644 certs/ca.crt {ca_file}
     sudo install -o mpfl -m 0600 coordinator.env /etc/mpfl/coordinator.env
     sudo install -m 0644 systemd/mpfl-coordinator.service /etc/systemd/system/
     sudo systemctl daemon-reload && sudo systemctl enable --now mpfl-coordinator

3. Each node, e.g. {first} (64-bit OS, toolkit in /opt/mpfl/venv):
     scp nodes/{first}.env certs/ca.crt systemd/mpfl-edge.service {first}:
     ssh {first}
     sudo useradd --system --home-dir /var/lib/mpfl --shell /usr/sbin/nologin mpfl
     sudo install -d -m 0755 {ca_dir}
     sudo install -m 0644 ca.crt {ca_file}
     sudo install -o mpfl -m 0600 {first}.env /etc/mpfl/node.env
     sudo install -m 0644 mpfl-edge.service /etc/systemd/system/
     sudo systemctl daemon-reload && sudo systemctl enable --now mpfl-edge
     rm {first}.env
   Logs: journalctl -u mpfl-edge -f
"""


# ------------------------------------------------------------------------------- files


def _write(path: Path, text: str, mode: int) -> None:
    """Write ``text``; the file has ``mode`` from its first byte (secrets never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # an existing file keeps its old mode through O_CREAT
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _generated_paths(out: Path) -> list[Path]:
    """Files an earlier run of provision may have left in ``out`` (certs/ is the user's)."""
    paths = [out / name for name in ("README.txt", "mosquitto.conf", "passwd", "acl")]
    paths.append(out / "coordinator.env")
    paths += sorted((out / "nodes").glob("*.env")) if (out / "nodes").is_dir() else []
    paths += [out / "systemd" / unit for unit in _UNITS]
    return paths


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("kit output path exists and is not a directory", out=str(out))
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(
                "kit directory is not empty (use --force to replace the kit)", out=str(out)
            )
        for path in _generated_paths(out):
            path.unlink(missing_ok=True)
    for directory in (out, out / "nodes", out / "systemd", out / "certs"):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _validate_nodes(nodes: Sequence[str], coordinator_user: str) -> list[str]:
    if isinstance(nodes, str):
        raise ConfigError("nodes must be a sequence of node ids, not one string")
    node_ids = [validate_name(n, what="node id") for n in nodes]
    if not node_ids:
        raise ConfigError("at least one node id is needed")
    duplicates = sorted(n for n, count in Counter(node_ids).items() if count > 1)
    if duplicates:
        raise ConfigError(f"duplicate node ids: {', '.join(duplicates)}")
    validate_name(coordinator_user, what="coordinator user")
    if coordinator_user in node_ids:
        raise ConfigError("a node id equals the coordinator user name", node=coordinator_user)
    return node_ids


def _broker_url(host: str, port: int) -> str:
    if not _HOST_RE.fullmatch(host):
        raise ConfigError("invalid broker host", host=repr(host))
    if not 1 <= port <= 65535:
        raise ConfigError("port must be 1-65535", port=port)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal in a URL
    return f"mqtts://{host}:{port}"


def provision(
    nodes: Sequence[str],
    out: Path,
    *,
    federation: str = "default",
    broker_host: str = "gateway.local",
    port: int = 8883,
    coordinator_user: str = "coordinator",
    force: bool = False,
    broker_dir: str = DEFAULT_BROKER_DIR,
    persistence_dir: str = DEFAULT_PERSISTENCE_DIR,
    ca_file: str = DEFAULT_CA_FILE,
    hasher: PasswordHasher = "auto",
) -> ProvisionResult:
    """Write a kit for ``nodes`` into ``out`` (see the module docstring for its layout).

    ``broker_dir`` is where passwd, acl and certs/ will live on the gateway (the paths
    written into mosquitto.conf); ``ca_file`` is the CA path the nodes' env files name.
    ``hasher`` picks ``mosquitto_passwd`` when installed (``auto``) or Python's PBKDF2.
    """
    out = Path(out)
    node_ids = _validate_nodes(nodes, coordinator_user)
    topic_prefix(federation)  # validates the federation name
    url = _broker_url(broker_host, port)
    binary = _choose_hasher(hasher)
    _prepare_out(out, force)

    coordinator = Credentials(coordinator_user, secrets.token_urlsafe(PASSWORD_BYTES))
    node_creds = {n: Credentials(n, secrets.token_urlsafe(PASSWORD_BYTES)) for n in node_ids}
    users = {c.username: c.password for c in [coordinator, *node_creds.values()]}

    written: list[Path] = []

    def emit(relative: str, text: str, mode: int = _PUBLIC_MODE) -> None:
        _write(out / relative, text, mode)
        written.append(out / relative)

    _password_file(users, out / "passwd", binary)
    written.append(out / "passwd")
    emit("acl", acl_text(federation, node_ids, coordinator_user))
    emit(
        "mosquitto.conf",
        mosquitto_conf_text(port=port, broker_dir=broker_dir, persistence_dir=persistence_dir),
    )
    common = {"MPFL_BROKER": url, "MPFL_FEDERATION": federation}
    emit(
        "coordinator.env",
        _env_text(
            "mpfl coordinator -> /etc/mpfl/coordinator.env (owner mpfl, mode 0600)",
            {
                **common,
                "MPFL_USERNAME": coordinator.username,
                "MPFL_PASSWORD": coordinator.password,
                "MPFL_CA_FILE": ca_file,
            },
        ),
        _SECRET_MODE,
    )
    for node_id, creds in node_creds.items():
        emit(
            f"nodes/{node_id}.env",
            _env_text(
                f"mpfl edge node {node_id} -> /etc/mpfl/node.env (owner mpfl, mode 0600)",
                {
                    **common,
                    "MPFL_NODE_ID": node_id,
                    "MPFL_USERNAME": creds.username,
                    "MPFL_PASSWORD": creds.password,
                    "MPFL_CA_FILE": ca_file,
                },
            ),
            _SECRET_MODE,
        )
    deploy = resources.files("hardware").joinpath("deploy")
    for unit in _UNITS:
        emit(f"systemd/{unit}", deploy.joinpath(unit).read_text(encoding="utf-8"))
    emit(
        "README.txt",
        _readme_text(
            federation=federation,
            broker_url=url,
            broker_host=broker_host,
            broker_dir=broker_dir.rstrip("/"),
            node_ids=node_ids,
            coordinator_user=coordinator_user,
            ca_file=ca_file,
        ),
    )
    return ProvisionResult(
        out=out,
        federation=federation,
        broker_url=url,
        coordinator=coordinator,
        nodes=node_creds,
        files=tuple(written),
        password_tool="mosquitto_passwd" if binary else "builtin",
    )


# -------------------------------------------------------------------------------- CLI


@click.command("provision")
@click.option("--nodes", required=True, help="Comma-separated node ids, e.g. pi-01,pi-02.")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory to write the kit into.",
)
@click.option("--federation", default="default", show_default=True)
@click.option(
    "--broker-host",
    default="gateway.local",
    show_default=True,
    help="Host name the nodes connect to (must match the server certificate).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True)
@click.option("--coordinator-user", default="coordinator", show_default=True)
@click.option(
    "--broker-dir",
    default=DEFAULT_BROKER_DIR,
    show_default=True,
    help="Where passwd, acl and certs/ go on the gateway.",
)
@click.option("--force", is_flag=True, help="Replace an existing kit (rotates every password).")
def provision_command(
    nodes: str,
    out: Path,
    federation: str,
    broker_host: str,
    port: int,
    coordinator_user: str,
    broker_dir: str,
    force: bool,
) -> None:
    """Generate broker credentials, ACLs, config and per-node env files for a fleet."""
    try:
        result = provision(
            [n.strip() for n in nodes.split(",")],
            out,
            federation=federation,
            broker_host=broker_host,
            port=port,
            coordinator_user=coordinator_user,
            force=force,
            broker_dir=broker_dir,
        )
    except MpflError as err:
        click.echo(f"error: {err}", err=True)
        raise SystemExit(err.exit_code) from None
    click.echo(
        f"wrote a kit for {len(result.nodes)} nodes of federation {result.federation!r} "
        f"(broker {result.broker_url}) to {result.out}/"
    )
    click.echo(f"passwords hashed with {result.password_tool}; secrets are in *.env (mode 0600)")
    click.echo(
        f"next: put ca.crt, server.crt, server.key in {result.out / 'certs'}/ and "
        f"follow {result.out / 'README.txt'}"
    )
