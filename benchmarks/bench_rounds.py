"""Federation rounds through a real Mosquitto: coordinator overhead, memory, and wall time.

1. Overhead: a real ``mpfl-coordinator`` process and N virtual nodes spread over a few
   worker processes (one MQTT client each) that answer every training round with a
   precomputed update, so no training time is measured. A round's time (open to close,
   from metrics.jsonl) is compared with the raw broker time of the same bytes: the same
   workers answering a trigger message, received by a plain subscriber. Goal <= 1.5x.
2. Memory: the coordinator's peak RSS with 50 and with 200 virtual nodes. Goal: flat.
3. Headline: wall time of a 20-round MNIST federation (LeNet-5, 10 persistent
   ``mpfl-edge`` processes, Dirichlet 0.5, 1 local epoch, batch 32; 5 mask rounds + 15
   training rounds, weight masks to 90%, int8 values) through Mosquitto, and its accuracy.

    .venv/bin/python benchmarks/bench_rounds.py [--quick] [--skip-headline]

Writes benchmarks/results/rounds.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.broker import MosquittoBroker, mosquitto_binary  # noqa: E402
from mpfl.config.flags import settings_to_args  # noqa: E402
from mpfl.config.settings import PLAIN_MPFL  # noqa: E402
from mpfl.ml.models import ModelSpec, build_model  # noqa: E402
from mpfl.ml.units import build_unit_map  # noqa: E402
from mpfl.wire import (  # noqa: E402
    Envelope,
    Kind,
    encode_envelope,
    encode_values,
    topics,  # noqa: E402
)
from mpfl.wire.protocol import Hello, encode_update  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "rounds.json"
WORKERS = 4
TRIGGER = "bench/trigger"


# These runs measure rounds and bytes of the values themselves, not the codec's deltas,
# error feedback or server momentum.
PLAIN_MPFL_FLAGS = settings_to_args(PLAIN_MPFL)

def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


# -- virtual nodes (worker process) ---------------------------------------------------------


def _update_body(codec_name: str) -> tuple[bytes, int]:
    spec = ModelSpec("lenet5")
    unit_map = build_unit_map(build_model(spec, seed=0), spec, "weight")
    full = unit_map.full_mask()
    sizes = unit_map.layer_sizes(full)
    values = np.random.default_rng(0).normal(0, 0.05, sum(sizes)).astype(np.float32)
    codec, body = encode_values(values, sizes, codec_name)
    return encode_update(100, body), codec


def worker(url: str, federation: str, ids: list[str], codec_name: str) -> None:
    """Answer each training round (and each raw trigger) once per virtual node."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    body, codec = _update_body(codec_name)
    clients = []
    for node_id in ids:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{node_id}")
        answered: set[tuple[int, str]] = set()

        def on_message(c: paho.Client, _u: Any, msg: Any, node_id: str = node_id,
                       answered: set[tuple[int, str]] = answered) -> None:
            if msg.topic == TRIGGER:
                c.publish(f"bench/raw/{node_id}", body, qos=1)
                return
            doc = json.loads(msg.payload)
            t, session = int(doc["round"]), str(doc["session"])
            if doc["phase"] != "train" or (t, session) in answered:
                return
            answered.add((t, session))
            env = Envelope(Kind.UPDATE, t, bytes.fromhex(doc["fingerprint"]), node_id, codec, body)
            c.publish(topics.node_topic(federation, node_id, "update"), encode_envelope(env), qos=1)

        client.on_message = on_message
        client.connect(host, int(port))
        client.subscribe([(topics.server_topic(federation, "state"), 1), (TRIGGER, 1)])
        client.loop_start()
        client.publish(topics.node_topic(federation, node_id, "status"),
                       Hello(node_id, 100, "virtual").encode(), qos=1, retain=True)
        clients.append(client)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the parent closes our stdin


def _start_workers(url: str, federation: str, n: int, codec: str) -> list[subprocess.Popen[str]]:
    ids = [f"v{i:04d}" for i in range(n)]
    procs = []
    for w in range(WORKERS):
        mine = ids[w::WORKERS]
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", url, federation, codec, ",".join(mine)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env()))
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.stdin:
            proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=10)


# -- measurements ---------------------------------------------------------------------------


def peak_rss_mb(pid: int, stop: threading.Event, out: list[float]) -> None:
    """Sample ``pid``'s VmHWM until ``stop``; append the peak in MB to ``out``."""
    peak = 0.0
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            break
        time.sleep(0.1)
    out.append(peak)


def coordinator_rounds(url: str, n: int, rounds: int, codec: str, tmp: Path) -> dict[str, Any]:
    federation = f"bench{n}"
    run_dir = tmp / federation
    procs = _start_workers(url, federation, n, codec)
    cmd = [sys.executable, "-m", "coordinator.cli", "run", "--broker", url,
           "--federation", federation, "--run-dir", str(run_dir), "--model", "lenet5",
           "--granularity", "weight", "--mask-rounds", "0", "--train-rounds", str(rounds),
           "--value-codec", codec, *PLAIN_MPFL_FLAGS, "--min-nodes", str(n), "--quorum",
           str(n), "--round-timeout", "120", "--start-timeout", "120"]
    started = time.monotonic()
    coord = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=_env(),
                             cwd=ROOT)
    stop, peak = threading.Event(), []  # type: ignore[var-annotated]
    watcher = threading.Thread(target=peak_rss_mb, args=(coord.pid, stop, peak))
    watcher.start()
    code = coord.wait(timeout=600)
    stop.set()
    watcher.join()
    wall = time.monotonic() - started
    _stop(procs)
    if code != 0:
        raise SystemExit(f"coordinator failed with {code}")
    logs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in logs[1:]]  # round 1 includes the joins
    return {"nodes": n, "rounds": rounds, "round_seconds_median": statistics.median(seconds),
            "round_seconds": seconds, "uplink_bytes_per_round": logs[-1]["uplink_bytes"],
            "peak_rss_mb": peak[0] if peak else None, "wall_seconds": wall}


