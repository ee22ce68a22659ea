"""The kit's text files: mosquitto.conf, env files, README, the systemd units.

The broker config and the units are templates in ``coordinator/deploy/`` (package data),
read through ``importlib.resources`` so they work from a wheel as from a checkout.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from string import Template

from mpfl.wire import topics

DEFAULT_BROKER_DIR = "/etc/mosquitto/mpfl"
DEFAULT_PERSISTENCE_DIR = "/var/lib/mosquitto/"
DEFAULT_CA_FILE = "/etc/mpfl/ca.crt"
UNITS = ("mpfl-edge.service", "mpfl-coordinator.service")
DASHBOARD = "grafana-dashboard.json"
METRICS_PORT = 9108  # the coordinator's Prometheus endpoint in a kit (127.0.0.1 only)


def _deploy_file(name: str) -> Traversable:
    return resources.files("coordinator").joinpath("deploy", name)


def deploy_text(name: str) -> str:
    """A file of ``coordinator/deploy`` as shipped (a systemd unit, the dashboard)."""
    return _deploy_file(name).read_text(encoding="utf-8")


def mosquitto_conf_text(
    *, port: int, broker_dir: str, persistence_dir: str = DEFAULT_PERSISTENCE_DIR
) -> str:
    """The gateway's mosquitto.conf, from the packaged template."""
    template = _deploy_file("mosquitto.conf.template")
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


def bridge_conf_text(
    *, federation: str, region: str, upstream_host: str, upstream_port: int,
    username: str | None = None, password: str | None = None, cafile: str | None = None,
) -> str:
    """The ``connection`` bridge a regional broker appends to its mosquitto.conf, from the
    packaged template: the root's server topics down, the region's own topics up."""
    auth = []
    if username is not None:
        auth.append(f"remote_username {username}")
    if password is not None:
        auth.append(f"remote_password {password}")
    if cafile is not None:
        auth.append(f"bridge_cafile {cafile}")
    template = _deploy_file("mosquitto-bridge.conf.template")
    return Template(template.read_text(encoding="utf-8")).substitute(
        federation=topics.validate_name(federation, what="federation"),
        region=topics.validate_node_id(region), upstream_host=upstream_host,
        upstream_port=upstream_port, auth="\n".join(auth),
    ).rstrip("\n") + "\n"


def env_text(header: str, values: Mapping[str, str]) -> str:
    return f"# {header}\n" + "".join(f"{key}={value}\n" for key, value in values.items())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def subject_alt_names(broker_host: str, broker_ips: Sequence[str] = ()) -> str:
    """``DNS:gateway.local,IP:192.0.2.10``: every name and address the nodes may dial. A
    certificate with only the DNS name fails a node that connects by IP, and vice versa."""
    host = broker_host.strip("[]")
    names = [f"{'IP' if _is_ip(host) else 'DNS'}:{host}"]
    names += [f"IP:{ip.strip('[]')}" for ip in broker_ips if ip.strip("[]") != host]
    return ",".join(names)


def federation_toml_text(federation: str, node_ids: Sequence[str]) -> str:
    """The coordinator's settings (``--config /etc/mpfl/federation.toml`` in its unit)."""
    nodes = len(node_ids)
    quorum = max(1, nodes - 1)
    return f"""\
# mpfl federation settings -> /etc/mpfl/federation.toml on the gateway (mode 0644).
# Every key is listed with its default by `mpfl-coordinator run --help`; `mpfl config show
# --config /etc/mpfl/federation.toml` prints the effective values and where each came from.
# A MPFL_<KEY> line in coordinator.env overrides a key here (e.g. MPFL_MIN_NODES=4).
federation = "{federation}"
# lenet5 is made for 1x28x28 images (MNIST); `mpfl models` lists the zoo.
model = "lenet5"
granularity = "filter"
final_sparsity = 0.8
mask_rounds = 5
train_rounds = 20
# Round 1 starts once this many nodes said hello; a round closes at its deadline
# (round_timeout seconds) with at least quorum answers.
min_nodes = {nodes}
quorum = {quorum}
round_timeout = 600.0
"""


