"""Start-up benchmark: wall time and peak RSS of each command line that must not load torch.

Each command runs as the installed console script in a fresh process, ``--reps`` times;
the table gives the median wall time and the largest peak RSS (the child's own
``ru_maxrss``, from ``os.wait4``). Whether torch is imported is asserted by
``tests/test_cli_startup.py``; this measures what that buys.

    .venv/bin/python benchmarks/bench_startup.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent

COMMANDS: tuple[tuple[str, ...], ...] = (
    ("mpfl", "--help"),
    ("mpfl", "hardware", "detect"),
    ("mpfl", "simulate", "--help"),
    ("mpfl-coordinator", "run", "--help"),
    ("mpfl-edge", "start", "--help"),
    ("mpfl-export", "--help"),
    ("mpfl-infer", "--help"),
)


def run_once(command: Sequence[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one run of ``command``."""
    start = time.perf_counter()
    child = subprocess.Popen([str(BIN / command[0]), *command[1:]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {child.returncode}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    args = parser.parse_args(argv)
    rows = []
    for command in COMMANDS:
        runs = [run_once(command) for _ in range(args.reps)]
        rows.append({"command": " ".join(command),
                     "median_s": statistics.median(s for s, _ in runs),
                     "peak_rss_mib": max(rss for _, rss in runs)})
    lines = ["| command | median wall s | peak RSS MiB |", "|---|---:|---:|"]
    lines += [f"| `{r['command']}` | {r['median_s']:.2f} | {r['peak_rss_mib']:.0f} |"
              for r in rows]
    print("\n".join(lines))
    doc: dict[str, object] = {"reps": args.reps, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


if __name__ == "__main__":
    main()
