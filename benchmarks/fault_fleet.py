"""Real processes for the fault benchmark: one ``mpfl-coordinator``, ``mpfl-edge`` nodes,
a real Mosquitto (``coordinator.broker.MosquittoBroker``, restartable on its port), and a
TCP proxy per node that can cut a node's connection while its process keeps running.

The fleet remembers every signal it sends, so an exit by a signal it did not send, or a
non-zero exit, is a crash of ours. The round log check (``check_rounds``) is what "no
round lost" means: every round 1..N closed exactly once, in order, in its phase, with at
least the quorum, and the rounds on disk before a coordinator kill are still there after.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.broker import MosquittoBroker, mosquitto_binary

# Bounds on waiting, not figures: generous, so a loaded shared machine (imports of torch
# in four processes at once) is not mistaken for a hang.
WAIT_S = 180.0
RUN_TIMEOUT_S = 300.0


class FaultTimeout(Exception):
    """A run did not reach a point the benchmark waited for."""


class CutProxy:
    """A loopback TCP proxy to the broker. ``cut()`` closes every connection through it and
    refuses new ones until ``restore()``: a node whose network drops, process untouched."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # a quiet MQTT connection is not a dead one
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    signals: list[int] = field(default_factory=list)  # what the fleet sent it

    def send(self, sig: int) -> None:
        self.signals.append(sig)
        self.popen.send_signal(sig)

    def crashed(self) -> bool:
        """Exited non-zero, or by a signal the fleet did not send."""
        code = self.popen.returncode
        if code is None or code == 0:
            return False
        return not (code < 0 and -code in self.signals)


@dataclass
class RunSpec:
    nodes: int = 3
    mask_rounds: int = 3
    train_rounds: int = 3
    quorum: int = 2
    round_timeout: float = 6.0
    local_epochs: int = 10

    @property
    def total(self) -> int:
        return self.mask_rounds + self.train_rounds

    def coordinator_flags(self) -> list[str]:
        return ["--model", "mlp", "--model-args", '{"image_size": 8, "hidden": [64, 32]}',
                "--granularity", "filter", "--final-sparsity", "0.5",
                "--mask-rounds", str(self.mask_rounds), "--train-rounds",
                str(self.train_rounds), "--min-nodes", str(self.nodes), "--quorum",
                str(self.quorum), "--round-timeout", str(self.round_timeout), "--retries", "2",
                "--local-epochs", str(self.local_epochs), "--start-timeout", f"{WAIT_S:g}",
                "--eval-data", "digits"]


