"""The fault benchmark's CI form: ``benchmarks/bench_faults.py --quick`` kills the
coordinator (once inside a checkpoint write, once at random) and resumes it, kills a node
mid-round and restarts the broker mid-round, all as real processes over a real Mosquitto;
cuts a node's network mid-round and restores it, all as real processes over a real
Mosquitto; it fails when a round is lost, the round log is inconsistent or a process
crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from brokers import require_mosquitto

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def test_quick_fault_run_loses_no_round_and_crashes_nothing(tmp_path: Path) -> None:
    require_mosquitto()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_faults.py"), "--quick",
         "--out", str(tmp_path), "--work-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "faults-quick.json").read_text())
    rows = {row["fault"]: row for row in report["summary"]}
    assert set(rows) == {"coordinator-kill", "node-kill", "broker-restart", "node-reconnect"}
    for row in rows.values():
        assert row["runs"] == 1 and row["faults"] >= 1
        assert row["rounds_lost"] == 0 and row["crashes"] == 0 and not row["inconsistent_runs"]
    # The hook made the first coordinator kill land inside the checkpoint write.
    assert rows["coordinator-kill"]["landed"] == 1 and rows["coordinator-kill"]["faults"] == 2
    # The cut node came back by itself once its network did (bounded back-off).
    assert rows["node-reconnect"]["reconnected"] == 1, rows["node-reconnect"]