def raw_transfer(url: str, n: int, repeats: int, codec: str) -> dict[str, Any]:
    """The same workers answer a trigger; a plain subscriber times the bytes arriving."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    procs = _start_workers(url, "raw", n, codec)
    got = {"count": 0, "bytes": 0}
    lock, done = threading.Lock(), threading.Event()

    def on_message(_c: paho.Client, _u: Any, msg: Any) -> None:
        with lock:
            got["count"] += 1
            got["bytes"] += len(msg.payload)
            if got["count"] == n:
                done.set()

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-sub")
    sub.on_message = on_message
    sub.connect(host, int(port))
    sub.subscribe("bench/raw/#", qos=1)
    sub.loop_start()
    trigger = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-trigger")
    trigger.connect(host, int(port))
    trigger.loop_start()
    time.sleep(0.5)
    times = []
    for _ in range(repeats):
        with lock:
            got["count"], got["bytes"] = 0, 0
        done.clear()
        started = time.monotonic()
        trigger.publish(TRIGGER, b"go", qos=1)
        if not done.wait(60):
            raise SystemExit("raw transfer timed out")
        times.append(time.monotonic() - started)
        time.sleep(0.2)
    bytes_per_round = got["bytes"]
    for c in (sub, trigger):
        c.disconnect()
        c.loop_stop()
    _stop(procs)
    return {"nodes": n, "seconds_median": statistics.median(times), "seconds": times,
            "bytes_per_round": bytes_per_round}


def headline(data_dir: str, tmp: Path) -> dict[str, Any]:
    run_dir = tmp / "headline"
    cmd = [sys.executable, "-m", "apps.cli", "simulate", "--nodes", "10", "--dataset", "mnist",
           "--data-dir", data_dir, "--partition-scheme", "dirichlet:0.5", "--run-dir",
           str(run_dir), "--federation", "headline", "--model", "lenet5", "--granularity",
           "weight", "--final-sparsity", "0.9", "--mask-rounds", "5", "--train-rounds", "15",
           "--value-codec", "int8", *PLAIN_MPFL_FLAGS, "--local-epochs", "1", "--batch-size",
           "32",
           "--round-timeout", "600"]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"headline run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    logs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"wall_seconds": wall, "rounds": len(logs), "accuracy": logs[-1]["accuracy"],
            "sparsity": logs[-1]["sparsity"],
            "uplink_bytes": sum(r["uplink_bytes"] for r in logs),
            "dense_uplink_bytes": sum(r["dense_uplink_bytes"] for r in logs),
            "round_seconds": [r["seconds"] for r in logs],
            "command": " ".join(["mpfl", *cmd[3:]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    parser.add_argument("--skip-headline", action="store_true")
    parser.add_argument("--data-dir", default=os.environ.get("MPFL_DATA_DIR"))
    parser.add_argument("--codec", default="fp32")
    args = parser.parse_args()
    binary = mosquitto_binary()
    if binary is None:
        raise SystemExit("mosquitto is not installed (make mosquitto)")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"mpfl-bench-rounds-{os.getpid()}"
    rounds, repeats = (3, 3) if args.quick else (6, 5)
    broker = MosquittoBroker(binary).start()
    try:
        overhead = coordinator_rounds(broker.url, 50, rounds, args.codec, tmp)
        raw = raw_transfer(broker.url, 50, repeats, args.codec)
        memory = coordinator_rounds(broker.url, 200, rounds, args.codec, tmp)
    finally:
        broker.stop()
    head = None
    if not args.skip_headline:
        if not args.data_dir:
            raise SystemExit("the headline needs MNIST: --data-dir or MPFL_DATA_DIR")
        head = headline(args.data_dir, tmp)
    ratio = overhead["round_seconds_median"] / raw["seconds_median"]
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "command": "python benchmarks/bench_rounds.py" + (" --quick" if args.quick else ""),
        "overhead_50": overhead, "raw_50": raw, "overhead_ratio": ratio,
        "memory_200": memory, "headline": head,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        ("coordinator round, 50 virtual nodes (median)",
         f"{overhead['round_seconds_median'] * 1000:.0f} ms"),
        ("raw broker transfer of the same bytes (median)",
         f"{raw['seconds_median'] * 1000:.0f} ms"),
        ("overhead ratio (goal <= 1.5x)", f"{ratio:.2f}x"),
        ("bytes per round (50 uploads)", f"{overhead['uplink_bytes_per_round']:,}"),
        ("coordinator peak RSS, 50 nodes", f"{overhead['peak_rss_mb']:.0f} MB"),
        ("coordinator peak RSS, 200 nodes", f"{memory['peak_rss_mb']:.0f} MB"),
        ("coordinator round, 200 virtual nodes (median)",
         f"{memory['round_seconds_median'] * 1000:.0f} ms"),
    ]
    if head is not None:
        rows += [
            ("MNIST 20 rounds, 10 mpfl-edge processes: wall time", f"{head['wall_seconds']:.0f} s"),
            ("... final accuracy / sparsity", f"{head['accuracy']:.2%} / {head['sparsity']:.1%}"),
            ("... uplink vs dense FedAvg",
             f"{head['uplink_bytes']:,} B vs {head['dense_uplink_bytes']:,} B"),
        ]
    print(f"`{result['command']}` ({os.cpu_count()} CPUs, Mosquitto, {args.codec} uploads)\n")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if head is not None:
        print(f"\nheadline command: `{head['command']}`")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[5].split(","), sys.argv[4])
    else:
        main()