class Fleet:
    """One federation run's processes, logs and run directory under ``root``."""

    def __init__(self, root: Path, spec: RunSpec, federation: str) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise SystemExit("bench_faults needs mosquitto on PATH")
        self.root, self.spec, self.federation = root, spec, federation
        root.mkdir(parents=True, exist_ok=True)
        self.run_dir = root / "run"
        self.broker = MosquittoBroker(binary, workdir=root / "broker")
        self.broker.workdir.mkdir(exist_ok=True)
        self.broker.start()
        self.proxies = [CutProxy((self.broker.host, self.broker.port))
                        for _ in range(spec.nodes)]
        self.procs: list[Proc] = []
        self.coordinator: Proc | None = None
        self.edges: dict[int, Proc] = {}

    @property
    def url(self) -> str:
        return self.broker.url

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        environ = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
        with (self.root / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen([sys.executable, "-m", *args], stdout=log,
                                     stderr=subprocess.STDOUT, env=environ)
        proc = Proc(name, popen)
        self.procs.append(proc)
        return proc

    def start_coordinator(self, env: dict[str, str] | None = None) -> Proc:
        ready = self.root / "coordinator.ready.json"
        ready.unlink(missing_ok=True)
        self.coordinator = self._spawn("coordinator", [
            "coordinator.cli", "run", "--broker", self.url, "--federation", self.federation,
            "--run-dir", str(self.run_dir), "--ready-file", str(ready),
            *self.spec.coordinator_flags()], env)
        self.wait_for("the coordinator's ready file", ready.exists, WAIT_S)
        return self.coordinator

    def start_edge(self, i: int) -> Proc:
        n = self.spec.nodes
        self.edges[i] = self._spawn(f"node-{i}", [
            "edge_node.cli", "start", "--broker", f"mqtt://127.0.0.1:{self.proxies[i].port}",
            "--federation", self.federation, "--node-id", f"node-{i}", "--dataset", "digits",
            "--partition", f"{i}/{n}", "--threads", "1",
            "--state-dir", str(self.root / "state")])
        return self.edges[i]

    def start(self) -> None:
        self.start_coordinator()
        for i in range(self.spec.nodes):
            self.start_edge(i)

    def log(self, name: str = "coordinator") -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def rounds(self) -> list[dict[str, Any]]:
        path = self.run_dir / "metrics.jsonl"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def closed(self) -> int:
        return len(self.rounds())

    def wait_for(self, what: str, condition: Callable[[], bool],
                 timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise FaultTimeout(f"timed out waiting for {what}")
            time.sleep(0.02)

    def wait_round_open(self, t: int, timeout: float = WAIT_S) -> None:
        """Round ``t`` is open: round ``t - 1`` is on disk (it is announced only after)."""
        self.wait_for(f"round {t} to open", lambda: self.closed() >= t - 1, timeout)

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> bool:
        """Wait for the coordinator and the live nodes to exit; False if one did not."""
        assert self.coordinator is not None
        deadline = time.monotonic() + timeout
        for proc in [self.coordinator, *(p for p in self.procs if p is not self.coordinator)]:
            try:
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                return False
        return True

    def still_running(self, lines: int = 12) -> list[str]:
        """Each process that has not exited, with the last lines of its log: what it was
        waiting for."""
        return [f"{p.name} still running; its log ends: "
                + " | ".join(self.log(p.name).splitlines()[-lines:])
                for p in self.procs if p.popen.poll() is None]

    def crashes(self) -> list[str]:
        return [f"{p.name} exited {p.popen.returncode}" for p in self.procs if p.crashed()]

    def close(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait()
        for proxy in self.proxies:
            proxy.close()
        self.broker.stop()


def check_rounds(rounds: list[dict[str, Any]], spec: RunSpec,
                 kept: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Rounds completed and lost, every inconsistency of the final round log, and the
    rounds that closed with fewer answers than the quorum."""
    numbers = [r["round"] for r in rounds]
    problems = []
    if numbers != sorted(set(numbers)):
        problems.append(f"rounds repeated or out of order: {numbers}")
    for r in rounds:
        phase = "mask" if r["round"] <= spec.mask_rounds else "train"
        if r["phase"] != phase:
            problems.append(f"round {r['round']} closed in phase {r['phase']}")
    by_round = {r["round"]: r for r in rounds}
    for before in kept or []:  # what was on disk when the coordinator died
        after = by_round.get(before["round"])
        if after is None or after["participants"] != before["participants"]:
            problems.append(f"round {before['round']} changed or vanished after a restart")
    completed = len(set(numbers) & set(range(1, spec.total + 1)))
    # Reported apart from the problems: the early close that ignores the quorum is a known
    # defect of the round rule (issue 12), not a round lost.
    below = [r["round"] for r in rounds if len(r["participants"]) < spec.quorum]
    return {"completed": completed, "lost": spec.total - completed, "problems": problems,
            "below_quorum": below}


def read_marker(path: Path) -> tuple[str, int] | None:
    """The checkpoint pause marker's ``(what, round)``, once it is there and whole."""
    try:
        what, closed = path.read_text().split()
        return what, int(closed)
    except (OSError, ValueError):
        return None


def kill(proc: Proc) -> None:
    proc.send(signal.SIGKILL)
    proc.popen.wait()
