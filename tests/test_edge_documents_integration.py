"""A real ``mpfl-edge`` process over a real Mosquitto receives retained state documents it
cannot use (the kinds that used to end it) and keeps running: it logs one line for each
and, when stopped, reports the counts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from brokers import start_mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from mpfl.wire import topics

pytestmark = pytest.mark.integration

FED = "hostile"
STATE = topics.server_topic(FED, topics.SERVER_STATE)
# A state document with one field wrong each; the first ones are the issue's own.
VALID = {"protocol": 1, "federation": FED, "session": "s1", "run": "r1", "phase": "mask",
         "round": 1, "mask_rounds": 1, "train_rounds": 1, "target_sparsity": 0.5,
         "layer_sparsity": "uniform",
         "deadline": 0.0, "model": {"name": "mlp", "args": {"image_size": 8}},
         "granularity": "filter", "fingerprint": "00" * 8, "model_scope": "dense",
         "train": {"epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.0,
                   "weight_decay": 0.0, "optimizer": "sgd"},
         "value_codec": "fp32", "mode": "rewind", "delta": False, "error_feedback": False,
         "error": None}
DEFECTS = [
    b"not json at all",
    json.dumps({**VALID, "round": "x"}).encode(),
    json.dumps({k: v for k, v in VALID.items() if k != "round"}).encode(),
    json.dumps({**VALID, "train": {**VALID["train"], "nesterov": True}}).encode(),
    json.dumps({**VALID, "phase": "paused"}).encode(),
    json.dumps({**VALID, "protocol": 2}).encode(),
    json.dumps({**VALID, "model": {"name": "vgg99", "args": {}}}).encode(),
    json.dumps(VALID).encode(),  # well-formed, but for another model: fingerprint mismatch
]


def _publish_retained(host: str, port: int, payload: bytes) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="intruder")
    client.connect(host, port)
    client.loop_start()
    client.publish(STATE, payload, qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def _wait_for(log: Path, text: str, count: int, proc: subprocess.Popen[bytes],
              timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if log.read_text(errors="replace").count(text) >= count:
            return
        assert proc.poll() is None, f"mpfl-edge exited:\n{log.read_text(errors='replace')}"
        time.sleep(0.2)
    pytest.fail(f"no {count} x {text!r} within {timeout} s:\n{log.read_text(errors='replace')}")


def test_edge_survives_retained_state_documents_it_cannot_use(tmp_path: Path) -> None:
    log = tmp_path / "edge.log"
    with start_mosquitto(tmp_path) as broker:
        _publish_retained(broker.host, broker.port, DEFECTS[0])  # waiting when it connects
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_node.cli", "start", "--broker",
                 f"mqtt://{broker.host}:{broker.port}", "--federation", FED, "--node-id",
                 "pi-01", "--dataset", "digits", "--limit", "50", "--state-dir",
                 str(tmp_path / "state")], stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_for(log, "dropped a message on", 1, proc, timeout=120)  # torch loads first
            for i, payload in enumerate(DEFECTS[1:], start=2):
                _publish_retained(broker.host, broker.port, payload)
                # One line per new reason: the 7th (vgg99) is another "unknown-value".
                _wait_for(log, "dropped a message on", i if i < 7 else i - 1, proc, 30)
            time.sleep(3)
            assert proc.poll() is None, log.read_text()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    for reason in ("not-json", "wrong-type", "missing-field", "unknown-field",
                   "unknown-value", "protocol-version", "fingerprint"):
        assert f"({reason})" in text, reason
    # One per document, more if a reconnect replays the retained one.
    summary = re.search(r"dropped (\d+) unusable server message\(s\)", text)
    assert summary is not None and int(summary[1]) >= len(DEFECTS), text
    assert "Traceback" not in text
