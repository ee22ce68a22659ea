"""How long an operator waits for the one line that says what went wrong.

Run as ``nice -n 19 python benchmarks/bench_failures.py`` (needs MPFL_DATA_DIR with
cifar-10/); prints a markdown table, writes benchmarks/results/failures.json and the
table into BENCHMARKS.md between its markers. Each case runs the real commands of this
checkout as subprocesses and times, on the wall clock of this (shared) machine:

- a node waiting for a broker that is not there (127.0.0.1:1) gets SIGTERM, then SIGINT:
  seconds from the signal to its "stopped" line and to the process's exit (the
  interpreter's own teardown, torch loaded, is the difference);
- the same node left alone: seconds from start to its error line (--connect-timeout);
- ``mpfl simulate --dataset cifar10`` with the default lenet5: seconds from start to the
  error line;
- ``mpfl simulate`` on digits whose node-1 is SIGKILLed: seconds from the kill to the line
  naming it.

The times include starting Python and importing torch, which dominate on a loaded host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).resolve().parent / "results" / "failures.json"
COMMAND = "nice -n 19 python benchmarks/bench_failures.py"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_speed import write_benchmarks_md  # noqa: E402


def _edge(tmp: Path, *extra: str) -> list[str]:
    return [str(BIN / "mpfl-edge"), "start", "--broker", "mqtt://127.0.0.1:1", "--federation",
            "bench", "--node-id", "pi-01", "--limit", "64", "--state-dir", str(tmp / "s"),
            *extra]


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def signal_while_connecting(tmp: Path, sig: signal.Signals) -> dict[str, object]:
    proc = subprocess.Popen(_edge(tmp, "--connect-timeout", "0"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "cannot reach" in line:
            break
    time.sleep(1.0)
    start = time.monotonic()
    proc.send_signal(sig)
    said, line = None, ""
    for text in proc.stdout:
        if "stopped (" in text and said is None:
            said, line = time.monotonic() - start, text.strip()
    code = proc.wait()
    return {"case": f"{sig.name} while the node waits for its broker", "code": code,
            "line_seconds": said, "seconds": time.monotonic() - start, "line": line}


def timed(case: str, command: list[str]) -> dict[str, object]:
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    return {"case": case, "code": done.returncode, "seconds": time.monotonic() - start,
            "line": _last_line(done.stderr)}


def dead_node(tmp: Path) -> dict[str, object]:
    run_dir = tmp / "sim"
    proc = subprocess.Popen([str(BIN / "mpfl"), "simulate", "--nodes", "2", "--limit", "60",
                             "--run-dir", str(run_dir), "--round-timeout", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = None
    while pid is None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    argv = (entry / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if "edge_node.cli" in argv and "node-1" in argv and str(run_dir) in argv:
                    pid = int(entry.name)
        time.sleep(0.2)
    time.sleep(5)  # well into the run
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    _, err = proc.communicate(timeout=900)
    return {"case": "a node process killed (SIGKILL) in mpfl simulate, 600 s deadlines",
            "code": proc.returncode, "seconds": time.monotonic() - start,
            "line": _last_line(err)}


def main() -> None:
    data = os.environ.get("MPFL_DATA_DIR")
    if not data:
        raise SystemExit("set MPFL_DATA_DIR to the directory holding cifar-10/")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        rows = [
            signal_while_connecting(tmp, signal.SIGTERM),
            signal_while_connecting(tmp, signal.SIGINT),
            timed("no broker, default --connect-timeout (30 s), from start",
                  _edge(tmp)),
            timed("mpfl simulate --dataset cifar10 with the default lenet5, from start",
                  [str(BIN / "mpfl"), "simulate", "--nodes", "2", "--dataset", "cifar10",
                   "--data-dir", data, "--run-dir", str(tmp / "cifar")]),
            dead_node(tmp),
        ]
    lines = [
        "Seconds until a failure is one line and an exit code (wall clock on a shared "
        "2-core host, Python start and the torch import included).",
        "",
        f"Command: `{COMMAND}`",
        "",
        "| case | exit code | seconds to the line | seconds to the exit | what the operator "
        "reads |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        said = str(r["line"]).replace("|", "\\|")
        to_line = float(r.get("line_seconds") or r["seconds"])  # errors: the line is the exit
        lines.append(f"| {r['case']} | {r['code']} | {to_line:.1f} | {float(r['seconds']):.1f} "
                     f"| `{said}` |")
    text = "\n".join(lines)
    print(text)
    print(f"\n(run time {time.monotonic() - started:.0f} s)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"command": COMMAND, "rows": rows}, indent=2) + "\n")
    write_benchmarks_md(text, "failures")


if __name__ == "__main__":
    main()
