"""``mpfl simulate``: a whole federation as real processes on one machine.

Starts ``python -m coordinator.cli run`` (which starts the embedded broker unless a broker
is given), waits for the ready file in which the coordinator says where its broker
listens, then starts one ``python -m edge_node.cli start`` per node, each taking its share
of the dataset by ``--partition i/N``. Separate processes are the point: they talk only
over MQTT, exactly as on a real fleet.

The coordinator logs JSON lines: each is kept in ``logs/coordinator.log`` and logged again
here as it comes (``mpfl.logs.replay``), so the whole run reads in this command's own log
format. In a terminal the coordinator's live view is drawn here, from the status file it
keeps in the run directory; each node's output goes to ``logs/node-<i>.log``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from coordinator.live import LiveView
from coordinator.ready import read_ready_file
from coordinator.watching import read_status
from mpfl.choices import LogFormat
from mpfl.config.flags import config_to_args
from mpfl.config.settings import FederationConfig
from mpfl.errors import FederationError, NodeDied
from mpfl.logs import replay, verbosity_args
from mpfl.wire.signing import SigningKey, write_enrolment

BROKER_WAIT_S = 60.0
READY_POLL_S = 0.05
NODE_EXIT_WAIT_S = 30.0
VIEW_POLL_S = 0.25
NODE_GRACE_S = 3.0  # after a node's error, the coordinator's own exit (if it is ending) wins
_NODE_STOPPED = (0, -15)  # done, or terminated by us

log = logging.getLogger(__name__)


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
    # Throwaway Ed25519 keys in <run_dir>/keys, so a simulation runs signed as a fleet does.
    signed: bool = True
    verbosity: int = 0  # passed on to every process (-1 quiet, 1 verbose)
    node_log_format: LogFormat = LogFormat.TEXT
    metrics_port: int | None = None  # the coordinator's Prometheus endpoint

    @property
    def keys_dir(self) -> Path:
        return self.run_dir / "keys"

    def write_keys(self) -> None:
        """A fresh coordinator key, one per node and the enrolment list (every run)."""
        if not self.signed:
            return
        keys = self.keys_dir
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        coordinator = SigningKey.generate()
        coordinator.save(keys / "coordinator.key")
        coordinator.public_key.save(keys / "coordinator.pub")
        nodes = {f"node-{i}": SigningKey.generate() for i in range(self.nodes)}
        for node_id, key in nodes.items():
            key.save(keys / f"{node_id}.key")
        write_enrolment(keys / "enrolled.toml", {n: k.public_key for n, k in nodes.items()})

    @property
    def ready_file(self) -> Path:
        return self.run_dir / "coordinator.ready.json"

    @property
    def status_file(self) -> Path:
        return self.run_dir / "status.json"

    @property
    def coordinator_log(self) -> Path:
        return self.run_dir / "logs" / "coordinator.log"

    def coordinator_command(self) -> list[str]:
        cmd = [sys.executable, "-m", "coordinator.cli", "run", "--run-dir", str(self.run_dir),
               "--ready-file", str(self.ready_file), "--status-file", str(self.status_file),
               "--log-format", LogFormat.JSON.value, *verbosity_args(self.verbosity),
               *config_to_args(self.cfg, skip=("eval_dataset", "eval_data_dir"))]
        if self.eval_dataset:
            cmd += ["--eval-data", self.eval_dataset]
            if self.data_dir:
                cmd += ["--data-dir", self.data_dir]
        if self.broker:
            cmd += ["--broker", self.broker]
        if self.metrics_port is not None:
            cmd += ["--metrics-port", str(self.metrics_port)]
        if self.signed:
            cmd += ["--key", str(self.keys_dir / "coordinator.key"),
                    "--enrolment", str(self.keys_dir / "enrolled.toml")]
        return cmd

    def node_command(self, index: int, broker_url: str) -> list[str]:
        cmd = [sys.executable, "-m", "edge_node.cli", "start", "--broker", broker_url,
               "--federation", self.cfg.federation, "--node-id", f"node-{index}",
               "--dataset", self.dataset, "--partition", f"{index}/{self.nodes}",
               "--partition-scheme", self.scheme, "--seed", str(self.seed),
               "--threads", str(self.threads),
               "--state-dir", str(self.run_dir / "node-state"),
               "--log-format", self.node_log_format.value, *verbosity_args(self.verbosity),
               # one machine, no link to spare: the live view shows every epoch
               "--progress-every", "0",
               *self.extra_node_args]
        if self.data_dir:
            cmd += ["--data-dir", self.data_dir]
        if self.limit:
            cmd += ["--limit", str(self.limit)]
        if index in self.corrupt:
            cmd += ["--corrupt", self.corrupt[index]]
        if self.signed:
            cmd += ["--key", str(self.keys_dir / f"node-{index}.key"),
                    "--coordinator-key", str(self.keys_dir / "coordinator.pub")]
        return cmd


def child_env() -> dict[str, str]:
    """Unbuffered output, one math thread per process unless asked otherwise."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _relay(stream: IO[str], kept: IO[str]) -> None:
    for line in stream:
        kept.write(line)
        kept.flush()
        if line.strip():
            replay(line.rstrip("\n"), "coordinator")


