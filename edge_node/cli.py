"""``mpfl-edge``: take part in a federation from a device. Only parses and calls the agent."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click

from mpfl.errors import reports_errors
from mpfl.logs import logging_options, pop_logging_options, setup_logging, wants_live_view
from mpfl.net.endpoint import DEFAULT_CONNECT_TIMEOUT_S

log = logging.getLogger("edge_node.cli")


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                             "state")
    return os.path.join(base, "mpfl")


@click.group(context_settings={"show_default": True})
def main() -> None:
    """The MPFL edge agent: trains locally, sends masks and surviving weights over MQTT."""


@main.command()
@click.option("--broker", required=True, metavar="URL", help="mqtt://host:port or mqtts://...")
@click.option("--federation", required=True, help="Federation name (topic prefix).")
@click.option("--node-id", required=True, help="This node's id: letters, digits, - and _.")
@click.option("--dataset", default="digits", show_default=True,
              help="digits, mnist, fashion-mnist, cifar10 or npz.")
@click.option("--data-dir", envvar="MPFL_DATA_DIR", default=None,
              help="Dataset directory (env MPFL_DATA_DIR).")
@click.option("--partition", "share", default=None, metavar="I/N",
              help="Take part I (0-based) of an N-way split of the training set.")
@click.option("--partition-scheme", default="iid", show_default=True,
              help="iid, dirichlet:ALPHA or shards:K.")
@click.option("--seed", default=0, show_default=True,
              help="Partition seed (the same on every node); training seeds derive from it.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use at most this many of this node's samples.")
@click.option("--corrupt", type=click.Choice(["noise", "permuted-labels"]), default=None,
              help="Robustness experiments: train on pixel-shuffled noise, or with labels "
                   "permuted, as the reference code's faulty nodes do.")
@click.option("--hardware", default=None,
              help="Device profile (threads, batch size, memory guard): see `mpfl hardware "
                   "list`. Default: the board detected on a Pi or Jetson.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads (overrides the profile's).")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="Where the last finished round is kept across restarts.  "
                   "[default: $XDG_STATE_HOME/mpfl]")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA certificate for an mqtts:// broker.")
@click.option("--username", envvar="MPFL_USERNAME", default=None, help="Env MPFL_USERNAME.")
@click.option("--password", envvar="MPFL_PASSWORD", default=None, help="Env MPFL_PASSWORD.")
@click.option("--mqtt-protocol", type=click.Choice(["auto", "5", "3.1.1"]), default="auto",
              show_default=True, help="MQTT version; auto tries 5, then 3.1.1.")
@click.option("--max-payload", type=click.IntRange(min=4096), default=None,
              help="Split uploads larger than this many bytes.  [default: 1 MiB]")
@click.option("--connect-timeout", type=click.FloatRange(min=0), default=DEFAULT_CONNECT_TIMEOUT_S,
              show_default=True, metavar="SECONDS",
              help="Exit (code 10) if no broker answers within this time; 0: keep trying. "
                   "SIGINT or SIGTERM end the wait at any moment.")
@click.option("--key", "key_file", envvar="MPFL_KEY", type=click.Path(dir_okay=False),
              default=None, help="This node's Ed25519 private key (env MPFL_KEY); with "
                                 "--coordinator-key every message is signed and verified.")
@click.option("--coordinator-key", "coordinator_key_file", envvar="MPFL_COORDINATOR_KEY",
              type=click.Path(dir_okay=False), default=None,
              help="The coordinator's public key file (env MPFL_COORDINATOR_KEY).")
@click.option("--progress-every", type=click.FloatRange(min=0), default=10.0,
              show_default=True, metavar="SECONDS",
              help="Tell the coordinator's live view of the local epochs at most this "
                   "often (0: every epoch; each message is about 130 bytes).")
@logging_options
@reports_errors
def start(
    broker: str, federation: str, node_id: str, dataset: str, data_dir: str | None,
    share: str | None, partition_scheme: str, seed: int, limit: int | None,
    corrupt: str | None, hardware: str | None, threads: int | None, state_dir: str | None,
    ca_file: str | None,
    username: str | None, password: str | None, mqtt_protocol: str, max_payload: int | None,
    connect_timeout: float | None, key_file: str | None, coordinator_key_file: str | None,
    progress_every: float, **logging_flags: Any,
) -> None:
    """Join a federation and take part until it is done.

    In a terminal a progress bar shows the local epochs; otherwise one line per event."""
    log_format, verbosity = pop_logging_options(logging_flags)
    setup_logging(log_format, verbosity)
    import torch

    from edge_node.agent import AgentOptions, EdgeAgent, load_node_data
    from hardware import apply_threads, detect_profile, get_profile, memory_guard
    from mpfl.errors import HardwareError
    from mpfl.federation.node import FederationNode
    from mpfl.net.endpoint import parse_broker_url
    from mpfl.net.mqtt import DEFAULT_MAX_PAYLOAD
    from mpfl.wire import topics

    topics.validate_node_id(node_id)
    keys = _node_keys(key_file, coordinator_key_file)  # before the slow parts: fail fast
    topics.validate_name(federation, what="federation")
    address = parse_broker_url(broker, ca_file=ca_file, username=username, password=password)
    batch_size = None
    profile = get_profile(hardware) if hardware is not None else detect_profile()
    label = profile.label if profile is not None else "unknown"
    if profile is not None and hardware is None and profile.generic:
        profile = None  # not a known board: keep the coordinator's settings, only label it
    if profile is not None:
        if not profile.trains:
            raise HardwareError(f"profile {profile.name} does not train ({profile.role_reason}); "
                                "run the exported model with mpfl-infer instead",
                                profile=profile.label)
        apply_threads(profile)
        batch_size = profile.batch_size
    if threads is not None:
        torch.set_num_threads(threads)
    data, index = load_node_data(dataset, data_dir, share, partition_scheme, seed, limit)
    if corrupt is not None:
        from mpfl.ml.robustness import permute_labels, shuffle_pixels

        spoil = shuffle_pixels if corrupt == "noise" else permute_labels
        data = spoil(data, seed * 1000 + index)
    fit_batch = None
    if profile is not None:
        guarded = profile

        def fit_batch(parameters: int, wanted: int) -> int:
            fitted = memory_guard(guarded, parameters, data.shape, wanted,
                                  dataset_bytes=data.x.nbytes)
            if fitted < wanted:
                log.warning(f"node {node_id}: batch size {wanted} lowered to {fitted} to "
                            f"fit {guarded.train_memory_budget_mb} MB on {guarded.label}")
            return fitted

    node = FederationNode(node_id, federation, data, hardware=label, seed=seed * 1000 + index,
                          batch_size=batch_size, fit_batch=fit_batch)
    options = AgentOptions(mqtt_protocol, max_payload or DEFAULT_MAX_PAYLOAD,
                           Path(state_dir or _default_state_dir()), connect_timeout or None, keys,
                           live=wants_live_view(log_format, verbosity),
                           progress_every=progress_every)
    agent = EdgeAgent(node, address, options)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        agent.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    outcome = agent.run()
    log.info(f"node {node_id}: {outcome}")
    if agent.stop_requested == "SIGINT":
        sys.exit(130)


def _node_keys(key_file: str | None, coordinator_key_file: str | None) -> Any:
    """This node's keys, None without both files (the agent then warns loudly)."""
    from mpfl.errors import ConfigError
    from mpfl.federation.gate import NodeKeys
    from mpfl.wire.signing import PublicKey, SigningKey

    if key_file is None and coordinator_key_file is None:
        return None
    if key_file is None or coordinator_key_file is None:
        raise ConfigError("--key and --coordinator-key go together: sign and verify, or neither")
    return NodeKeys(SigningKey.load(Path(key_file)), PublicKey.load(Path(coordinator_key_file)))


if __name__ == "__main__":
    main(prog_name="mpfl-edge")
