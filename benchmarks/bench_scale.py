"""One coordinator under load: round time against the raw broker transfer, at scale.

For each point (nodes x upload kind) a fresh Mosquitto, a real ``mpfl-coordinator``
process and the load generator (``benchmarks/loadgen.py``: virtual nodes with precomputed
uploads over real MQTT connections, two worker processes):

1. the coordinator runs ``--train-rounds`` training rounds (after one mask round for the
   sparse uploads); a round's time is open to close from its metrics.jsonl (the round's
   state going out, every upload coming in, decoding, aggregation, and the previous
   round's checkpoint, which is written before the round is announced);
2. then the same connections publish the same upload bytes on other topics when a
   trigger arrives, and a plain paho subscriber times them all arriving: the raw transfer.

Reported: bytes per round, median round time, median raw time, their ratio (goal <= 1.5x),
the coordinator's peak RSS (VmHWM; goal: the same at every size) and the connections used.
Uploads are unsigned (no keys configured). With ``--profile`` the coordinator runs under
py-spy and the heaviest functions are listed per point.

    nice -n 19 .venv/bin/python benchmarks/bench_scale.py [--points 50:int8,1000:fp32 ...]

Writes benchmarks/results/scale.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_rounds import PLAIN_MPFL_FLAGS, peak_rss_mb  # noqa: E402
from benchmarks.loadgen import Fleet, RawSubscriber  # noqa: E402
from benchmarks.scale_costs import signature_cost  # noqa: E402
from coordinator.broker import MosquittoBroker, mosquitto_binary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
DEFAULT_POINTS = "50:int8,1000:int8,10000:int8,50:fp32,1000:fp32,10000:fp32"
SPARSITY = {"int8": 0.9, "fp32": 0.0}
MAX_CONNECTIONS = 1000  # more nodes share connections (each still has its own topics)
# The broker must hold a whole round of uploads for a subscriber that reads slower than the
# fleet sends (QoS 1, default cap 1,000 queued messages per client, then dropped).
BROKER_LINES = "max_connections -1\nmax_queued_messages 0\nmax_queued_bytes 0\n"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def raise_open_files() -> int:
    """Lift the soft limit of open files to the hard one (inherited by broker and workers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard



def coordinator_command(url: str, federation: str, run_dir: Path, n: int, codec: str,
                        rounds: int) -> list[str]:
    sparse = SPARSITY[codec] > 0
    return [sys.executable, "-m", "coordinator.cli", "run", "--broker", url,
            "--federation", federation, "--run-dir", str(run_dir), "--model", "lenet5",
            "--granularity", "weight", "--final-sparsity", str(SPARSITY[codec] or 0.5),
            "--mask-rounds", "1" if sparse else "0", "--train-rounds", str(rounds),
            "--value-codec", codec, *PLAIN_MPFL_FLAGS, "--min-nodes", str(n), "--quorum",
            str(n), "--round-timeout", "1800", "--start-timeout", "900"]


def run_coordinator(cmd: list[str], profile: Path | None, fleet: Fleet) -> tuple[float, float]:
    """Run the coordinator to the end; its peak RSS (MB) and wall time (s)."""
    if profile is not None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        cmd = [spy, "record", "--format", "raw", "--threads", "--rate", "50", "--nonblocking",
               "--output", str(profile), "--", *cmd]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT)
    pid = proc.pid
    if profile is not None:  # measure the coordinator, not py-spy
        time.sleep(1.0)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        pid = int(children.read_text().split()[0])
    stop, peak = threading.Event(), []  # type: ignore[var-annotated]
    watcher = threading.Thread(target=peak_rss_mb, args=(pid, stop, peak))
    watcher.start()
    try:
        while proc.poll() is None:
            fleet.check_alive()
            time.sleep(0.5)
    finally:
        stop.set()
        watcher.join()
    if proc.returncode != 0:
        assert proc.stderr is not None
        raise SystemExit(f"coordinator failed with {proc.returncode}: {proc.stderr.read()[-2000:]}")
    return (peak[0] if peak else 0.0), time.monotonic() - started


def measure(url: str, n: int, codec: str, rounds: int, repeats: int, tmp: Path,
            profile: Path | None) -> dict[str, Any]:
    federation = f"scale{n}{codec}"
    run_dir = tmp / federation
    started = time.monotonic()
    fleet = Fleet(url, federation, n, MAX_CONNECTIONS, codec, SPARSITY[codec], env=_env())
    try:
        peak, coord_wall = run_coordinator(
            coordinator_command(url, federation, run_dir, n, codec, rounds), profile, fleet)
        logs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in logs if r["phase"] == "train"]
        for r in train:
            if len(r["participants"]) != n or r["dropped"]:
                raise SystemExit(f"{n} {codec}: round {r['round']} took "
                                 f"{len(r['participants'])} of {n} uploads in {r['seconds']:.0f}"
                                 f" s, dropped {r['dropped']}")
        raw = RawSubscriber(url, federation, n)
        try:
            raw_runs = [raw.transfer(600) for _ in range(repeats)]
        finally:
            raw.close()
    finally:
        fleet.stop()
    round_s = [r["seconds"] for r in train]
    raw_s = [s for s, _ in raw_runs]
    if any(b != train[0]["uplink_bytes"] for _, b in raw_runs):
        raise SystemExit(f"{n} {codec}: the raw transfer moved other bytes than a round")
    point = {
        "nodes": n, "codec": codec, "sparsity": SPARSITY[codec],
        "connections": fleet.connections, "rounds": len(train),
        "bytes_per_round": train[0]["uplink_bytes"],
        "round_seconds": round_s, "round_seconds_median": statistics.median(round_s),
        "raw_seconds": raw_s, "raw_seconds_median": statistics.median(raw_s),
        "peak_rss_mb": peak, "coordinator_wall_seconds": coord_wall,
        "point_wall_seconds": time.monotonic() - started,
    }
    point["ratio"] = point["round_seconds_median"] / point["raw_seconds_median"]
    if profile is not None:
        point["profile"] = summarise_profile(profile)
    return point