def wait_for_broker(plan: SimulationPlan, coordinator: subprocess.Popen[str],
                    timeout: float = BROKER_WAIT_S) -> str:
    """The broker URL from the coordinator's ready file; a FederationError naming its log
    if the coordinator exits first or the file does not appear within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        ready = read_ready_file(plan.ready_file)
        if ready is not None:
            if ready.pid != coordinator.pid:
                raise FederationError(f"{plan.ready_file} was written by another process "
                                      f"(pid {ready.pid}, not {coordinator.pid})")
            return ready.broker
        code = coordinator.poll()
        if code is not None:
            raise FederationError(f"the coordinator exited (code {code}) before its broker "
                                  f"was up; see {plan.coordinator_log}")
        if time.monotonic() >= deadline:
            raise FederationError(f"the coordinator's broker was not up after {timeout:.0f} s; "
                                  f"see {plan.coordinator_log}")
        time.sleep(READY_POLL_S)


def run_simulation(plan: SimulationPlan, live: bool = False) -> int:
    """Run coordinator and nodes to the end; the coordinator's exit code. ``live``: draw
    the coordinator's live view (in a terminal)."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    logs = plan.coordinator_log.parent
    logs.mkdir(exist_ok=True)
    plan.ready_file.unlink(missing_ok=True)
    plan.status_file.unlink(missing_ok=True)
    plan.write_keys()
    env = child_env()
    with plan.coordinator_log.open("w", encoding="utf-8") as coordinator_log:
        coordinator = subprocess.Popen(plan.coordinator_command(), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, env=env)
        assert coordinator.stdout is not None
        relay = threading.Thread(target=_relay, args=(coordinator.stdout, coordinator_log),
                                 daemon=True)
        relay.start()
        view = LiveView() if live else None
        try:
            if view is not None:
                view.start()
            return _run_nodes(plan, coordinator, env, view)
        finally:
            if view is not None:
                view.stop()
            relay.join(timeout=5)
            plan.ready_file.unlink(missing_ok=True)  # it described a process now gone


def node_log(plan: SimulationPlan, index: int) -> Path:
    return plan.coordinator_log.parent / f"node-{index}.log"


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _failed_node(nodes: list[subprocess.Popen[bytes]]) -> tuple[int, int] | None:
    """(index, exit code) of a node that exited with an error, or None."""
    for index, proc in enumerate(nodes):
        code = proc.poll()
        if code is not None and code not in _NODE_STOPPED:
            return index, code
    return None


def _watch(plan: SimulationPlan, coordinator: subprocess.Popen[str],
           nodes: list[subprocess.Popen[bytes]], view: LiveView | None) -> int:
    """The coordinator's exit code, drawing its status file meanwhile; NodeDied as soon as
    a node exits with an error while the coordinator still runs (it would otherwise wait
    out its deadlines for it)."""
    while True:
        try:
            code = coordinator.wait(timeout=VIEW_POLL_S)
            break
        except subprocess.TimeoutExpired:
            pass
        if view is not None:
            view.show(read_status(plan.status_file))
        failed = _failed_node(nodes)
        if failed is None:
            continue
        try:  # a node that failed because the federation did: the coordinator says why
            code = coordinator.wait(timeout=NODE_GRACE_S)
            break
        except subprocess.TimeoutExpired:
            index, node_code = failed
            path = node_log(plan, index)
            said = _last_line(path)
            how = (f"was killed by {signal.Signals(-node_code).name}" if node_code < 0
                   else f"exited with code {node_code}")
            raise NodeDied(f"node-{index} {how}" + (f": {said}" if said else "")
                           + f"; its log: {path}", node=f"node-{index}") from None
    if view is not None:
        view.show(read_status(plan.status_file), force=True)
    return code


def _run_nodes(plan: SimulationPlan, coordinator: subprocess.Popen[str], env: dict[str, str],
               view: LiveView | None) -> int:
    logs = plan.coordinator_log.parent
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        url = plan.broker or wait_for_broker(plan, coordinator)
        for i in range(plan.nodes):
            with node_log(plan, i).open("wb") as out:
                nodes.append(subprocess.Popen(plan.node_command(i, url), stdout=out,
                                              stderr=subprocess.STDOUT, env=env))
        code = _watch(plan, coordinator, nodes, view)
        deadline = time.monotonic() + NODE_EXIT_WAIT_S
        for proc in nodes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
        failed = [i for i, p in enumerate(nodes) if p.wait(timeout=10) not in _NODE_STOPPED]
        if failed and code == 0:
            log.warning(f"node(s) {', '.join(map(str, failed))} exited with an error; "
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
