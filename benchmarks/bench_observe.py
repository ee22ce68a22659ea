"""What watching a federation costs: the coordinator's view, its drawing, the status file,
and the wire bytes of the nodes' progress messages.

The coordinator takes a ``FederationView`` at most every 0.25 s on its own thread, then
draws it (in a terminal), writes it (``--status-file``) and updates its Prometheus
metrics. For fleets of N nodes (each announced by a real hello, a round open, half of
them with an epoch reported) this times each step, median of ``--reps``, against the
intervals (a view every 0.25 s, a redraw at most every 0.5 s): the share of the
coordinator's loop that watching takes. The live view draws at most 12 node rows (the
ones needing attention first) and counts the rest.

The progress rows are exact sizes: a signed ``nodes/<id>/progress`` message (Ed25519
frame, as a keyed fleet sends it) against the signed mask and update a node sends in the
demo's settings, and what one round costs a node at ``--progress-every 0`` (every epoch
and the start) or at the default 10 s when its epochs are shorter than that.

    .venv/bin/python benchmarks/bench_observe.py
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console

from apps.demo import DEMO_CONFIG
from coordinator.live import REFRESH_S, render
from coordinator.metrics import CoordinatorMetrics
from coordinator.watching import VIEW_INTERVAL_S
from mpfl.config.settings import FederationConfig
from mpfl.federation.server import FederationServer
from mpfl.federation.watch import FleetWatch
from mpfl.maths.schedules import get_schedule
from mpfl.wire import Envelope, Kind, encode_envelope, encode_mask, encode_values, topics
from mpfl.wire.protocol import Hello, Progress, Publish, encode_update
from mpfl.wire.seal import Sealer
from mpfl.wire.signing import SigningKey

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FLEETS = (10, 100, 1000)


def _median_ms(step: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def fleet_row(nodes: int, reps: int) -> dict[str, float | int]:
    cfg = FederationConfig(**{**DEMO_CONFIG.to_dict(), "min_nodes": nodes,
                              "quorum": 1}).validate()
    server, watch = FederationServer(cfg), FleetWatch()
    for i in range(nodes):
        node_id = f"node-{i}"
        server.handle(topics.node_topic(cfg.federation, node_id, topics.NODE_STATUS),
                      Hello(node_id, 100).encode())
        watch.heard(node_id, topics.NODE_STATUS)
    server.tick()
    assert server.phase == "mask", server.phase
    for i in range(0, nodes, 2):
        watch.heard(f"node-{i}", topics.NODE_PROGRESS, Progress(1, 1, 2))
    view = watch.view(server)
    metrics = CoordinatorMetrics(cfg.federation)
    console = Console(file=io.StringIO(), width=110, color_system=None)
    take = _median_ms(lambda: watch.view(server), reps)
    draw = _median_ms(lambda: console.print(render(view)), reps)
    encode = _median_ms(view.encode, reps)
    export = _median_ms(lambda: metrics.show(view), reps)
    return {"nodes": nodes, "view_ms": take, "draw_ms": draw, "status_encode_ms": encode,
            "metrics_ms": export, "status_bytes": len(view.encode()),
            "share_of_loop": (take + encode + export) / (VIEW_INTERVAL_S * 1000)
            + draw / (REFRESH_S * 1000)}


def wire_rows() -> dict[str, int]:
    """Signed sizes of one node's messages in the demo's settings (8x8 MLP, weight masks
    to 80%, int8 values): progress against its mask and its update."""
    cfg = DEMO_CONFIG
    server = FederationServer(cfg)
    unit_map = server.unit_map
    sealer = Sealer(SigningKey.generate(), "node-0", session="0123abcd")
    rng = np.random.default_rng(0)
    full = unit_map.full_mask()
    first_target = get_schedule(cfg.schedule)(1, cfg.mask_rounds, cfg.final_sparsity)
    local = rng.random(unit_map.n_units) >= first_target  # random bits: no better luck
    mask_codec, mask_payload = encode_mask(local, scope=full)
    final = rng.random(unit_map.n_units) >= cfg.final_sparsity
    sizes = unit_map.layer_sizes(final)
    alive = rng.standard_normal(sum(sizes)).astype(np.float32)
    value_codec, values = encode_values(alive, sizes, "int8")

    def signed(name: str, payload: bytes) -> int:
        topic = topics.node_topic(cfg.federation, "node-0", name)
        return len(sealer.seal(Publish(topic, payload)).payload)

    def envelope(kind: Kind, codec: int, payload: bytes) -> bytes:
        return encode_envelope(Envelope(kind, 1, unit_map.fingerprint, "node-0", codec,
                                        payload))

    progress = signed(topics.NODE_PROGRESS, Progress(1, 1, cfg.local_epochs).encode())
    return {
        "progress_bytes": progress,
        "mask_bytes_first_round": signed(topics.NODE_MASK, envelope(Kind.LOCAL_MASK,
                                                                    int(mask_codec),
                                                                    mask_payload)),
        "update_bytes_int8": signed(topics.NODE_UPDATE, envelope(
            Kind.UPDATE, int(value_codec), encode_update(100, values))),
        "first_target": first_target,
        "local_epochs": cfg.local_epochs,
        "progress_per_round_every_epoch": progress * (cfg.local_epochs + 1),
        "progress_per_round_default": progress,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50, help="timings per step (default 50)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    args = parser.parse_args(argv)
    result = {"fleets": [fleet_row(n, args.reps) for n in FLEETS], "wire": wire_rows()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "observe.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| nodes | take view ms | draw ms | status JSON ms | metrics ms | status KiB "
          "| share of the loop |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in result["fleets"]:
        print(f"| {row['nodes']:,} | {row['view_ms']:.2f} | {row['draw_ms']:.2f} | "
              f"{row['status_encode_ms']:.2f} | {row['metrics_ms']:.3f} | "
              f"{row['status_bytes'] / 1024:.1f} | {row['share_of_loop']:.1%} |")
    wire = result["wire"]
    print()
    print("| signed message (demo settings) | bytes |")
    print("|---|---:|")
    print(f"| progress (one epoch) | {wire['progress_bytes']} |")
    print(f"| local mask, round 1 ({wire['first_target']:.1%} pruned, random bits) | "
          f"{wire['mask_bytes_first_round']} |")
    print(f"| update, int8 values at 80% sparsity | {wire['update_bytes_int8']} |")
    print(f"| progress per round, `--progress-every 0` ({wire['local_epochs']} epochs + "
          f"start) | {wire['progress_per_round_every_epoch']} |")
    print(f"| progress per round, default 10 s, epochs shorter than that | "
          f"{wire['progress_per_round_default']} |")
    return result


if __name__ == "__main__":
    main()
