"""``mpfl-coordinator``: run a federation on a gateway. Only parses and calls the service."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

import click

from coordinator.provision.cli import provision_command
from mpfl.config.flags import config_options, pop_config_overrides
from mpfl.errors import reports_errors
from mpfl.logs import logging_options, pop_logging_options, setup_logging, wants_live_view
from mpfl.net.endpoint import DEFAULT_CONNECT_TIMEOUT_S

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@click.group(context_settings={"show_default": True})
def main() -> None:
    """The MPFL coordinator: mask rounds by vote, then masked federated training."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Federation TOML file (keys as below; flags and MPFL_* env override).")
@click.option("--broker", default=None, metavar="URL",
              help="mqtt://host:port or mqtts://host:port. Default: start an embedded "
                   "broker on 127.0.0.1 (mosquitto if installed, else amqtt).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA certificate for an mqtts:// broker.")
@click.option("--username", envvar="MPFL_USERNAME", default=None,
              help="Broker user name (env MPFL_USERNAME).")
@click.option("--password", envvar="MPFL_PASSWORD", default=None, show_envvar=True,
              help="Broker password (prefer the env variable MPFL_PASSWORD).")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Where config, metrics, checkpoints and the final model go; an existing "
                   "run resumes.  [default: runs/<federation>]")
@click.option("--eval-data", "eval_dataset", default=None, metavar="DATASET",
              help="Evaluate the global model on this dataset's test split "
                   "(digits, mnist, fashion-mnist, cifar10, npz).")
@click.option("--data-dir", "eval_data_dir", default=None, envvar="MPFL_DATA_DIR",
              help="Directory of the evaluation dataset (env MPFL_DATA_DIR).")
@click.option("--mqtt-protocol", type=click.Choice(["auto", "5", "3.1.1"]), default="auto",
              show_default=True, help="MQTT version; auto tries 5, then 3.1.1.")
@click.option("--connect-timeout", type=click.FloatRange(min=0), default=DEFAULT_CONNECT_TIMEOUT_S,
              show_default=True, metavar="SECONDS",
              help="Exit (code 10) if the broker does not answer within this time; 0: keep "
                   "trying. SIGINT or SIGTERM end the wait at any moment.")
@click.option("--max-payload", type=click.IntRange(min=4096), default=None,
              help="Split node uploads larger than this many bytes (a v5 broker's own "
                   "limit applies when smaller).  [default: 1 MiB]")
@click.option("--embedded-broker", type=click.Choice(["auto", "mosquitto", "amqtt"]),
              default="auto", show_default=True, help="Which embedded broker, without --broker.")
@click.option("--embedded-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port of the embedded broker on 127.0.0.1 (0: any free port), so nodes "
                   "on this host can be started with a known --broker URL.")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Once the broker is up, write {\"broker\": URL, \"pid\": PID} here as JSON "
                   "(atomically), for a launcher that needs the embedded broker's address.")
@click.option("--key", "key_file", envvar="MPFL_KEY", type=click.Path(dir_okay=False),
              default=None, help="This coordinator's Ed25519 private key (env MPFL_KEY); with "
                                 "--enrolment every message is signed and verified.")
@click.option("--enrolment", "enrolment_file", envvar="MPFL_ENROLMENT",
              type=click.Path(dir_okay=False), default=None,
              help="enrolled.toml: the node ids and public keys to accept (env MPFL_ENROLMENT).")
@click.option("--region", default=None, envvar="MPFL_REGION", metavar="NAME",
              help="Run a regional coordinator: serve this region's nodes on its own broker, "
                   "follow the root's rounds and send one partial aggregate per round up "
                   "(env MPFL_REGION). The region is enrolled at the root under NAME.")
@click.option("--upstream", default=None, metavar="URL",
              help="With --region and no --broker: the root's broker; an embedded mosquitto "
                   "is started with a bridge to it (same TLS and login flags).")
@click.option("--root-key", "root_key_file", envvar="MPFL_COORDINATOR_KEY",
              type=click.Path(dir_okay=False), default=None,
              help="With --region: the root coordinator's public key file; with --key and "
                   "--enrolment (the region's nodes) every message is signed and verified.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              envvar="MPFL_METRICS_PORT", show_envvar=True,
              help="Serve Prometheus metrics on this port (/metrics).  [default: off]")
