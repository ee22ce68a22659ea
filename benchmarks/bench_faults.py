"""Fault figures: each fault injected several times into real ``mpfl-coordinator`` and
``mpfl-edge`` processes talking through a real Mosquitto on 127.0.0.1.

A run is 3 nodes on the bundled ``digits`` data (an MLP, 3 mask + 3 training rounds,
quorum 2, round deadline 6 s), so one takes seconds. Faults, each at a random round:

  coordinator-kill  ``kill -9`` of the coordinator twice per run: once inside a checkpoint
                    write (the run store's MPFL_FAULT_PAUSE_FILE hook stops the write
                    right before its rename and creates a marker file; the kill is sent
                    while the marker exists, so it provably lands there), once at a
                    random moment; each time it is resumed with the same run directory.
  node-kill         ``kill -9`` of a node while its round is open; restarted 1 s later.
  broker-restart    Mosquitto stopped and started on the same port while a round is open
                    (no persistence: retained messages and sessions are gone).
  node-stopped      a node SIGSTOPped when its round opens, resumed (SIGCONT) after the
                    round closed at its deadline without it.
  node-reconnect    a node's connection cut (its process runs on) while its round is
                    open, restored after the round closed: it reconnects (the seconds from
                    the restore to the node's "reconnected" line are reported) and rejoins
                    a later round.

Reported per fault: runs, faults injected, faults that landed where intended (inside the
checkpoint write; while the round was open), rounds completed and lost (the final round
log must hold rounds 1..N once each, in their phases, with at least the quorum, and keep
every round that was on disk when the coordinator died), and crashes (a process of ours
exiting non-zero or by a signal the benchmark did not send it).

    .venv/bin/python benchmarks/bench_faults.py [--reps 3] [--quick] [--out DIR]

``--quick`` (one run each of coordinator-kill, node-kill, broker-restart and node-reconnect)
is the CI form
(tests/test_bench_faults.py); the exit code is 1 when a round is lost, the log is
inconsistent or a process crashed. Writes ``faults.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fault_fleet import (  # noqa: E402
    FaultTimeout,
    Fleet,
    RunSpec,
    check_rounds,
    kill,
    read_marker,
)

from coordinator.runstore import PAUSE_ENV  # noqa: E402

SPEC = RunSpec()
NODE = 2  # the node the node faults hit
RECONNECTED = "reconnected to"  # mpfl.net.mqtt's line when a dropped connection is back


def _pick_round(rng: random.Random) -> int:
    """A round with two rounds after it, so recovery is seen."""
    return rng.randint(2, SPEC.total - 2)


def coordinator_kill(fleet: Fleet, rng: random.Random, note: dict[str, Any]) -> int:
    marker = fleet.root / "checkpoint.pause"
    target = (rng.choice(["arrays", "state"]), _pick_round(rng))
    note["in_write_at"] = f"{target[0]} {target[1]}"
    fleet.start_coordinator({PAUSE_ENV: str(marker)})
    for i in range(SPEC.nodes):
        fleet.start_edge(i)
    while True:  # release every paused write but the chosen one
        fleet.wait_for("a checkpoint write", marker.exists)
        seen = read_marker(marker)
        if seen is None:
            continue
        if seen == target:
            break
        marker.unlink()
    assert fleet.coordinator is not None
    kept = fleet.rounds()
    kill(fleet.coordinator)
    note["landed"] = int(marker.exists() and read_marker(marker) == target)
    marker.unlink(missing_ok=True)
    note["kept"] = kept
    fleet.start_coordinator()
    # The second kill: a random moment of a later round.
    t = rng.randint(target[1] + 1, SPEC.total - 1)
    fleet.wait_round_open(t)
    time.sleep(rng.uniform(0.0, 1.5))
    if fleet.coordinator.popen.poll() is not None:
        return 1  # already finished: nothing left to kill
    note["kept"] = fleet.rounds()
    kill(fleet.coordinator)
    fleet.start_coordinator()
    leftovers = list((fleet.run_dir / "checkpoint").glob(".*"))
    note["temp_files_left"] = len(leftovers)
    return 2


def node_kill(fleet: Fleet, rng: random.Random, note: dict[str, Any]) -> int:
    fleet.start()
    t = _pick_round(rng)
    fleet.wait_round_open(t)
    time.sleep(rng.uniform(0.0, 0.3))
    kill(fleet.edges[NODE])
    note["landed"] = int(fleet.closed() == t - 1)
    time.sleep(1.0)
    fleet.start_edge(NODE)
    return 1


def broker_restart(fleet: Fleet, rng: random.Random, note: dict[str, Any]) -> int:
    fleet.start()
    t = _pick_round(rng)
    fleet.wait_round_open(t)
    time.sleep(rng.uniform(0.0, 0.3))
    fleet.broker.stop()
    note["landed"] = int(fleet.closed() == t - 1)
    time.sleep(1.0)
    fleet.broker.start()
    return 1


def node_stopped(fleet: Fleet, rng: random.Random, note: dict[str, Any]) -> int:
    fleet.start()
    t = _pick_round(rng)
    fleet.wait_round_open(t)
    edge = fleet.edges[NODE]
    edge.send(signal.SIGSTOP)
    opened = fleet.closed() == t - 1
    fleet.wait_for(f"round {t} to close without node-{NODE}", lambda: fleet.closed() >= t,
                   SPEC.round_timeout * 3 + 10)
    closed_without = f"node-{NODE}" not in fleet.rounds()[t - 1]["participants"]
    note["landed"] = int(opened and closed_without)
    time.sleep(1.0)
    edge.send(signal.SIGCONT)
    return 1


def node_reconnect(fleet: Fleet, rng: random.Random, note: dict[str, Any]) -> int:
    fleet.start()
    t = _pick_round(rng)
    fleet.wait_round_open(t)
    time.sleep(rng.uniform(0.0, 0.3))
    fleet.proxies[NODE].cut()
    opened = fleet.closed() == t - 1
    fleet.wait_for(f"round {t} to close", lambda: fleet.closed() >= t,
                   SPEC.round_timeout * 3 + 10)
    note["landed"] = int(opened)
    name = f"node-{NODE}"
    before = fleet.log(name).count(RECONNECTED)
    fleet.proxies[NODE].restore()
    restored = time.monotonic()
    note["cut_round"] = t
    try:  # the node's own line, written when paho's loop is connected again
        fleet.wait_for(f"{name} to reconnect", lambda: fleet.log(name).count(RECONNECTED)
                       > before, 30)
        note["reconnect_s"] = round(time.monotonic() - restored, 2)
    except FaultTimeout:
        note["reconnect_s"] = None
    return 1


FAULTS: dict[str, Callable[[Fleet, random.Random, dict[str, Any]], int]] = {
    "coordinator-kill": coordinator_kill,
    "node-kill": node_kill,
    "broker-restart": broker_restart,
    "node-stopped": node_stopped,
    "node-reconnect": node_reconnect,
}
QUICK = ("coordinator-kill", "node-kill", "broker-restart", "node-reconnect")


def one_run(name: str, rep: int, root: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    fleet = Fleet(root / f"{name}-{rep}", SPEC, f"faults-{rep}")
    note: dict[str, Any] = {}
    started = time.monotonic()
    faults, finished = 0, False
    try:
        faults = FAULTS[name](fleet, rng, note)
        finished = fleet.finish()
    except FaultTimeout as exc:
        note["error"] = str(exc)
    finally:
        stuck = fleet.still_running()
        fleet.close()
    rounds = fleet.rounds()
    check = check_rounds(rounds, SPEC, note.pop("kept", None))
    if not finished:
        check["problems"].append(note.get("error", "a process did not exit in time"))
        check["problems"] += stuck
    if name == "node-reconnect" and "cut_round" in note:
        later = [r for r in rounds if r["round"] > note["cut_round"]]
        note["rejoined"] = int(any(f"node-{NODE}" in r["participants"] for r in later))
    crashes = fleet.crashes()
    return {"fault": name, "rep": rep, "seed": seed, "faults": faults,
            "landed": note.pop("landed", 0), "rounds_completed": check["completed"],
            "rounds_lost": check["lost"], "below_quorum": check["below_quorum"],
            "crashes": crashes, "problems": check["problems"],
            "seconds": round(time.monotonic() - started, 1), "logs": str(fleet.root), **note}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in dict.fromkeys(r["fault"] for r in runs):
        mine = [r for r in runs if r["fault"] == name]
        rows.append({
            "fault": name, "runs": len(mine), "faults": sum(r["faults"] for r in mine),
            "landed": sum(r["landed"] for r in mine),
            "rejoined": sum(r.get("rejoined", 0) for r in mine),
            "reconnect_s_max": max((r["reconnect_s"] for r in mine
                                    if r.get("reconnect_s") is not None), default=None),
            "reconnected": sum(r.get("reconnect_s") is not None for r in mine),
            "rounds_completed": sum(r["rounds_completed"] for r in mine),
            "rounds_lost": sum(r["rounds_lost"] for r in mine),
            "crashes": sum(len(r["crashes"]) for r in mine),
            "inconsistent_runs": sum(bool(r["problems"]) for r in mine),
            "below_quorum_rounds": sum(len(r["below_quorum"]) for r in mine),
            "seconds_per_run": round(sum(r["seconds"] for r in mine) / len(mine), 1),
        })
    return rows


LANDED = {"coordinator-kill": "in checkpoint write"}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| fault | runs | faults injected | landed as intended | rounds completed | "
             "rounds lost | crashes | inconsistent logs | closed below quorum | s/run |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        landed = f"{r['landed']}/{r['runs']} {LANDED.get(r['fault'], 'mid-round')}"
        if r["fault"] == "node-reconnect":
            slowest = r["reconnect_s_max"]
            landed += (f", reconnected {r['reconnected']}/{r['runs']} (at most "
                       f"{slowest if slowest is not None else '-'} s after the network came "
                       f"back), rejoined a later round {r['rejoined']}/{r['runs']}")
        lines.append(f"| {r['fault']} | {r['runs']} | {r['faults']} | {landed} | "
                     f"{r['rounds_completed']} | {r['rounds_lost']} | {r['crashes']} | "
                     f"{r['inconsistent_runs']} | {r['below_quorum_rounds']} | "
                     f"{r['seconds_per_run']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="runs per fault")
    parser.add_argument("--quick", action="store_true",
                        help="one run each of " + ", ".join(QUICK) + " (the CI form)")
    parser.add_argument("--faults", default=None, help="comma-separated subset of faults")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the runs' logs and run directories here")
    args = parser.parse_args()
    names = list(QUICK) if args.quick else list(FAULTS)
    if args.faults:
        names = args.faults.split(",")
    reps = 1 if args.quick else args.reps
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mpfl-faults-"))
    runs = []
    for name in names:
        for rep in range(reps):
            run = one_run(name, rep, work, args.seed * 1000 + rep)
            runs.append(run)
            status = "ok" if not (run["crashes"] or run["problems"] or run["rounds_lost"]) \
                else f"FAIL {run['crashes']} {run['problems']}"
            print(f"{name} #{rep}: {run['faults']} fault(s), landed {run['landed']}, "
                  f"{run['rounds_completed']}/{SPEC.total} rounds, {run['seconds']} s: {status}",
                  flush=True)
    rows = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "faults-quick.json" if args.quick else "faults.json"
    (args.out / name).write_text(json.dumps({
        "command": " ".join(["benchmarks/bench_faults.py", *sys.argv[1:]]),
        "machine": platform.platform(), "spec": vars(SPEC), "summary": rows, "runs": runs,
    }, indent=2) + "\n")
    print(markdown(rows))
    bad = any(r["crashes"] or r["problems"] or r["rounds_lost"] for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
