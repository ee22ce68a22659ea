"""Watching a real federation: the live view in a pseudo-terminal, structured lines
without one, and Prometheus metrics scraped from a live coordinator over HTTP.

Real processes throughout: ``mpfl simulate`` (embedded Mosquitto, a coordinator and edge
processes on the bundled digits), or a coordinator and edge nodes over a Mosquitto the
test starts."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from brokers import free_port, require_mosquitto, start_mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from apps.demo import DEMO_CONFIG
from mpfl.config.flags import config_to_args
from mpfl.config.settings import FederationConfig
from mpfl.errors import ExitCode
from mpfl.federation.watch import FederationView
from mpfl.wire import topics

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 240.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
SHORT = ["--nodes", "2", "--mask-rounds", "1", "--train-rounds", "2"]
VIEW_EPOCHS = 40


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)


def _in_pty(command: list[str], timeout: float) -> tuple[int, str]:
    """Run ``command`` with a 110x40 pseudo-terminal as its stdin, stdout and stderr; its
    exit code and everything it drew, escape sequences removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 110, 0, 0))
    env = _env(TERM="xterm-256color", COLUMNS="110", LINES="40")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail("the command did not finish in its pseudo-terminal")
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_simulate_draws_the_live_view_in_a_terminal(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # Enough local epochs that a node is still training when the view redraws (0.5 s):
    # two epochs on the bundled digits fit between two redraws.
    code, screen = _in_pty([sys.executable, "-m", "apps.cli", "simulate", *SHORT,
                            "--local-epochs", str(VIEW_EPOCHS), "--run-dir", str(run_dir)],
                           RUN_TIMEOUT_S)
    assert code == 0, screen[-3000:]
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Every field of the view, as drawn while the rounds ran.
    assert "federation demo  phase mask  round 1/3  deadline in " in screen
    # The last round may close between two redraws; the final frame still shows it.
    assert re.search(r"phase (train|done)\s+round 3/3", screen), screen[-3000:]
    assert re.search(r"nodes 2 online, [0-2] answered, 0 late  sparsity", screen)
    for heading in ("this round", "total", "dense fp32", "saved", "node", "state",
                    "last activity", "seen", "local epochs"):
        assert heading in screen
    assert re.search(r"node-[01]\s+training\s+progress\s+\d+s ago\s+[#.]{10} \d+/"
                     + str(VIEW_EPOCHS), screen), screen[-3000:]
    assert re.search(r"node-[01]\s+answered", screen)
    final = f"accuracy {rounds[-1]['accuracy']:.2%}"
    assert final in screen  # the last evaluated accuracy, as the run recorded it
    up = sum(r["uplink_bytes"] for r in rounds)
    dense = sum(r["dense_uplink_bytes"] for r in rounds)
    assert f"{dense / up:.1f}x less" in screen  # the live total against dense FedAvg
    # Log lines still scroll above it, rendered for a terminal.
    assert "INFO" in screen and "total uplink" in screen


def test_simulate_without_a_terminal_logs_one_json_object_per_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "apps.cli", "simulate", *SHORT,
                           "--run-dir", str(run_dir), "--log-format", "json"],
                          capture_output=True, text=True, env=_env(), timeout=RUN_TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    # The launcher's source: the coordinator's last view, decoded strictly.
    assert FederationView.decode((run_dir / "status.json").read_bytes()).phase == "done"
    events = [line for line in lines if "event" in line]
    names = [e["event"] for e in events]
    for name in ("node-online", "round-opened", "node-answered", "round-closed"):
        assert name in names, names
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    closed = [e for e in events if e["event"] == "round-closed"]
    assert [e["round"] for e in closed] == [r["round"] for r in rounds] == [1, 2, 3]
    for event, record in zip(closed, rounds, strict=True):
        for key in ("uplink_bytes", "dense_uplink_bytes", "sparsity", "accuracy",
                    "participants"):
            assert event[key] == record[key]
    answered = {(e["round"], e["node"]) for e in events if e["event"] == "node-answered"}
    assert answered == {(r["round"], n) for r in rounds for n in r["participants"]}
    # The coordinator's lines came through its own logger, not the launcher's.
    assert {"coordinator.service", "coordinator.watching", "apps.cli"} <= {
        line["logger"] for line in lines}