@click.option("--metrics-address", default="127.0.0.1", show_default=True,
              help="Address the metrics listen on (0.0.0.0: every interface).")
@click.option("--status-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Keep the federation's current state here as JSON, replaced atomically "
                   "a few times a second (what `mpfl simulate` draws its live view from).")
@logging_options
@config_options(skip=("eval_dataset", "eval_data_dir"))
@reports_errors
def run(**kwargs: Any) -> None:
    """Run (or resume) a federation until it is done or fails.

    In a terminal it draws a live view of the rounds and nodes; without one it logs one
    line per event."""
    log_format, verbosity = pop_logging_options(kwargs)
    setup_logging(log_format, verbosity)
    from coordinator.service import CoordinatorService, ServiceOptions, load_evaluator
    from coordinator.watching import WatchOptions
    from mpfl.config.settings import load_config
    from mpfl.errors import ConfigError
    from mpfl.net.endpoint import parse_broker_url
    from mpfl.net.mqtt import DEFAULT_MAX_PAYLOAD

    overrides = pop_config_overrides(kwargs)
    cfg = load_config(kwargs["config_path"], overrides)
    broker = None
    if kwargs["broker"]:
        broker = parse_broker_url(kwargs["broker"], ca_file=kwargs["ca_file"],
                                  username=kwargs["username"], password=kwargs["password"])
    if kwargs["region"] is not None:
        _run_region(cfg, broker, kwargs)
        return
    if kwargs["upstream"] or kwargs["root_key_file"]:
        raise ConfigError("--upstream and --root-key are for a regional coordinator: add "
                          "--region NAME")
    run_dir = Path(kwargs["run_dir"] or os.path.join("runs", cfg.federation))
    announce = _ready_writer(kwargs["ready_file"])
    if announce is not None and broker is not None:
        announce(broker.url)  # an external broker is up already
    options = ServiceOptions(run_dir, broker, kwargs["embedded_broker"], kwargs["mqtt_protocol"],
                             kwargs["max_payload"] or DEFAULT_MAX_PAYLOAD,
                             connect_timeout=kwargs["connect_timeout"] or None,
                             embedded_port=kwargs["embedded_port"],
                             on_broker_ready=announce,
                             keys=_coordinator_keys(kwargs["key_file"], kwargs["enrolment_file"]),
                             watch=WatchOptions(wants_live_view(log_format, verbosity),
                                                kwargs["status_file"], kwargs["metrics_port"],
                                                kwargs["metrics_address"]))
    server = _run_until_stopped(CoordinatorService(cfg, options, load_evaluator(cfg)))
    server.require_success()


def _run_region(cfg: Any, broker: Any, kwargs: dict[str, Any]) -> None:
    """A regional coordinator until the root's federation ends (or a signal stops it)."""
    from coordinator.region_service import RegionOptions, RegionService
    from mpfl.errors import ConfigError, FederationError
    from mpfl.federation.region_gate import RegionKeys
    from mpfl.net.endpoint import parse_broker_url
    from mpfl.net.mqtt import DEFAULT_MAX_PAYLOAD
    from mpfl.wire import topics
    from mpfl.wire.signing import PublicKey

    region = topics.validate_node_id(kwargs["region"])
    upstream = None
    if kwargs["upstream"]:
        upstream = parse_broker_url(kwargs["upstream"], ca_file=kwargs["ca_file"],
                                    username=kwargs["username"], password=kwargs["password"])
    keys = None
    files = (kwargs["key_file"], kwargs["enrolment_file"], kwargs["root_key_file"])
    if any(f is not None for f in files):
        if any(f is None for f in files):
            raise ConfigError("a region signs and verifies with --key, --enrolment and "
                              "--root-key together, or with none of them")
        own = _coordinator_keys(kwargs["key_file"], kwargs["enrolment_file"])
        keys = RegionKeys(own.key, PublicKey.load(Path(kwargs["root_key_file"])), own.enrolled)
    run_dir = Path(kwargs["run_dir"] or os.path.join("runs", f"{cfg.federation}-{region}"))
    options = RegionOptions(region, run_dir, broker, upstream, kwargs["mqtt_protocol"],
                            kwargs["max_payload"] or DEFAULT_MAX_PAYLOAD, keys=keys)
    state = _run_until_stopped(RegionService(cfg, options)).state
    if state is not None and state.phase == "failed":
        raise FederationError(f"the root's federation failed: {state.error}")