def readme_text(
    *,
    federation: str,
    broker_url: str,
    broker_host: str,
    broker_dir: str,
    node_ids: Sequence[str],
    coordinator_user: str,
    ca_file: str,
    broker_ips: Sequence[str] = (),
    metrics_port: int = METRICS_PORT,
) -> str:
    first = node_ids[0]
    ca_dir = os.path.dirname(ca_file) or "."
    etc_dirs = " ".join(dict.fromkeys(["/etc/mpfl", ca_dir]))
    san = subject_alt_names(broker_host, broker_ips)
    by_ip = "" if broker_ips or _is_ip(broker_host) else (
        "\n   Nodes that dial the gateway by its IP address need it in the certificate too:"
        "\n   provision again with --broker-ip ADDRESS (repeatable), or append ,IP:ADDRESS.")
    return f"""\
mpfl deployment kit -- federation {federation!r}, broker {broker_url}
Nodes: {", ".join(node_ids)}; coordinator user: {coordinator_user}

Files
  mosquitto.conf    gateway: /etc/mosquitto/mosquitto.conf
  passwd, acl       gateway: {broker_dir}/ (owner root, group mosquitto, mode 0640:
                    Mosquitto runs as user mosquitto and must read them)
  certs/            gateway: {broker_dir}/certs/ (ca.crt, server.crt, server.key)
  federation.toml   gateway: /etc/mpfl/federation.toml: the federation's settings, which
                    the coordinator unit reads (--config)
  coordinator.env   gateway: /etc/mpfl/coordinator.env (owner mpfl, mode 0600)
  coordinator.key   gateway: /etc/mpfl/coordinator.key (owner mpfl, mode 0600): signs
                    every server message
  enrolled.toml     gateway: /etc/mpfl/enrolled.toml: the nodes' public keys; a node
                    not listed there is never accepted
  coordinator.pub   every node: /etc/mpfl/coordinator.pub (public)
  nodes/<id>.env    node <id>: /etc/mpfl/node.env (owner mpfl, mode 0600); its
                    MPFL_EDGE_ARGS line holds the node's own flags (data, --hardware)
  nodes/<id>.key    node <id>: /etc/mpfl/node.key (owner mpfl, mode 0600): signs its
                    messages
  systemd/          /etc/systemd/system/ on the gateway (coordinator) and nodes (edge)
  grafana-dashboard.json  import into Grafana (step 5)
  ca.crt            every machine: {ca_file} (from certs/, public)

The env files, the *.key files and passwd hold secrets: copy them over SSH, never commit
them. Provisioning again with --force replaces every password and every key. The env
files name the key files (MPFL_KEY, MPFL_ENROLMENT, MPFL_COORDINATOR_KEY), which the
services read as --key / --enrolment / --coordinator-key: every message is signed and
checked, so a client on the broker cannot pose as a node or the coordinator.

1. TLS certificates, from this directory (skip if you have a CA). The server certificate
   names every host name and address the nodes dial ({san}):
     cd certs
     openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
       -keyout ca.key -out ca.crt -days 3650 -subj "/CN=mpfl {federation} CA"
     openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
       -keyout server.key -out server.csr -subj "/CN={broker_host.strip('[]')}"
     openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \\
       -days 825 -out server.crt \\
       -extfile <(printf "subjectAltName={san}\\nextendedKeyUsage=serverAuth")
     cd ..
   Keep ca.key offline.{by_ip}

2. Gateway (Mosquitto 2.x + coordinator), from this directory:
     sudo apt-get install -y mosquitto
     sudo install -d -o root -g mosquitto -m 0750 {broker_dir} {broker_dir}/certs
     sudo install -o root -g mosquitto -m 0640 passwd acl {broker_dir}/
     sudo install -o root -g mosquitto -m 0640 certs/server.key {broker_dir}/certs/
     sudo install -m 0644 certs/ca.crt certs/server.crt {broker_dir}/certs/
     sudo install -m 0644 mosquitto.conf /etc/mosquitto/mosquitto.conf
     sudo systemctl restart mosquitto
     sudo useradd --system --home-dir /var/lib/mpfl --shell /usr/sbin/nologin mpfl
     sudo install -d -m 0755 {etc_dirs}
     sudo install -m 0644 certs/ca.crt {ca_file}
     sudo install -m 0644 federation.toml /etc/mpfl/federation.toml
     sudo install -o mpfl -m 0600 coordinator.env /etc/mpfl/coordinator.env
     sudo install -o mpfl -m 0600 coordinator.key /etc/mpfl/coordinator.key
     sudo install -m 0644 enrolled.toml /etc/mpfl/enrolled.toml
     sudo install -m 0644 systemd/mpfl-coordinator.service /etc/systemd/system/
     sudo systemctl daemon-reload && sudo systemctl enable --now mpfl-coordinator
   Check it: mpfl config show --config /etc/mpfl/federation.toml
             journalctl -u mosquitto -u mpfl-coordinator -f

3. Each node's training data, made once on a machine that holds the dataset (here MNIST
   under ~/datasets/mnist): every node's share, normalised, as the arrays x (N x C x H x W
   float32) and y (labels) in data/<id>/train.npz:
     mpfl data split --dataset mnist --data-dir ~/datasets --nodes {",".join(node_ids)} \\
       --out data
   (--partition-scheme dirichlet:0.5 gives each node a skewed mix of labels, as a real
   fleet has; the default is an even split.)

4. Each node, e.g. {first} (64-bit OS, toolkit in /opt/mpfl/venv), from this directory:
     scp nodes/{first}.env nodes/{first}.key coordinator.pub certs/ca.crt \\
       data/{first}/train.npz systemd/mpfl-edge.service {first}:
     ssh {first}
     sudo useradd --system --home-dir /var/lib/mpfl --shell /usr/sbin/nologin mpfl
     sudo install -d -m 0755 {etc_dirs}
     sudo install -m 0644 ca.crt {ca_file}
     sudo install -o mpfl -m 0600 {first}.env /etc/mpfl/node.env
     sudo install -o mpfl -m 0600 {first}.key /etc/mpfl/node.key
     sudo install -m 0644 coordinator.pub /etc/mpfl/coordinator.pub
     sudo install -d -o mpfl -m 0750 /var/lib/mpfl /var/lib/mpfl/data
     sudo install -o mpfl -m 0640 train.npz /var/lib/mpfl/data/train.npz
     sudo install -m 0644 mpfl-edge.service /etc/systemd/system/
     sudo systemctl daemon-reload && sudo systemctl enable --now mpfl-edge
     rm {first}.env {first}.key
   The unit passes MPFL_EDGE_ARGS from node.env to mpfl-edge start: it reads
   /var/lib/mpfl/data/train.npz; add --hardware rpi4 (see `mpfl hardware list`) to fix
   the board's profile instead of detecting it.
   Logs: journalctl -u mpfl-edge -f

5. Monitoring (optional). The coordinator serves Prometheus metrics on
   http://127.0.0.1:{metrics_port}/metrics (MPFL_METRICS_PORT in coordinator.env; remove the
   line to turn them off). Have a Prometheus on the gateway scrape that address, then
   import grafana-dashboard.json into Grafana and pick that Prometheus as its source.
     curl -s http://127.0.0.1:{metrics_port}/metrics | grep mpfl_coordinator_round
"""
