"""Write a deployment kit for one federation into a directory (layout: see the package)."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator.provision.credentials import (
    SECRET_MODE,
    Credentials,
    PasswordHasher,
    acl_text,
    choose_hasher,
    write_file,
    write_password_file,
)
from coordinator.provision.templates import (
    DASHBOARD,
    DEFAULT_BROKER_DIR,
    DEFAULT_CA_FILE,
    DEFAULT_PERSISTENCE_DIR,
    METRICS_PORT,
    UNITS,
    deploy_text,
    env_text,
    federation_toml_text,
    mosquitto_conf_text,
    readme_text,
)
from mpfl.errors import ConfigError
from mpfl.wire.signing import SigningKey, write_enrolment
from mpfl.wire.topics import topic_prefix, validate_name

PUBLIC_MODE = 0o644
_HOST_RE = re.compile(r"[A-Za-z0-9.\-:\[\]]{1,253}")
# Where the kit's key files go on the machines (the env files point the services at them).
COORDINATOR_KEY = "/etc/mpfl/coordinator.key"
ENROLMENT = "/etc/mpfl/enrolled.toml"
NODE_KEY = "/etc/mpfl/node.key"
COORDINATOR_PUB = "/etc/mpfl/coordinator.pub"
# Where the kit's README installs each node's train.npz (made by `mpfl data split`).
NODE_EDGE_ARGS = "--dataset npz --data-dir /var/lib/mpfl/data"


@dataclass(frozen=True)
class ProvisionResult:
    out: Path
    federation: str
    broker_url: str
    coordinator: Credentials
    nodes: Mapping[str, Credentials]
    files: tuple[Path, ...]
    password_tool: str


def _generated_paths(out: Path) -> list[Path]:
    """Files an earlier run of provision may have left in ``out`` (certs/ is the user's)."""
    paths = [out / name for name in ("README.txt", "mosquitto.conf", "passwd", "acl",
                                     "coordinator.env", "coordinator.key", "coordinator.pub",
                                     "enrolled.toml", "federation.toml", DASHBOARD)]
    for pattern in ("*.env", "*.key"):
        paths += sorted((out / "nodes").glob(pattern)) if (out / "nodes").is_dir() else []
    paths += [out / "systemd" / unit for unit in UNITS]
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


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


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
    region: str | None = None,
    broker_ips: Sequence[str] = (),
) -> ProvisionResult:
    """Write a kit for ``nodes`` into ``out`` (see the package docstring for its layout).

    ``broker_dir`` is where passwd, acl and certs/ will live on the gateway (the paths
    written into mosquitto.conf); ``ca_file`` is the CA path the nodes' env files name.
    ``hasher`` picks ``mosquitto_passwd`` when installed (``auto``) or Python's PBKDF2.
    ``region``: the kit of a regional gateway, whose coordinator only reads the server
    topics (the root's, bridged down) and writes under ``nodes/<region>/``.
    ``broker_ips`` are the gateway's addresses, named in the server certificate beside
    ``broker_host`` so that nodes may dial either.
    """
    out = Path(out)
    node_ids = _validate_nodes(nodes, coordinator_user)
    topic_prefix(federation)  # validates the federation name
    url = _broker_url(broker_host, port)
    for address in broker_ips:
        if not _is_ip_address(address):
            raise ConfigError("--broker-ip must be an IP address", broker_ip=address)
    binary = choose_hasher(hasher)
    _prepare_out(out, force)

    coordinator = Credentials.generate(coordinator_user)
    node_creds = {n: Credentials.generate(n) for n in node_ids}
    users = {c.username: c.password for c in [coordinator, *node_creds.values()]}

    written: list[Path] = []

    def emit(relative: str, text: str, mode: int = PUBLIC_MODE) -> None:
        write_file(out / relative, text, mode)
        written.append(out / relative)

    write_password_file(users, out / "passwd", binary)
    written.append(out / "passwd")
    # Identities: the coordinator signs server messages and verifies node ones against the
    # enrolment list; each node signs with its own key. Private keys are written 0600.
    coordinator_key = SigningKey.generate()
    node_keys = {n: SigningKey.generate() for n in node_ids}
    written.append(coordinator_key.save(out / "coordinator.key"))
    written.append(coordinator_key.public_key.save(out / "coordinator.pub"))
    written.append(write_enrolment(out / "enrolled.toml",
                                   {n: k.public_key for n, k in node_keys.items()}))
    written += [key.save(out / "nodes" / f"{n}.key") for n, key in node_keys.items()]
    if region is not None:
        validate_name(region, what="region")
    emit("acl", acl_text(federation, node_ids, coordinator_user, region))
    emit("federation.toml", federation_toml_text(federation, node_ids))
    emit(
        "mosquitto.conf",
        mosquitto_conf_text(port=port, broker_dir=broker_dir, persistence_dir=persistence_dir),
    )
    common = {"MPFL_BROKER": url, "MPFL_FEDERATION": federation}
    emit(
        "coordinator.env",
        env_text(
            "mpfl coordinator -> /etc/mpfl/coordinator.env (owner mpfl, mode 0600)",
            {
                **common,
                "MPFL_USERNAME": coordinator.username,
                "MPFL_PASSWORD": coordinator.password,
                "MPFL_CA_FILE": ca_file,
                "MPFL_KEY": COORDINATOR_KEY,
                "MPFL_ENROLMENT": ENROLMENT,
                # Prometheus metrics on 127.0.0.1 only (grafana-dashboard.json reads them).
                "MPFL_METRICS_PORT": str(METRICS_PORT),
            },
        ),
        SECRET_MODE,
    )
    for node_id, creds in node_creds.items():
        emit(
            f"nodes/{node_id}.env",
            env_text(
                f"mpfl edge node {node_id} -> /etc/mpfl/node.env (owner mpfl, mode 0600)",
                {
                    **common,
                    "MPFL_NODE_ID": node_id,
                    "MPFL_USERNAME": creds.username,
                    "MPFL_PASSWORD": creds.password,
                    "MPFL_CA_FILE": ca_file,
                    "MPFL_KEY": NODE_KEY,
                    "MPFL_COORDINATOR_KEY": COORDINATOR_PUB,
                    # The node's own mpfl-edge flags; the unit splits them at whitespace.
                    "MPFL_EDGE_ARGS": NODE_EDGE_ARGS,
                },
            ),
            SECRET_MODE,
        )
    for unit in UNITS:
        emit(f"systemd/{unit}", deploy_text(unit))
    emit(DASHBOARD, deploy_text(DASHBOARD))
    emit(
        "README.txt",
        readme_text(
            federation=federation,
            broker_url=url,
            broker_host=broker_host,
            broker_dir=broker_dir.rstrip("/"),
            node_ids=node_ids,
            coordinator_user=coordinator_user,
            ca_file=ca_file,
            broker_ips=broker_ips,
            metrics_port=METRICS_PORT,
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