class _Service(Protocol[T_co]):
    stop_requested: str | None

    def request_stop(self, reason: str) -> None: ...

    def run(self) -> T_co: ...


def _run_until_stopped(service: _Service[T]) -> T:
    """``service.run()``, which SIGTERM and SIGINT ask to stop (the checkpoint is kept);
    the process then exits 0 after SIGTERM, as systemd expects, and 130 after SIGINT."""
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        service.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    result = service.run()
    if service.stop_requested is not None:
        sys.exit(130 if service.stop_requested == "SIGINT" else 0)
    return result


def _coordinator_keys(key_file: str | None, enrolment_file: str | None) -> Any:
    """The coordinator's keys, None without both files (the service then warns loudly)."""
    from mpfl.errors import ConfigError
    from mpfl.federation.gate import CoordinatorKeys
    from mpfl.wire.signing import Keyring, SigningKey

    if key_file is None and enrolment_file is None:
        return None
    if key_file is None or enrolment_file is None:
        raise ConfigError("--key and --enrolment go together: sign and verify, or neither")
    return CoordinatorKeys(SigningKey.load(Path(key_file)),
                           Keyring.load_enrolment(Path(enrolment_file)))


def _ready_writer(path: Path | None) -> Callable[[str], None] | None:
    """What announces the broker's URL in ``--ready-file`` (None: nothing to write)."""
    if path is None:
        return None
    from coordinator.ready import CoordinatorReady, write_ready_file

    path.unlink(missing_ok=True)  # a stale file from an earlier run must not be believed
    return lambda url: write_ready_file(path, CoordinatorReady(url, os.getpid()))



@main.command("bridge-config")
@click.option("--federation", required=True, help="Federation name (topic prefix).")
@click.option("--region", required=True, metavar="NAME",
              help="The region, enrolled at the root like a node (its login there too).")
@click.option("--upstream", required=True, metavar="URL",
              help="The root's broker, mqtt://host:port or mqtts://host:port.")
@click.option("--username", default=None,
              help="The bridge's login at the root broker (the region's user in the root's "
                   "kit).  [default: the region name]")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A file holding that login's password (e.g. the region's env "
                                 "file from the root's kit, MPFL_PASSWORD=...).")
@click.option("--ca-file", default=None, help="CA certificate of an mqtts:// root broker, as "
                                              "the regional gateway sees it.")
@reports_errors
def bridge_config(federation: str, region: str, upstream: str, username: str | None,
                  password_file: Path | None, ca_file: str | None) -> None:
    """Print the mosquitto `connection` bridge of a regional gateway's broker: the root's
    server topics down, the region's own topics up. Append it to that broker's config."""
    from coordinator.provision.templates import bridge_conf_text
    from mpfl.errors import ConfigError
    from mpfl.net.endpoint import parse_broker_url

    address = parse_broker_url(upstream)
    if address.tls and ca_file is None:
        raise ConfigError("an mqtts:// upstream needs --ca-file: the bridge checks the root "
                          "broker's certificate")
    password = None
    if password_file is not None:
        text = password_file.read_text(encoding="utf-8").strip()
        lines = [ln.partition("=")[2] for ln in text.splitlines()
                 if ln.startswith("MPFL_PASSWORD=")]
        password = lines[0] if lines else text
    click.echo(bridge_conf_text(federation=federation, region=region,
                                upstream_host=address.host, upstream_port=address.port,
                                username=username or region, password=password,
                                cafile=ca_file if address.tls else None), nl=False)


# `mpfl-coordinator provision`: broker users, ACLs, TLS and per-node env files.
main.add_command(provision_command, "provision")


if __name__ == "__main__":
    main(prog_name="mpfl-coordinator")