def test_the_coordinator_and_an_edge_node_draw_their_own_views_in_terminals(
    tmp_path: Path,
) -> None:
    """``mpfl-coordinator run`` shows the federation; ``mpfl-edge start`` its local epochs."""
    require_mosquitto()
    cfg = FederationConfig(**{**DEMO_CONFIG.to_dict(), "federation": "terminals",
                              "mask_rounds": 1, "train_rounds": 1, "min_nodes": 1,
                              "quorum": 1, "local_epochs": 3}).validate()
    screens: dict[str, tuple[int, str]] = {}
    with start_mosquitto(tmp_path) as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        commands = {
            "coordinator": [sys.executable, "-m", "coordinator.cli", "run", "--broker", url,
                            "--run-dir", str(tmp_path / "run"),
                            *config_to_args(cfg, skip=("eval_dataset", "eval_data_dir"))],
            "edge": [sys.executable, "-m", "edge_node.cli", "start", "--broker", url,
                     "--federation", cfg.federation, "--node-id", "pi-01", "--limit", "300",
                     "--threads", "1", "--state-dir", str(tmp_path / "state")],
        }
        threads = [threading.Thread(target=lambda k=k, c=c: screens.__setitem__(
            k, _in_pty(c, RUN_TIMEOUT_S))) for k, c in commands.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    (code, coordinator), (edge_code, edge) = screens["coordinator"], screens["edge"]
    assert code == 0 and edge_code == 0, coordinator[-2000:] + edge[-2000:]
    assert "federation terminals  phase mask  round 1/2  deadline in " in coordinator
    # The node's row (which state a redraw catches depends on the machine's speed).
    assert re.search(r"pi-01\s+(waiting|training|answered|idle)\s+\w+\s+\d+s ago",
                     coordinator)
    assert "done: 2 rounds" in coordinator  # log lines above the view
    assert re.search(r"round 1 .* 3/3 epochs", edge) and re.search(r"round 2 .* 3/3 epochs", edge)
    assert "node pi-01: done" in edge


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _closed_rounds(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def test_a_live_coordinator_serves_prometheus_metrics_that_match_its_run(
    tmp_path: Path,
) -> None:
    require_mosquitto()
    cfg = FederationConfig(**{**DEMO_CONFIG.to_dict(), "federation": "scraped",
                              "mask_rounds": 1, "train_rounds": 3, "min_nodes": 2,
                              "quorum": 2, "local_epochs": 3}).validate()
    run_dir, port = tmp_path / "run", free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with start_mosquitto(tmp_path) as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        try:
            with (tmp_path / "coordinator.log").open("wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "coordinator.cli", "run", "--broker", url,
                     "--run-dir", str(run_dir), "--metrics-port", str(port),
                     "--eval-data", "digits", "--log-format", "json",
                     *config_to_args(cfg, skip=("eval_dataset", "eval_data_dir"))],
                    stdout=out, stderr=subprocess.STDOUT, env=_env()))
            coordinator = procs[0]
            while _scrape(port) is None:
                assert coordinator.poll() is None, (tmp_path / "coordinator.log").read_text()
                time.sleep(0.1)
            _send_a_message_from_an_unknown_node(broker.host, broker.port)
            for i in range(2):
                with (tmp_path / f"node-{i}.log").open("wb") as out:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "edge_node.cli", "start", "--broker", url,
                         "--federation", cfg.federation, "--node-id", f"node-{i}",
                         "--partition", f"{i}/2", "--threads", "1",
                         "--state-dir", str(tmp_path / "state")],
                        stdout=out, stderr=subprocess.STDOUT, env=_env()))
            checked = _scrape_while_running(coordinator, port, run_dir)
            assert coordinator.wait(timeout=RUN_TIMEOUT_S) == 0
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert checked >= 1, "no scrape caught the coordinator between two rounds"
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["dropped"] == {"unknown-node": 1}


def _send_a_message_from_an_unknown_node(host: str, port: int) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="ghost")
    client.connect(host, port)
    client.loop_start()
    info = client.publish(topics.node_topic("scraped", "ghost", topics.NODE_MASK), b"x", qos=1)
    info.wait_for_publish(timeout=10)
    client.loop_stop()
    client.disconnect()


def _scrape_while_running(coordinator: subprocess.Popen[bytes], port: int,
                          run_dir: Path) -> int:
    """Scrape until the coordinator exits; check each scrape taken while the run directory
    did not change against the rounds it records. How many scrapes were checked."""
    checked = 0
    while coordinator.poll() is None:
        before = _closed_rounds(run_dir)
        scraped = _scrape(port)
        after = _closed_rounds(run_dir)
        if scraped is None or before != after or not after:
            time.sleep(0.1)
            continue
        _check(scraped, after)
        checked += 1
        time.sleep(0.3)
    return checked


def _check(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float],
           rounds: list[dict[str, Any]]) -> None:
    def value(name: str, **labels: str) -> float:
        return scraped.get((f"mpfl_coordinator_{name}", tuple(sorted(labels.items()))), 0.0)

    # Between the round's counters and its line on disk a scrape may see one round more.
    closed = value("rounds_completed_total")
    if closed != len(rounds):
        assert closed == len(rounds) + 1
        return
    assert value("uplink_bytes_total") == sum(r["uplink_bytes"] for r in rounds)
    assert value("dense_uplink_bytes_total") == sum(r["dense_uplink_bytes"] for r in rounds)
    assert value("round_duration_seconds_count") == len(rounds)
    assert value("round_duration_seconds_sum") == pytest.approx(
        sum(r["seconds"] for r in rounds))
    assert value("sparsity") == pytest.approx(rounds[-1]["sparsity"])
    evaluated = [r["accuracy"] for r in rounds if r["accuracy"] is not None]
    if evaluated:
        assert value("accuracy") == pytest.approx(evaluated[-1])
    if len(rounds) < 4:
        assert value("nodes_online") == 2
    assert value("federation_info", federation="scraped") == 1
    assert value("messages_rejected_total", reason="unknown-node") == 1
    masks = sum(r["wire"]["received"].get("nodes/mask", 0) for r in rounds)
    # The first round's wire window began at the start: the ghost's byte is in it.
    assert value("bytes_total", direction="received", kind="nodes/mask") == masks
    assert value("messages_received_total", kind="nodes/mask") == 2 + 1  # two nodes, a ghost
    assert value("messages_sent_total", kind="server/state") >= len(rounds) + 1


def test_a_metrics_port_in_use_is_one_line_and_the_port_in_use_exit_code(
        tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "run", "--run-dir", str(tmp_path / "r"),
             "--metrics-port", str(port), "--broker", "mqtt://127.0.0.1:1"],
            capture_output=True, text=True, env=_env(), timeout=60, check=False)
    assert done.returncode == ExitCode.PORT_IN_USE
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in errors[0]
    assert "--metrics-port" in errors[0]
