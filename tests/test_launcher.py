"""How ``mpfl simulate`` learns the coordinator's broker: its ready file, not its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apps.launcher import SimulationPlan, wait_for_broker
from coordinator.ready import CoordinatorReady, read_ready_file, write_ready_file
from mpfl.config.settings import FederationConfig
from mpfl.errors import FederationError


def _plan(tmp_path: Path) -> SimulationPlan:
    plan = SimulationPlan(FederationConfig(), 2, "digits", tmp_path)
    plan.coordinator_log.parent.mkdir(parents=True)
    return plan


def _child(code: str) -> subprocess.Popen[str]:
    """A stand-in coordinator: a Python process running ``code``."""
    return subprocess.Popen([sys.executable, "-c", code], text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def test_ready_file_round_trips_and_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    assert read_ready_file(path) is None
    write_ready_file(path, CoordinatorReady("mqtt://127.0.0.1:41883", 1234))
    assert read_ready_file(path) == CoordinatorReady("mqtt://127.0.0.1:41883", 1234)
    assert path.read_bytes() == b'{"broker": "mqtt://127.0.0.1:41883", "pid": 1234}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready.json"]  # no temporary left


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[]",
        b'{"broker": "mqtt://h:1"}',
        b'{"broker": "mqtt://h:1", "pid": 1, "extra": 0}',
        b'{"broker": "http://h:1", "pid": 1}',
        b'{"broker": "mqtt://h:1", "pid": "1"}',
        b'{"broker": "mqtt://h:1", "pid": true}',
        b'{"broker": "mqtt://h:1", "pid": 0}',
    ],
)
def test_a_malformed_ready_file_is_one_error_naming_it(data: bytes) -> None:
    with pytest.raises(FederationError, match="ready file") as caught:
        CoordinatorReady.decode(data, source="run/coordinator.ready.json")
    assert "run/coordinator.ready.json" in str(caught.value)


def test_waits_for_the_url_the_coordinator_writes(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    child = _child(
        "import os, time; from pathlib import Path\n"
        "from coordinator.ready import CoordinatorReady, write_ready_file\n"
        "time.sleep(0.3)\n"
        f"write_ready_file(Path({str(plan.ready_file)!r}), "
        "CoordinatorReady('mqtt://127.0.0.1:41883', os.getpid()))\n"
        "time.sleep(30)\n"
    )
    try:
        assert wait_for_broker(plan, child, timeout=20) == "mqtt://127.0.0.1:41883"
    finally:
        child.kill()
        child.wait()


def test_a_coordinator_that_exits_first_is_reported_with_its_log(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    child = _child("raise SystemExit(2)")
    with pytest.raises(FederationError) as caught:
        wait_for_broker(plan, child, timeout=20)
    message = str(caught.value)
    assert "exited (code 2) before its broker was up" in message
    assert str(plan.coordinator_log) in message and "\n" not in message


def test_a_ready_file_that_never_appears_times_out_naming_the_log(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    child = _child("import time; time.sleep(30)")
    try:
        with pytest.raises(FederationError, match="not up after 0 s") as caught:
            wait_for_broker(plan, child, timeout=0.2)
        assert str(plan.coordinator_log) in str(caught.value)
    finally:
        child.kill()
        child.wait()


def test_a_ready_file_from_another_process_is_not_believed(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    child = _child("import time; time.sleep(30)")
    write_ready_file(plan.ready_file, CoordinatorReady("mqtt://127.0.0.1:1", child.pid + 1))
    try:
        with pytest.raises(FederationError, match="written by another process"):
            wait_for_broker(plan, child, timeout=5)
    finally:
        child.kill()
        child.wait()


def test_the_coordinator_is_asked_for_a_ready_file_in_the_run_dir(tmp_path: Path) -> None:
    plan = SimulationPlan(FederationConfig(), 2, "digits", tmp_path)
    command = plan.coordinator_command()
    assert command[command.index("--ready-file") + 1] == str(tmp_path / "coordinator.ready.json")


def test_a_simulation_runs_signed_with_throwaway_keys(tmp_path: Path) -> None:
    from mpfl.wire.signing import Keyring, PublicKey, SigningKey

    plan = SimulationPlan(FederationConfig(), 2, "digits", tmp_path)
    plan.write_keys()
    coordinator = plan.coordinator_command()
    enrolled = Keyring.load_enrolment(Path(coordinator[coordinator.index("--enrolment") + 1]))
    coordinator_key = SigningKey.load(Path(coordinator[coordinator.index("--key") + 1]))
    for i in range(2):
        node = plan.node_command(i, "mqtt://127.0.0.1:1")
        key = SigningKey.load(Path(node[node.index("--key") + 1]))
        assert enrolled.node(f"node-{i}") == key.public_key
        pub = PublicKey.load(Path(node[node.index("--coordinator-key") + 1]))
        assert pub == coordinator_key.public_key
    unsigned = SimulationPlan(FederationConfig(), 2, "digits", tmp_path, signed=False)
    assert "--key" not in unsigned.coordinator_command() + unsigned.node_command(0, "x")


def test_the_children_log_json_the_coordinator_keeps_a_status_file_and_both_parse(
    tmp_path: Path,
) -> None:
    from coordinator.cli import run
    from edge_node.cli import start

    plan = SimulationPlan(FederationConfig(), 2, "digits", tmp_path, metrics_port=9107,
                          verbosity=1)
    coordinator = plan.coordinator_command()
    assert coordinator[1:4] == ["-m", "coordinator.cli", "run"]
    params = run.make_context("run", coordinator[4:]).params
    assert params["status_file"] == tmp_path / "status.json"
    assert (params["log_format"], params["verbose"], params["metrics_port"]) == ("json", True,
                                                                                 9107)
    node = plan.node_command(0, "mqtt://127.0.0.1:1")
    assert node[1:4] == ["-m", "edge_node.cli", "start"]
    params = start.make_context("start", node[4:]).params
    assert (params["progress_every"], params["verbose"]) == (0.0, True)
