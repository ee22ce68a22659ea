"""The scale benchmark's CI form: 200 virtual nodes of ``benchmarks/loadgen.py`` on 100
shared MQTT connections to a real Mosquitto, and a real ``mpfl-coordinator`` process
through one mask round and two training rounds. Not timed: every upload must be
aggregated, none dropped, the consensus must be the fleet's mask, the final weights the
FedAvg computed directly from the precomputed uploads, and the raw path must carry the
same bytes as a round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from brokers import require_mosquitto, start_mosquitto

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import loadgen  # noqa: E402
from benchmarks.bench_rounds import PLAIN_MPFL_FLAGS  # noqa: E402
from mpfl.ml.checkpoint import load_model  # noqa: E402

pytestmark = pytest.mark.integration

NODES, CONNECTIONS = 200, 100


def test_every_upload_of_200_virtual_nodes_is_aggregated_exactly(tmp_path: Path) -> None:
    require_mosquitto()
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with start_mosquitto(tmp_path, extra_conf="max_queued_messages 0") as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        fleet = loadgen.Fleet(url, "ci", NODES, CONNECTIONS, "int8", 0.9, env=env)
        try:
            assert fleet.connections == CONNECTIONS
            run_dir = tmp_path / "run"
            done = subprocess.run(
                [sys.executable, "-m", "coordinator.cli", "run", "--broker", url,
                 "--federation", "ci", "--run-dir", str(run_dir), "--model", "lenet5",
                 "--granularity", "weight", "--final-sparsity", "0.9", "--mask-rounds", "1",
                 "--train-rounds", "2", "--value-codec", "int8", *PLAIN_MPFL_FLAGS,
                 "--min-nodes", str(NODES),
                 "--quorum", str(NODES), "--round-timeout", "300", "--start-timeout", "300"],
                capture_output=True, text=True, timeout=900, check=False, env=env, cwd=ROOT)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            fleet.check_alive()
            raw = loadgen.RawSubscriber(url, "ci", NODES)
            try:
                _seconds, raw_bytes = raw.transfer(120)
            finally:
                raw.close()
        finally:
            fleet.stop()

    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in logs] == ["mask", "train", "train"]
    everyone = sorted(loadgen.node_id(i) for i in range(NODES))
    for record in logs:
        assert record["participants"] == everyone and record["dropped"] == {}
    assert raw_bytes == logs[-1]["uplink_bytes"]  # the raw reference moves the same bytes

    saved = load_model(run_dir / "final")
    units = saved.unit_map()
    mask = loadgen.fleet_mask(units, 0.9)
    np.testing.assert_array_equal(saved.mask, mask)
    got = units.alive_values(saved.state, saved.mask)
    want = loadgen.expected_average(units, mask, "int8", NODES)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    # Not any one node's upload, nor an unweighted mean of the variants: the weights matter.
    unweighted = loadgen.expected_average(units, mask, "int8", loadgen.VARIANTS)
    assert np.abs(got - unweighted).max() > 1e-6