def summarise_profile(path: Path, top: int = 14) -> dict[str, Any]:
    """From py-spy's collapsed stacks: each thread's share of the samples, and on the main
    thread, inside the service loop (start-up imports left out), the functions with the
    most samples of their own and the most samples below them."""
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    loop_total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        count = int(count_text)
        name = frames[0].split(": ", 1)[-1] if ": " in frames[0] else "other"
        threads["paho" if name.startswith("paho") else name] += count
        names = [_frame_name(f) for f in frames[1:]]
        if "CoordinatorService.run (service.py)" not in names:
            continue
        below = names[names.index("CoordinatorService.run (service.py)") + 1:]
        loop_total += count
        own[below[-1] if below else "CoordinatorService.run (service.py)"] += count
        for frame in set(below):
            inclusive[frame] += count
    total = sum(threads.values()) or 1
    return {
        "samples": total,
        "threads": {k: round(v / total, 3) for k, v in threads.most_common(4)},
        "loop_share_of_main": round(loop_total / max(threads.get("MainThread", 1), 1), 3),
        "loop_self": [(k, round(v / max(loop_total, 1), 3)) for k, v in own.most_common(top)],
        "loop_inclusive": [(k, round(v / max(loop_total, 1), 3))
                           for k, v in inclusive.most_common(top)],
    }


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def table(points: list[dict[str, Any]]) -> str:
    lines = ["| nodes | uploads | connections | bytes per round | round (median) | raw broker "
             "(median) | ratio | coordinator peak RSS | point run time |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        kind = "int8, 90% sparse" if p["codec"] == "int8" else "fp32, dense"
        lines.append(
            f"| {p['nodes']:,} | {kind} | {p['connections']:,} | {p['bytes_per_round']:,} | "
            f"{p['round_seconds_median'] * 1000:,.0f} ms | {p['raw_seconds_median'] * 1000:,.0f}"
            f" ms | {p['ratio']:.2f}x | {p['peak_rss_mb']:.0f} MB | "
            f"{p['point_wall_seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default=DEFAULT_POINTS,
                        help="comma-separated NODES:CODEC (codec int8 = 90%% sparse, fp32 = "
                             "dense)  [default: %(default)s]")
    parser.add_argument("--rounds", type=int, default=4, help="training rounds per point")
    parser.add_argument("--repeats", type=int, default=4, help="raw transfers per point")
    parser.add_argument("--profile", action="store_true", help="run the coordinator under "
                        "py-spy and list where its time goes")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    binary = mosquitto_binary()
    if binary is None:
        raise SystemExit("mosquitto is not installed")
    limit = raise_open_files()
    tmp = Path(tempfile.mkdtemp(prefix="mpfl-bench-scale-"))
    points = []
    started = time.monotonic()
    try:
        for spec in args.points.split(","):
            n_text, codec = spec.split(":")
            n = int(n_text)
            if codec not in SPARSITY:
                raise SystemExit(f"unknown upload kind {codec!r} in --points (int8 or fp32)")
            # Big dense points: fewer repeats (each fp32 round at 10,000 nodes is 2.5 GB).
            rounds = args.rounds if n * (SPARSITY[codec] < 0.5) < 5000 else 2
            repeats = args.repeats if rounds == args.rounds else 2
            broker = MosquittoBroker(binary, extra=BROKER_LINES).start()
            try:
                profile = tmp / f"profile-{n}-{codec}.txt" if args.profile else None
                point = measure(broker.url, n, codec, rounds, repeats, tmp, profile)
            finally:
                broker.stop()
            points.append(point)
            print(table([point]).splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    verify_us = signature_cost()
    command = " ".join(["nice -n 19 .venv/bin/python benchmarks/bench_scale.py", *sys.argv[1:]])
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "open_files": limit},
        "command": command, "wall_seconds": time.monotonic() - started,
        "uploads": "unsigned (no keys configured)", "verify_us_per_upload": verify_us,
        "rounds": args.rounds,
        "repeats": args.repeats, "points": points,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n`{command}` ({os.cpu_count()} CPUs, {result['wall_seconds'] / 60:.1f} min)\n")
    print(table(points))
    print("\nverifying one signed upload on the coordinator (in-process): " + ", ".join(
        f"{codec} {us:,.0f} us" for codec, us in verify_us.items()))


if __name__ == "__main__":
    main()
