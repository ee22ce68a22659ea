"""``mpfl-coordinator provision``: only parses, calls ``provision`` and says what it wrote."""

from __future__ import annotations

from pathlib import Path

import click

from coordinator.provision.kit import provision
from coordinator.provision.templates import DEFAULT_BROKER_DIR
from mpfl.errors import reports_errors


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
@click.option(
    "--broker-ip",
    "broker_ips",
    multiple=True,
    metavar="ADDRESS",
    help="The gateway's IP address (repeatable): named in the server certificate beside "
    "--broker-host, so nodes may dial either.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True)
@click.option("--coordinator-user", default="coordinator", show_default=True)
@click.option(
    "--broker-dir",
    default=DEFAULT_BROKER_DIR,
    show_default=True,
    help="Where passwd, acl and certs/ go on the gateway.",
)
@click.option("--region", default=None, metavar="NAME",
              help="A regional gateway's kit: its coordinator (mpfl-coordinator run --region) "
                   "reads the root's server topics, bridged down, and writes only under "
                   "nodes/NAME/. See `mpfl-coordinator bridge-config`.")
@click.option("--force", is_flag=True, help="Replace an existing kit (rotates every password).")
@reports_errors
def provision_command(
    nodes: str,
    out: Path,
    federation: str,
    broker_host: str,
    broker_ips: tuple[str, ...],
    port: int,
    coordinator_user: str,
    broker_dir: str,
    region: str | None,
    force: bool,
) -> None:
    """Generate broker credentials, signing keys, ACLs, config and per-node env files."""
    result = provision(
        [n.strip() for n in nodes.split(",")],
        out,
        federation=federation,
        broker_host=broker_host,
        broker_ips=broker_ips,
        port=port,
        coordinator_user=coordinator_user,
        force=force,
        broker_dir=broker_dir,
        region=region,
    )
    click.echo(
        f"wrote a kit for {len(result.nodes)} nodes of federation {result.federation!r} "
        f"(broker {result.broker_url}) to {result.out}/"
    )
    click.echo(f"passwords hashed with {result.password_tool}; secrets are in *.env and *.key "
               "(mode 0600)")
    click.echo(
        f"next: put ca.crt, server.crt, server.key in {result.out / 'certs'}/ and "
        f"follow {result.out / 'README.txt'}"
    )
