"""Regions: the bytes a tier of regional coordinators moves into the root, and that the root's
result is the flat one.

LeNet-5 on MNIST, weight masks to 90% (2 mask rounds, then 1 training round; 1 local epoch
on 200 samples a node, IID), with fp32 and with int8 updates. For N nodes, a flat
federation and the same N nodes (same data, seeds and config) in 2 regions of N/2 run in
one process: the coordinators, regions and nodes of the MQTT services behind their signing
gates, on in-memory brokers bridged as Mosquitto's are (``run_tiered_in_process``). So the
bytes are the services' own counts (envelopes; each message's signed frame adds 24 bytes
of header, the ids and a 64-byte signature), and only the network is missing.

Per size and codec: bytes into the root per mask round and in the training round, flat
(every node's upload) and tiered (two partial aggregates), each region's partial, and the
exactness of the tiered run: consensus mask identical, largest difference of a final
weight in float32 ulps of that weight (0: bit-identical).

    .venv/bin/python benchmarks/bench_regions.py [--quick] [--data-dir DIR]

Writes benchmarks/results/regions.json and the table between the bench_regions markers of
BENCHMARKS.md (``--quick``: digits and an MLP, into benchmarks/results/quick/ only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpfl.config.settings import PLAIN_MPFL, FederationConfig  # noqa: E402
from mpfl.federation.simulation import run_in_process, run_tiered_in_process  # noqa: E402
from mpfl.maths.partition import partition  # noqa: E402
from mpfl.ml.data import Dataset, load_dataset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- bench_regions:begin -->", "<!-- bench_regions:end -->"
SAMPLES_PER_NODE = 200
REGIONS = ("east", "west")


def config(quick: bool, codec: str, nodes: int) -> FederationConfig:
    model = ({"model": "mlp", "model_args": {"image_size": 8, "hidden": [32]}} if quick else
             {"model": "lenet5", "model_args": {}})
    return FederationConfig(
        federation="regions", granularity="weight", final_sparsity=0.9, mask_rounds=2,
        train_rounds=1, local_epochs=1, lr=0.05, batch_size=32, value_codec=codec,
        **PLAIN_MPFL, min_nodes=nodes, quorum=nodes, round_timeout=600.0, start_timeout=600.0,
        **model,
    )


def node_data(train: Dataset, nodes: int) -> list[Dataset]:
    shares = partition(train.y, nodes, "iid", seed=0)
    return [train.subset(share[:SAMPLES_PER_NODE]) for share in shares]


def measure(train: Dataset, quick: bool, codec: str, nodes: int) -> dict[str, Any]:
    cfg = config(quick, codec, nodes)
    data = node_data(train, nodes)
    started = time.monotonic()
    flat = run_in_process(cfg, data, signed=True)
    half = nodes // 2
    root, regions = run_tiered_in_process(
        replace(cfg, min_nodes=len(REGIONS), quorum=len(REGIONS)),
        replace(cfg, min_nodes=half, quorum=half),
        {REGIONS[0]: data[:half], REGIONS[1]: data[half:]}, signed=True)
    seconds = time.monotonic() - started
    a, b = flat.global_values, root.global_values
    assert a is not None and b is not None
    ulps = float(np.max(np.abs(a - b) / np.spacing(np.abs(a).astype(np.float32))))
    mask_rounds = cfg.mask_rounds
    return {
        "codec": codec, "nodes": nodes, "regions": len(REGIONS), "seconds": round(seconds, 1),
        "mask_identical": bool(np.array_equal(flat.mask, root.mask)),
        "max_weight_ulps": ulps,
        "identical_weights": float(np.mean(a == b)),
        "flat_root_mask_bytes": [r.uplink_bytes for r in flat.log[:mask_rounds]],
        "tiered_root_mask_bytes": [r.uplink_bytes for r in root.log[:mask_rounds]],
        "flat_root_train_bytes": flat.log[-1].uplink_bytes,
        "tiered_root_train_bytes": root.log[-1].uplink_bytes,
        "partial_train_bytes": {n: r.log[-1].partial_bytes for n, r in regions.items()},
        "region_train_bytes": {n: r.log[-1].node_uplink_bytes for n, r in regions.items()},
        "dropped": {"root": dict(root.dropped), **{n: dict(r.dropped)
                                                    for n, r in regions.items()}},
        "n_values": root.unit_map.n_values, "n_units": root.unit_map.n_units,
        "alive_values": sum(root.unit_map.layer_sizes(root.mask)),
    }


def table(rows: Sequence[dict[str, Any]], command: str, meta: dict[str, Any]) -> str:
    lines = [
        f"Command: `{command}` ({meta['seconds']:.0f} s on {meta['machine']}; "
        f"{meta['model']} on {meta['dataset']}, {rows[0]['n_values']:,} weights of which "
        f"{rows[0]['alive_values']:,} alive at 90% sparsity; bytes are envelopes as the "
        "coordinators counted them).",
        "",
        "| updates | nodes | into the root in mask rounds 1 / 2, flat → tiered | into the root in "
        "the training round, flat → tiered | each region's partial (training) | mask "
        "identical | largest weight difference |",
        "|---|---:|---:|---:|---:|:---:|---:|",
    ]
    for r in rows:
        mask_flat = " / ".join(f"{b:,}" for b in r["flat_root_mask_bytes"])
        mask_tiered = " / ".join(f"{b:,}" for b in r["tiered_root_mask_bytes"])
        partial = max(r["partial_train_bytes"].values())
        ratio = r["tiered_root_train_bytes"] / r["flat_root_train_bytes"]
        lines.append(
            f"| {r['codec']} | {r['nodes']} ({r['regions']} × {r['nodes'] // r['regions']}) | "
            f"{mask_flat} → {mask_tiered} B | {r['flat_root_train_bytes']:,} → "
            f"{r['tiered_root_train_bytes']:,} B ({ratio:.2f}×) | "
            f"{partial:,} B | {'yes' if r['mask_identical'] else 'NO'} | "
            f"{r['max_weight_ulps']:.0f} ulp ({r['identical_weights']:.1%} bit-identical) |")
    lines += [
        "",
        "Reading: the consensus mask is the flat one and every final weight is bit-identical "
        "(the two summation orders round to the same float32 everywhere here; the bound the "
        "tests assert is one float32 ulp plus n · 2^-52 · max|v|). A partial's votes cost "
        "ceil(log2(N + 1)) bits per alive unit, so the mask rounds' bytes into the root "
        "grow with log N instead of N. Its value sums cost 8 bytes per alive value whatever "
        "N: with fp32 updates (4 bytes a value) a region of 3 already saves, with int8 "
        "(1 byte a value and a scale per layer) a region needs about 8 nodes to break even.",
    ]
    return "\n".join(lines)


def write_benchmarks_md(text: str, path: Path = BENCHMARKS_MD) -> None:
    current = path.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current and END in current:
        before, rest = current.split(BEGIN, 1)
        path.write_text(before + block + rest.split(END, 1)[1])
    else:
        section = "\n## Regions: bytes into the root, and the flat result\n\n"
        path.write_text(current.rstrip("\n") + "\n" + section + block + "\n")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MPFL_DATA_DIR"))
    parser.add_argument("--render", action="store_true",
                        help="only write the table of benchmarks/results/regions.json again")
    parser.add_argument("--quick", action="store_true",
                        help="digits and an MLP, 6 nodes: checks the script, measures nothing")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads((RESULTS / "regions.json").read_text())
        command = "nice -n 19 .venv/bin/python benchmarks/bench_regions.py --data-dir DIR"
        write_benchmarks_md(table(saved["rows"], command, saved["meta"]))
        return dict(saved)
    import torch

    torch.set_num_threads(1)  # the nodes of a fleet each train on their own device
    started = time.monotonic()
    dataset = "digits" if args.quick else "mnist"
    train = load_dataset(dataset, args.data_dir, "train")
    sizes = (6,) if args.quick else (6, 20, 50)
    rows = []
    for codec in ("fp32", "int8"):
        for nodes in sizes:
            row = measure(train, args.quick, codec, nodes)
            print(json.dumps(row), flush=True)
            rows.append(row)
    meta = {"seconds": time.monotonic() - started, "dataset": dataset,
            "model": "mlp" if args.quick else "LeNet-5",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared"}
    command = "nice -n 19 .venv/bin/python benchmarks/bench_regions.py" + (
        " --quick" if args.quick else " --data-dir DIR")
    text = table(rows, command, meta)
    out = RESULTS / "quick" if args.quick else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / "regions.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if not args.quick:
        write_benchmarks_md(text)
    print(text)
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
