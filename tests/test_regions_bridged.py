"""Two regions over real bridged brokers give the flat federation's result.

Three Mosquitto processes: a root broker and two regional brokers whose configs hold the
``connection`` bridge rendered from ``coordinator/deploy/mosquitto-bridge.conf.template``
(the root's server topics down, each region's own topics up). Real processes: a root
``mpfl-coordinator``, two regional ones (``--region``), and three ``mpfl-edge`` nodes per
region on the bundled digits data, every message signed (the regions are enrolled at the
root like nodes). The same six nodes (same data shares, seeds and config) then run flat on
one coordinator, in this process: ``FederationNode`` is what ``mpfl-edge start`` runs.

Exactness. Votes are integer counts: the masks must be identical. The weights are
float32 averages of float64 weighted sums that the two runs add in different orders (and
the flat coordinator in arrival order), so each final weight may differ by one float32
ulp of its value plus the float64 reordering error, at most n * 2^-52 * max |v_i| for n = 6
updates (under 1e-12 here: no weight of this model comes near 100 in magnitude). One
training round keeps that bound exact: a second would train from averages up to one ulp
apart, which the in-process test (tests/test_regions.py) covers with a fixed order.

Bytes by tier, as the coordinators counted them: each region's uplink from its nodes, and
the root's uplink of two partial aggregates per round, against the flat coordinator's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from brokers import Broker, run_mosquitto, start_mosquitto

from coordinator.provision.templates import bridge_conf_text
from edge_node.agent import load_node_data
from mpfl.config.settings import FederationConfig
from mpfl.federation.node import FederationNode
from mpfl.federation.server import FederationServer
from mpfl.federation.transport import MemoryBroker
from mpfl.wire import topics
from mpfl.wire.protocol import Publish
from mpfl.wire.signing import SigningKey, write_enrolment

pytestmark = pytest.mark.integration

N_PER_REGION = 3
REGIONS = ("east", "west")
RUN_TIMEOUT_S = 400.0  # a hang, not a slow machine: idle, the run takes well under a minute
MODEL = ["--model", "mlp", "--model-args", '{"image_size": 8, "hidden": [32]}',
         "--granularity", "weight", "--final-sparsity", "0.5", "--mask-rounds", "2",
         "--train-rounds", "1", "--local-epochs", "1", "--lr", "0.05", "--round-timeout", "180",
         "--start-timeout", "300"]
REORDERING_BOUND = 1e-12  # n * 2^-52 * max |v_i| with n = 6 and |v_i| < 100


def regional_broker_conf(root: Broker, federation: str, region: str) -> Callable[[int], str]:
    def make(port: int) -> str:
        return "\n".join([
            "per_listener_settings false", f"listener {port} 127.0.0.1",
            "allow_anonymous true", "persistence false", "log_dest stderr", "log_type all",
            bridge_conf_text(federation=federation, region=region, upstream_host=root.host,
                             upstream_port=root.port),
        ])
    return make


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")

    def spawn(self, name: str, args: list[str]) -> None:
        with (self.tmp / f"{name}.log").open("wb") as out:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", *args], stdout=out,
                                                stderr=subprocess.STDOUT, env=self.env)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def node(self, name: str, url: str, federation: str, index: int, key: Path,
             root_pub: Path) -> None:
        self.spawn(name, ["edge_node.cli", "start", "--broker", url, "--federation", federation,
                          "--node-id", name, "--dataset", "digits", "--partition",
                          f"{index}/{N_PER_REGION * len(REGIONS)}", "--threads", "1",
                          "--state-dir", str(self.tmp / "state" / name), "--key", str(key),
                          "--coordinator-key", str(root_pub)])

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            try:
                code = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not finish\n" + self.log(name))
            assert code == 0, f"{name} exited {code}\n{self.log(name)}"

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextmanager
def fleet(tmp: Path) -> Iterator[Fleet]:
    tmp.mkdir(parents=True, exist_ok=True)
    running = Fleet(tmp)
    try:
        yield running
    finally:
        running.kill()


def node_handler(node: FederationNode,
                 send: Callable[[list[Publish]], None]) -> Callable[[str, bytes], None]:
    return lambda topic, payload: send(node.handle(topic, payload))


def run_flat(config: Path, names: list[str]) -> tuple[FederationServer, list[int]]:
    """The same six nodes with the same seeds, data shares and config, on one coordinator:
    in this process on the in-memory broker (the nodes are what ``mpfl-edge start`` builds:
    share i of 6, seed 1000 * 0 + i, one torch thread)."""
    import torch

    cfg = replace(FederationConfig(**json.loads(config.read_text())), federation="flat",
                  min_nodes=len(names), quorum=len(names))
    broker, server = MemoryBroker(), FederationServer(cfg)
    nodes = []
    for index, name in enumerate(names):
        data, _ = load_node_data("digits", None, f"{index}/{len(names)}")
        nodes.append(FederationNode(name, "flat", data, seed=index))

    def send(messages: list[Publish]) -> None:
        for message in messages:
            broker.publish(message)

    broker.subscribe(topics.nodes_filter("flat"), lambda t, p: send(server.handle(t, p).publishes))
    for node in nodes:
        broker.subscribe(topics.server_filter("flat"), node_handler(node, send))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        send(server.start())
        send([node.hello() for node in nodes])
        broker.pump()
    finally:
        torch.set_num_threads(threads)
    return server, [r.uplink_bytes for r in server.log]


def final_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    with np.load(run_dir / "checkpoint" / state["arrays"]) as arrays:
        return {k: arrays[k] for k in arrays.files}


def rounds(run_dir: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def test_two_bridged_regions_give_the_flat_result(tmp_path: Path) -> None:
    root_key = SigningKey.generate()
    root_priv = root_key.save(tmp_path / "root.key")
    root_pub = root_key.public_key.save(tmp_path / "root.pub")
    node_keys = {f"{r}-{i}": SigningKey.generate() for r in REGIONS for i in range(N_PER_REGION)}
    node_files = {n: k.save(tmp_path / f"{n}.key") for n, k in node_keys.items()}
    region_keys = {r: SigningKey.generate() for r in REGIONS}
    region_files = {r: k.save(tmp_path / f"{r}.key") for r, k in region_keys.items()}
    enrol = {r: write_enrolment(tmp_path / f"{r}-enrolled.toml", {
        n: k.public_key for n, k in node_keys.items() if n.startswith(r)}) for r in REGIONS}
    root_enrolled = write_enrolment(tmp_path / "root-enrolled.toml",
                                    {r: k.public_key for r, k in region_keys.items()})
    names = list(node_keys)
    started = time.monotonic()
    tiered_dir = tmp_path / "tiered"
    with ExitStack() as stack:
        root = stack.enter_context(start_mosquitto(tmp_path))
        local = {r: stack.enter_context(run_mosquitto(
            tmp_path, regional_broker_conf(root, "tiered", r))) for r in REGIONS}
        running = stack.enter_context(fleet(tmp_path / "logs"))
        running.spawn("root", ["coordinator.cli", "run", "--broker",
                               f"mqtt://{root.host}:{root.port}", "--federation", "tiered",
                               "--run-dir", str(tiered_dir / "root"), "--key", str(root_priv),
                               "--enrolment", str(root_enrolled), "--min-nodes", "2",
                               "--quorum", "2", *MODEL])
        for r in REGIONS:
            url = f"mqtt://{local[r].host}:{local[r].port}"
            running.spawn(r, ["coordinator.cli", "run", "--region", r, "--broker", url,
                              "--federation", "tiered", "--run-dir", str(tiered_dir / r),
                              "--key", str(region_files[r]), "--enrolment", str(enrol[r]),
                              "--root-key", str(root_pub), "--min-nodes", "3", "--quorum",
                              "3", *MODEL])
            for i in range(N_PER_REGION):
                name = f"{r}-{i}"
                running.node(name, url, "tiered", names.index(name), node_files[name],
                             root_pub)
        running.wait(RUN_TIMEOUT_S)
        bridge_logs = {r: local[r].log() for r in REGIONS}
    seconds = time.monotonic() - started
    flat_server, flat_up = run_flat(tiered_dir / "root" / "config.json", names)

    for r in REGIONS:
        assert f"Connecting bridge (step 1) mpfl-tiered-{r}" in bridge_logs[r], bridge_logs[r]
    tiered = final_arrays(tiered_dir / "root")
    assert flat_server.phase == "done"
    assert np.array_equal(flat_server.mask, tiered["mask"])
    a, b = flat_server.global_values, tiered["global_values"]
    assert a is not None
    assert np.abs(a).max() < 100.0  # the premise of the bound
    assert np.all(np.abs(a - b) <= np.spacing(np.abs(a)) + REORDERING_BOUND)

    root_rounds = rounds(tiered_dir / "root")
    assert [r["participants"] for r in root_rounds] == [list(REGIONS)] * 3
    summary = json.loads((tiered_dir / "root" / "summary.json").read_text())
    assert not {"unsigned", "bad-signature", "malformed", "not-mergeable"} & set(
        summary["dropped"]), summary["dropped"]
    region_rounds = {r: rounds(tiered_dir / r, "region.jsonl") for r in REGIONS}
    for r in REGIONS:
        assert [len(x["participants"]) for x in region_rounds[r]] == [3, 3, 3]
    # Bytes by tier: the root receives exactly the partials the regions sent.
    partials = [sum(x["partial_bytes"] for x in region_rounds[r]) for r in REGIONS]
    root_up = [int(x["uplink_bytes"]) for x in root_rounds]
    assert sum(root_up) == sum(partials)
    region_up = [sum(int(x[k]["node_uplink_bytes"]) for x in region_rounds.values())
                 for k in range(3)]
    assert region_up == flat_up  # the nodes sent the same bytes, only to their region
    print(json.dumps({"flat_uplink": flat_up, "region_uplink": region_up, "root_uplink": root_up,
                      "seconds": round(seconds, 1)}))
