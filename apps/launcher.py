"""``mpfl simulate``: a whole federation as real processes on one machine.

Starts ``python -m coordinator.cli run`` (which starts the embedded broker unless a broker
is given, and says where it listens), then one ``python -m edge_node.cli start`` per node,
each taking its share of the dataset by ``--partition i/N``. The processes talk only over
MQTT, exactly as on a real fleet; this module imports neither package and does no network
I/O itself: it launches processes and reads their output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mpfl.config.flags import config_to_args
from mpfl.config.settings import FederationConfig
from mpfl.errors import FederationError

_URL = re.compile(r"listening on (mqtts?://[\w.\-]+:\d+)")
BROKER_WAIT_S = 60.0
NODE_EXIT_WAIT_S = 30.0


@dataclass
class SimulationPlan:
    cfg: FederationConfig
    nodes: int
    dataset: str
    run_dir: Path
    data_dir: str | None = None
    scheme: str = "dirichlet:0.5"
    seed: int = 0
    limit: int | None = None
    broker: str | None = None
    threads: int = 1
    eval_dataset: str | None = None
    extra_node_args: list[str] = field(default_factory=list)
    corrupt: dict[int, str] = field(default_factory=dict)  # node index -> --corrupt kind

    def coordinator_command(self) -> list[str]:
        cmd = [sys.executable, "-m", "coordinator.cli", "run", "--run-dir", str(self.run_dir),
               *config_to_args(self.cfg, skip=("eval_dataset", "eval_data_dir"))]
        if self.eval_dataset:
            cmd += ["--eval-data", self.eval_dataset]
            if self.data_dir:
                cmd += ["--data-dir", self.data_dir]
        if self.broker:
            cmd += ["--broker", self.broker]
        return cmd

    def node_command(self, index: int, broker_url: str) -> list[str]:
        cmd = [sys.executable, "-m", "edge_node.cli", "start", "--broker", broker_url,
               "--federation", self.cfg.federation, "--node-id", f"node-{index}",
               "--dataset", self.dataset, "--partition", f"{index}/{self.nodes}",
               "--partition-scheme", self.scheme, "--seed", str(self.seed),
               "--threads", str(self.threads),
               "--state-dir", str(self.run_dir / "node-state"), *self.extra_node_args]
        if self.data_dir:
            cmd += ["--data-dir", self.data_dir]
        if self.limit:
            cmd += ["--limit", str(self.limit)]
        if index in self.corrupt:
            cmd += ["--corrupt", self.corrupt[index]]
        return cmd


def child_env() -> dict[str, str]:
    """Unbuffered output, one math thread per process unless asked otherwise."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _relay(stream: IO[str], echo: Callable[[str], None], found: list[str],
           ready: threading.Event) -> None:
    for line in stream:
        line = line.rstrip("\n")
        match = _URL.search(line)
        if match and not found:
            found.append(match.group(1))
            ready.set()
        echo(line)
    ready.set()


def run_simulation(plan: SimulationPlan, echo: Callable[[str], None] = print) -> int:
    """Run coordinator and nodes to the end; the coordinator's exit code."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    logs = plan.run_dir / "logs"
    logs.mkdir(exist_ok=True)
    env = child_env()
    coordinator = subprocess.Popen(plan.coordinator_command(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env)
    found: list[str] = []
    ready = threading.Event()
    assert coordinator.stdout is not None
    relay = threading.Thread(target=_relay, args=(coordinator.stdout, echo, found, ready),
                             daemon=True)
    relay.start()
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        if plan.broker:
            url = plan.broker
        else:
            ready.wait(BROKER_WAIT_S)
            if not found:
                coordinator.kill()
                raise FederationError("the coordinator did not report its embedded broker")
            url = found[0]
        for i in range(plan.nodes):
            with (logs / f"node-{i}.log").open("wb") as log:
                nodes.append(subprocess.Popen(plan.node_command(i, url), stdout=log,
                                              stderr=subprocess.STDOUT, env=env))
        code = coordinator.wait()
        relay.join(timeout=5)
        deadline = time.monotonic() + NODE_EXIT_WAIT_S
        for proc in nodes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
        failed = [i for i, p in enumerate(nodes) if p.wait(timeout=10) not in (0, -15)]
        if failed and code == 0:
            echo(f"warning: node(s) {', '.join(map(str, failed))} exited with an error; "
                 f"see {logs}")
        return code
    finally:
        everyone: list[subprocess.Popen[Any]] = [*nodes, coordinator]
        for proc in everyone:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
