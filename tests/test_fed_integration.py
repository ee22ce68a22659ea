"""Whole federations as real processes over a real Mosquitto: ``mpfl-coordinator`` and
``mpfl-edge`` started as subprocesses, talking only MQTT. End to end on MNIST, and the
faults: a node SIGKILLed mid-round, hostile messages, the coordinator killed and
restarted, the broker killed and restarted; plus ``mpfl simulate`` with its embedded
broker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from brokers import require_mosquitto, start_mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from coordinator.broker import MosquittoBroker, mosquitto_binary
from mpfl.maths.layer_sparsity import inverse_sqrt
from mpfl.ml.checkpoint import load_model
from mpfl.ml.masks import keep_count
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.units import build_unit_map
from mpfl.wire import Envelope, Kind, encode_envelope, topics

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 150.0
LENET = ["--model", "lenet5", "--granularity", "filter", "--final-sparsity", "0.5",
         "--min-nodes", "3", "--quorum", "2", "--round-timeout", "60", "--lr", "0.05"]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


class Fleet:
    """Coordinator and edge processes of one test; everything is killed at the end."""

    def __init__(self, tmp_path: Path, federation: str) -> None:
        self.tmp, self.federation = tmp_path, federation
        self.run_dir = tmp_path / "run"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.coordinator_logs = 0

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as f:
            proc = subprocess.Popen([sys.executable, "-m", *args], stdout=f,
                                    stderr=subprocess.STDOUT, env=_env())
        self.procs.append(proc)
        return proc

    def start_coordinator(self, url: str, *flags: str) -> subprocess.Popen[bytes]:
        self.coordinator = self._spawn(
            ["coordinator.cli", "run", "--broker", url, "--federation", self.federation,
             "--run-dir", str(self.run_dir), *flags], self.tmp / "coordinator.log")
        return self.coordinator

    def start_edge(self, url: str, i: int, n: int, data_dir: Path, limit: int) -> Any:
        return self._spawn(
            ["edge_node.cli", "start", "--broker", url, "--federation", self.federation,
             "--node-id", f"node-{i}", "--dataset", "mnist", "--data-dir", str(data_dir),
             "--partition", f"{i}/{n}", "--partition-scheme", "iid", "--limit", str(limit),
             "--threads", "1", "--state-dir", str(self.tmp / "state")],
            self.tmp / f"node-{i}.log")

    def log(self, name: str = "coordinator") -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def metrics(self) -> list[dict[str, Any]]:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def node_metrics(self) -> list[dict[str, Any]]:
        path = self.run_dir / "node_metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.log()}")
            time.sleep(0.05)

    def finish(self) -> int:
        assert self.coordinator is not None
        try:
            code = self.coordinator.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the coordinator did not finish\n{self.log()}")
        assert code == 0, self.log()
        for proc in self.procs:
            if proc is not self.coordinator and proc.returncode is None:
                try:
                    assert proc.wait(timeout=30) == 0
                except subprocess.TimeoutExpired:
                    pytest.fail("an edge node did not exit after the federation ended")
        return code

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    f = Fleet(tmp_path, request.node.name.split("[")[0].replace("test_", "")[:40])
    yield f
    f.close()


def _lenet_expected_sparsity(target: float) -> float:
    """Sparsity of top-votes masks under the default inverse-sqrt layer sparsity."""
    spec = ModelSpec("lenet5")
    unit_map = build_unit_map(build_model(spec, seed=0), spec, "filter")
    sizes = [s.stop - s.start for s in unit_map.slices]
    kept = sum(max(1, keep_count(n, r))
               for n, r in zip(sizes, inverse_sqrt(sizes, target), strict=True))
    return 1.0 - kept / unit_map.n_units


def test_end_to_end_on_mnist(tmp_path: Path, fleet: Fleet, mnist_dir: Path) -> None:
    with start_mosquitto(tmp_path) as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        fleet.start_coordinator(url, *LENET, "--mask-rounds", "2", "--train-rounds", "2",
                                "--eval-data", "mnist", "--data-dir", str(mnist_dir))
        for i in range(3):
            fleet.start_edge(url, i, 3, mnist_dir, limit=2000)
        fleet.finish()
    rounds = fleet.metrics()
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for r in rounds[:2]:  # the consensus hits the schedule exactly
        assert r["sparsity"] == pytest.approx(_lenet_expected_sparsity(r["target_sparsity"]))
    assert rounds[1]["target_sparsity"] == pytest.approx(0.5)
    assert rounds[-1]["accuracy"] > 0.4  # chance is 0.1
    sent = {(m["node"], m["round"]): m["upload_bytes"] for m in fleet.node_metrics()}
    for r in rounds:
        assert r["participants"] == ["node-0", "node-1", "node-2"]
        assert r["uplink_bytes"] == sum(sent[(n, r["round"])] for n in r["participants"])
        # joint mask rounds (the default) take a mask and an update from each node
        kinds = ("nodes/mask", "nodes/update") if r["phase"] == "mask" else ("nodes/update",)
        received = r["wire"]["received"]
        assert all(received[k] > 0 for k in kinds)
        assert sum(received[k] for k in kinds) == r["uplink_bytes"]  # no chunking needed
        assert r["dense_uplink_bytes"] == 3 * 4 * 61_706
    final = load_model(fleet.run_dir / "final")
    assert final.meta["dataset"] == "mnist" and final.meta["accuracy"] == rounds[-1]["accuracy"]
    # The federated result exports to ONNX and verifies against torch on the MNIST test set.
    out = tmp_path / "model.onnx"
    export = subprocess.run([sys.executable, "-m", "export.cli", str(fleet.run_dir), "--out",
                             str(out), "--limit", "2000", "--latency-runs", "2"],
                            capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stdout + export.stderr
    report = json.loads((tmp_path / "model.verify.json").read_text())
    assert report["passed"] and report["format"] == "pruned"
    assert report["accuracy_onnx"] == pytest.approx(report["accuracy_torch"], abs=1e-9)


def test_node_killed_mid_round_and_hostile_messages(
    tmp_path: Path, fleet: Fleet, mnist_dir: Path
) -> None:
    with start_mosquitto(tmp_path) as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        fleet.start_coordinator(url, *LENET, "--mask-rounds", "2", "--train-rounds", "2")
        fleet.start_edge(url, 0, 3, mnist_dir, limit=500)
        fleet.start_edge(url, 1, 3, mnist_dir, limit=500)
        slow = fleet.start_edge(url, 2, 3, mnist_dir, limit=19_000)  # trains for many seconds

        def fast_nodes_answered() -> bool:
            return {(m["node"], m["round"]) for m in fleet.node_metrics()} >= {
                ("node-0", 1), ("node-1", 1)}

        fleet.wait_for("the fast nodes' round 1", fast_nodes_answered)
        slow.send_signal(signal.SIGKILL)  # mid-round: node-2 is still training round 1
        slow.wait()
        fleet.wait_for("round 1 to close", lambda: len(fleet.metrics()) >= 1, timeout=30)
        _publish_hostile(broker.host, broker.port, fleet.federation)
        fleet.finish()
    rounds = fleet.metrics()
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert rounds[0]["participants"] == ["node-0", "node-1"]
    assert rounds[0]["seconds"] < 30  # closed on the last will, well before the deadline
    summary = json.loads((fleet.run_dir / "summary.json").read_text())
    assert summary["dropped"]["malformed"] >= 2 and summary["dropped"]["fingerprint"] >= 1


def _publish_hostile(host: str, port: int, federation: str) -> None:
    topic = topics.node_topic(federation, "node-0", topics.NODE_MASK)
    wrong = encode_envelope(Envelope(Kind.LOCAL_MASK, 2, b"\x01" * 8, "node-0", 0, b"\xff"))
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="attacker")
    client.connect(host, port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1)
             for payload in (b"\x00garbage\xff" * 10, wrong[:-5], wrong)]
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def _trained_rounds(log: str) -> Counter[int]:
    """How often each round was trained, from the agent's log lines
    (``... edge_node.agent: round 3 train: trained 1.2s, ...``)."""
    return Counter(int(m[1]) for m in re.finditer(r"edge_node\.agent: round (\d+) \w+: trained",
                                                  log))


def test_coordinator_killed_and_restarted_resumes(
    tmp_path: Path, fleet: Fleet, mnist_dir: Path
) -> None:
    flags = [*LENET, "--mask-rounds", "2", "--train-rounds", "3"]
    with start_mosquitto(tmp_path) as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        first = fleet.start_coordinator(url, *flags)
        for i in range(3):
            fleet.start_edge(url, i, 3, mnist_dir, limit=1500)
        fleet.wait_for("two closed rounds", lambda: len(fleet.metrics()) >= 2)
        first.send_signal(signal.SIGKILL)
        first.wait()
        fleet.start_coordinator(url, *flags)
        fleet.finish()
    assert "resuming" in fleet.log()
    assert [r["round"] for r in fleet.metrics()] == [1, 2, 3, 4, 5]
    for i in range(3):  # no node trained a round twice
        trained = _trained_rounds(fleet.log(f"node-{i}"))
        assert trained and max(trained.values()) == 1, fleet.log(f"node-{i}")


def test_broker_killed_and_restarted(tmp_path: Path, fleet: Fleet, mnist_dir: Path) -> None:
    require_mosquitto()
    binary = mosquitto_binary()
    assert binary is not None
    broker = MosquittoBroker(binary).start()
    try:
        fleet.start_coordinator(broker.url, *LENET, "--mask-rounds", "2", "--train-rounds", "3")
        for i in range(3):
            fleet.start_edge(broker.url, i, 3, mnist_dir, limit=1500)
        fleet.wait_for("two closed rounds", lambda: len(fleet.metrics()) >= 2)
        broker.stop()
        time.sleep(1.0)
        broker.start()  # the same port, but no retained messages and no sessions
        fleet.finish()
    finally:
        broker.stop()
    assert [r["round"] for r in fleet.metrics()] == [1, 2, 3, 4, 5]
    assert "re-publishing state" in fleet.log()


def test_simulate_through_the_embedded_broker(tmp_path: Path) -> None:
    run_dir = tmp_path / "sim"
    done = subprocess.run(
        [sys.executable, "-m", "apps.cli", "simulate", "--nodes", "3", "--run-dir", str(run_dir),
         "--mask-rounds", "2", "--train-rounds", "3"],
        capture_output=True, text=True, env=_env(), timeout=RUN_TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded broker" in done.stdout and "listening on mqtt://127.0.0.1:" in done.stdout
    assert "node-2:" in done.stdout  # the label histogram
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert rounds[-1]["accuracy"] > 0.3
    assert "total uplink" in done.stdout
    # the coordinator's output is also kept, and its ready file went with it
    assert "listening on mqtt://127.0.0.1:" in (run_dir / "logs" / "coordinator.log").read_text()
    assert not (run_dir / "coordinator.ready.json").exists()
