"""The simulation's hostile nodes (uploads rewritten after honest training) and the
robustness benchmark's quick mode."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mpfl.config.settings import FederationConfig
from mpfl.errors import ConfigError
from mpfl.federation.corruption import CorruptedNode
from mpfl.federation.node import FederationNode
from mpfl.federation.simulation import run_in_process
from mpfl.ml.data import load_dataset

CFG = FederationConfig(
    federation="c", model="mlp", model_args={"image_size": 8, "hidden": [16]},
    granularity="filter", final_sparsity=0.3, mask_rounds=1, train_rounds=1,
    min_nodes=4, quorum=4, lr=0.1,
)


def _nodes() -> list:  # type: ignore[type-arg]
    train = load_dataset("digits", None, "train")
    return [train.subset(np.arange(i, 400, 4)) for i in range(4)]


def _moved(aggregator: str, corrupt: dict[int, str]) -> float:
    """How far the training round moved the global values from w0 * mask."""
    cfg = FederationConfig(**{**CFG.to_dict(), "aggregator": aggregator})
    server = run_in_process(cfg, _nodes(), corrupt=corrupt)
    start = server.unit_map.alive_values(server.weights.w0, server.mask)
    assert server.global_values is not None
    return float(np.linalg.norm(server.global_values - start))


def test_value_corruptions_reach_the_aggregate_and_norm_clip_bounds_them() -> None:
    clean = _moved("fedavg", {})
    assert _moved("fedavg", {0: "scale"}) > 5 * clean
    assert _moved("norm-clip", {0: "scale"}) < 1.5 * clean
    assert _moved("norm-clip", {0: "sign-flip"}) < 1.5 * clean


def test_random_masks_keep_the_round_going_at_its_target() -> None:
    server = run_in_process(CFG, _nodes(), corrupt={1: "random-mask", 2: "random-mask"})
    assert server.sparsity() == pytest.approx(0.3, abs=0.05)
    with pytest.raises(ConfigError, match="unknown corruption"):
        CorruptedNode(FederationNode("x", "c", _nodes()[0]), "nan")


def test_bench_robust_quick(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_robust.py"
    spec = importlib.util.spec_from_file_location("bench_robust", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_robust"] = bench
    spec.loader.exec_module(bench)
    before = bench.BENCHMARKS_MD.read_text()
    doc = bench.main(["--quick", "--jobs", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "robust.json").read_text())
    assert saved["accuracy"] == doc["accuracy"]
    # Every rule under every attack, and FedAvg without the bad nodes (the floor).
    assert len(saved["runs"]) == len(bench.ATTACKS) * len(bench.RULES) + 1
    table = (tmp_path / "robust.md").read_text()
    assert "ONE seed only" in table and "| sign-flip |" in table
    assert "The floor: FedAvg of the 8 honest nodes alone" in table
    assert bench.BENCHMARKS_MD.read_text() == before  # quick runs leave it alone


def test_bench_robust_table_reports_mean_spread_and_the_one_rule(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_robust.py"
    spec = importlib.util.spec_from_file_location("bench_robust_table", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_robust_table"] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    runs = []
    for seed, (good, bad) in enumerate([(0.80, 0.50), (0.82, None)]):
        for attack in bench.ATTACKS:
            for rule in bench.RULES:
                weak = rule == "fedavg" and attack != "clean"
                runs.append({"attack": attack, "rule": rule, "seed": seed,
                             "accuracy": bad if weak else good, "seconds": 1.0})
        runs.append({"attack": bench.WITHOUT_BAD, "rule": "fedavg", "seed": seed,
                     "accuracy": good - 0.02, "seconds": 1.0})
    table = bench.summarize(runs, [0, 1])
    mean, spread = table["clean"]["fedavg"]
    assert mean == pytest.approx(0.81) and spread == pytest.approx(0.01414, abs=1e-4)
    assert table["scale"]["fedavg"][0] == pytest.approx(0.25)  # a failed seed counts as 0
    profile = bench.full_profile([0, 1])
    text = bench.markdown(profile, table, "cmd", 60.0, 2)
    assert "81.0 ± 1.4" in text and "25.0 ± 35.4" in text
    assert "| worst drop (pt) | +56.0 |" in text
    assert "| scale | +56.0 | +0.0 |" in text  # against each rule's own clean run
    assert "One rule for every attack: **median**" in text  # the first rule with no drop
    assert "alone (the 2 bad ones left out, as a perfect filter would) reaches 79.0 ± 1.4%, " \
        "a drop of +2.0 pt" in text
    log = tmp_path / "runs.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in runs))
    assert sorted(map(str, bench.run_all(profile, None, 1, None, bench.logged_runs(log)))) \
        == sorted(map(str, runs))  # resumed: nothing left to run
    partial = bench.summarize([r for r in runs if r["seed"] == 0 or r["rule"] != "median"],
                              [0, 1])
    assert "median" not in partial["clean"]  # one seed of two: no cell
    text = bench.markdown(profile, partial, "cmd", 60.0, 2)
    assert "| n/r |" in text and "not run" in text
