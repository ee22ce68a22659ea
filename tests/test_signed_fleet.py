"""A keyed fleet under attack: real ``mpfl-coordinator`` and ``mpfl-edge`` processes, a real
Mosquitto, and an attacker's paho client on the same (anonymous) broker.

Each time the coordinator opens a round the attacker publishes (a) a valid envelope for the
round under an honest node's topic, unsigned and signed with its own key, (b) a replay of
every honest upload it captured, (c) a retained ``server/state`` with lr = 1e30, unsigned
and self-signed, (d) a hello from an unenrolled "ghost" claiming 2^32-1 samples. The run
must complete with every round answered by exactly the three enrolled nodes, every forgery
counted as rejected, and the accuracy of a clean run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from brokers import start_mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from mpfl.wire import Envelope, decode_envelope, encode_envelope, topics
from mpfl.wire.frame import COORDINATOR, decode_frame, is_framed
from mpfl.wire.protocol import Hello, decode_state
from mpfl.wire.seal import Sealer
from mpfl.wire.signing import SigningKey, write_enrolment

pytestmark = pytest.mark.integration

FED = "signed"
N = 3
RUN_TIMEOUT_S = 120.0
FLAGS = ["--model", "mlp", "--model-args", '{"image_size": 8, "hidden": [32]}',
         "--granularity", "filter", "--final-sparsity", "0.5", "--mask-rounds", "2",
         "--train-rounds", "2", "--local-epochs", "2", "--lr", "0.05", "--min-nodes", str(N),
         "--quorum", str(N), "--round-timeout", "60", "--eval-data", "digits"]


class Attacker:
    """Sees everything on the broker and answers each new round with forgeries."""

    def __init__(self, host: str, port: int) -> None:
        self.key = SigningKey.generate()
        self.captured: list[tuple[str, bytes]] = []
        self.rounds: set[int] = set()
        self.sent: dict[str, int] = {}
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="attacker")
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe(topics.nodes_filter(FED), qos=1)
        self.client.subscribe(topics.server_filter(FED), qos=1)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _send(self, what: str, topic: str, payload: bytes, retain: bool = False) -> None:
        self.sent[what] = self.sent.get(what, 0) + 1
        self.client.publish(topic, payload, qos=1, retain=retain)

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._lock:
            topic, payload = message.topic, bytes(message.payload)
            parsed = topics.parse_node_topic(FED, topic)
            if parsed is not None and parsed[1] == topics.NODE_UPDATE and parsed[0] != "ghost":
                if is_framed(payload) and (topic, payload) not in self.captured:
                    self.captured.append((topic, payload))
                    self._send("replay", topic, payload)  # (b) at once
            elif topic == topics.server_topic(FED, topics.SERVER_STATE) and is_framed(payload):
                frame, _, _ = decode_frame(payload)
                if frame.signer == COORDINATOR and not message.retain:
                    self._attack(frame.session, frame.payload)

    def _attack(self, session: str, state_payload: bytes) -> None:
        try:
            doc = decode_state(state_payload)
        except Exception:
            return  # one of our own forgeries, relayed back
        if not doc.phase.is_round or doc.round in self.rounds:
            return
        self.rounds.add(doc.round)
        for topic, payload in self.captured:  # (b) replays of every earlier upload
            self._send("replay", topic, payload)
        if self.captured:  # (a) this round's upload under node-0's name, values x 1e6
            old = decode_envelope(decode_frame(self.captured[-1][1])[0].payload)
            forged = encode_envelope(Envelope(old.kind, doc.round, old.fingerprint, "node-0",
                                              old.codec, old.payload))
            topic = topics.node_topic(FED, "node-0", topics.NODE_UPDATE)
            self._send("forged-unsigned", topic, forged)
            own = Sealer(self.key, "node-0", session).seal_all
            self._send("forged-signed", topic, own([_pub(topic, forged)])[0].payload)
        # (c) a retained state that would train to NaN
        evil = json.loads(state_payload)
        evil["train"]["lr"] = 1e30
        evil_bytes = json.dumps(evil).encode()
        state = topics.server_topic(FED, topics.SERVER_STATE)
        self._send("state", state, evil_bytes, retain=True)
        signed = Sealer(self.key, COORDINATOR, session).seal(_pub(state, evil_bytes))
        self._send("state", state, signed.payload, retain=True)
        # (d) a Sybil
        ghost = topics.node_topic(FED, "ghost", topics.NODE_STATUS)
        hello = Hello("ghost", 0xFFFF_FFFF).encode()
        self._send("ghost", ghost, hello, retain=True)
        self._send("ghost", ghost, Sealer(self.key, "ghost", session).seal(
            _pub(ghost, hello)).payload)


def _pub(topic: str, payload: bytes) -> Any:
    from mpfl.wire.protocol import Publish

    return Publish(topic, payload)


def _keys(tmp: Path) -> tuple[Path, Path, Path, list[Path]]:
    coordinator = SigningKey.generate()
    nodes = {f"node-{i}": SigningKey.generate() for i in range(N)}
    node_files = [k.save(tmp / f"{n}.key") for n, k in nodes.items()]
    enrolled = write_enrolment(tmp / "enrolled.toml", {n: k.public_key for n, k in nodes.items()})
    return (coordinator.save(tmp / "coordinator.key"),
            coordinator.public_key.save(tmp / "coordinator.pub"), enrolled, node_files)


def test_a_keyed_fleet_rejects_every_forgery(tmp_path: Path) -> None:
    key, pub, enrolled, node_keys = _keys(tmp_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    run_dir = tmp_path / "run"
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", *args], stdout=out,
                                    stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        return proc

    def log(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text(errors="replace")

    with start_mosquitto(tmp_path) as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        attacker = Attacker(broker.host, broker.port)
        try:
            coordinator = spawn(["coordinator.cli", "run", "--broker", url, "--federation", FED,
                                 "--run-dir", str(run_dir), "--key", str(key), "--enrolment",
                                 str(enrolled), *FLAGS], "coordinator")
            nodes = [spawn(["edge_node.cli", "start", "--broker", url, "--federation", FED,
                            "--node-id", f"node-{i}", "--dataset", "digits", "--partition",
                            f"{i}/{N}", "--threads", "1", "--state-dir",
                            str(tmp_path / "state"), "--key", str(node_keys[i]),
                            "--coordinator-key", str(pub)], f"node-{i}") for i in range(N)]
            try:
                assert coordinator.wait(timeout=RUN_TIMEOUT_S) == 0, log("coordinator")
                for i, node in enumerate(nodes):
                    assert node.wait(timeout=30) == 0, log(f"node-{i}")
            except subprocess.TimeoutExpired:
                pytest.fail("the fleet did not finish\n" + log("coordinator"))
        finally:
            attacker.close()
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert attacker.rounds == {1, 2, 3, 4}, attacker.sent
    assert {"replay", "forged-unsigned", "forged-signed", "state", "ghost"} <= set(attacker.sent)
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["participants"] for r in rounds] == [[f"node-{i}" for i in range(N)]] * 4
    summary = json.loads((run_dir / "summary.json").read_text())
    dropped = summary["dropped"]
    for reason in ("unsigned", "bad-signature", "unknown-signer", "replay"):
        assert dropped.get(reason, 0) >= 1, dropped
    assert "ghost" not in (run_dir / "node_metrics.jsonl").read_text()
    assert "ghost" not in (run_dir / "checkpoint" / "state.json").read_text()
    # digits, 3 x 1/3 of the data: a clean run of this config ends near 90 %
    assert rounds[-1]["accuracy"] >= 0.8, rounds[-1]
    for i in range(N):
        text = log(f"node-{i}")
        assert "Traceback" not in text and "loss nan" not in text
        assert "ignored a message on" in text, text  # the forged retained states
    assert "NOT authenticated" not in log("coordinator")
