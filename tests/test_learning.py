"""Robustness switches, baselines, the experiment runner's byte counts, and a smoke run of
the learning benchmark."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.baselines import (
    centralised_pruning,
    dense_fedavg_config,
    fedavg_then_prune,
    magnitude_mask,
)
from apps.experiments import (
    ExperimentResult,
    Experiments,
    ExperimentSettings,
    RoundRecord,
    run_experiment,
)
from mpfl.config.settings import FederationConfig
from mpfl.errors import ConfigError
from mpfl.ml.data import Dataset, load_dataset
from mpfl.ml.masks import keep_count
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.robustness import corrupt_nodes, label_derangement, permute_labels, shuffle_pixels
from mpfl.ml.units import build_unit_map, model_state
from mpfl.wire import Envelope, Kind, encode_envelope, encode_values
from mpfl.wire.protocol import encode_update

MLP_ARGS = {"in_channels": 1, "image_size": 8, "hidden": [16, 8], "num_classes": 10}
TINY = ExperimentSettings(nodes=3, mask_rounds=2, train_rounds=2, granularity="weight")


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return load_dataset("digits", None, "train"), load_dataset("digits", None, "test")


def _random_data(n: int, seed: int, classes: int = 10) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset("t", rng.normal(size=(n, 2, 5, 4)).astype(np.float32),
                   rng.integers(0, classes, n).astype(np.int64), classes)


# -- robustness switches ----------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_shuffle_pixels_permutes_each_image_channel_and_keeps_labels(n: int, seed: int) -> None:
    data = _random_data(n, seed)
    out = shuffle_pixels(data, seed)
    assert out.x.shape == data.x.shape and out.x.dtype == data.x.dtype
    np.testing.assert_array_equal(out.y, data.y)
    flat_in = np.sort(data.x.reshape(n, 2, -1), axis=2)
    flat_out = np.sort(out.x.reshape(n, 2, -1), axis=2)
    np.testing.assert_array_equal(flat_in, flat_out)  # same pixels, same channel


def test_shuffle_pixels_is_seeded_and_destroys_structure(
    digits: tuple[Dataset, Dataset],
) -> None:
    train = digits[0].subset(np.arange(200))
    a, b, c = shuffle_pixels(train, 1), shuffle_pixels(train, 1), shuffle_pixels(train, 2)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert not np.array_equal(a.x, train.x)
    # Images of one class stop looking alike: their mean image flattens towards a constant.
    ones = train.x[train.y == 0].mean(axis=0)
    noisy = a.x[a.y == 0].mean(axis=0)
    assert noisy.std() < 0.5 * ones.std()


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 50), st.integers(0, 2**32 - 1))
def test_label_derangement_moves_every_class(classes: int, seed: int) -> None:
    mapping = label_derangement(classes, seed)
    assert sorted(mapping.tolist()) == list(range(classes))
    assert np.all(mapping != np.arange(classes))
    np.testing.assert_array_equal(mapping, label_derangement(classes, seed))


def test_permute_labels_relabels_consistently() -> None:
    data = _random_data(300, 3)
    out = permute_labels(data, 7)
    np.testing.assert_array_equal(out.x, data.x)
    assert np.all(out.y != data.y)
    pairs = set(zip(data.y.tolist(), out.y.tolist(), strict=True))
    assert len(pairs) == len(set(data.y.tolist()))  # one image class -> one label
    with pytest.raises(ConfigError):
        label_derangement(1, 0)


def test_corrupt_nodes_touches_only_the_chosen_nodes() -> None:
    nodes = [_random_data(20, i) for i in range(4)]
    out = corrupt_nodes(nodes, noise_nodes=[0], permuted_nodes=[2], seed=5)
    assert not np.array_equal(out[0].x, nodes[0].x)
    np.testing.assert_array_equal(out[0].y, nodes[0].y)
    np.testing.assert_array_equal(out[2].x, nodes[2].x)
    assert np.all(out[2].y != nodes[2].y)
    assert out[1] is nodes[1] and out[3] is nodes[3]
    with pytest.raises(ConfigError):
        corrupt_nodes(nodes, noise_nodes=[4])


# -- baselines ----------------------------------------------------------------------------


def _cfg(**kw: object) -> FederationConfig:
    base = FederationConfig(model="mlp", model_args=MLP_ARGS, granularity="filter",
                            final_sparsity=0.5, mask_rounds=2, train_rounds=2, min_nodes=2,
                            quorum=2)
    return dataclasses.replace(base, **kw).validate()  # type: ignore[arg-type]


def test_dense_fedavg_config_has_no_mask_phase() -> None:
    dense = dense_fedavg_config(_cfg())
    assert (dense.mask_rounds, dense.train_rounds, dense.final_sparsity) == (0, 4, 0.0)
    assert dense_fedavg_config(_cfg(), rounds=7).train_rounds == 7


@pytest.mark.parametrize("granularity", ["filter", "weight"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_magnitude_mask_prunes_the_weakest_per_layer(granularity: str, sparsity: float) -> None:
    cfg = _cfg(granularity=granularity)
    model = build_model(cfg.model_spec, seed=3)
    unit_map = build_unit_map(model, cfg.model_spec, granularity)
    state = model_state(model)
    mask = magnitude_mask(state, unit_map, sparsity)
    for layer in unit_map.layers:
        bits = mask[layer.units]
        w = state[layer.tensor]
        scores = (np.abs(w).ravel() if granularity == "weight"
                  else np.linalg.norm(w.reshape(w.shape[0], -1), axis=1))
        assert bits.sum() == max(1, int(np.ceil(round((1 - sparsity) * layer.count, 9))))
        assert scores[bits].min() >= scores[~bits].max()


def test_fedavg_then_prune_zero_sparsity_is_the_dense_model(
    digits: tuple[Dataset, Dataset],
) -> None:
    cfg = _cfg()
    model = build_model(cfg.model_spec, seed=1)
    state = model_state(model)
    dense = fedavg_then_prune(cfg.model_spec, "filter", state, 0.0, digits[1])
    pruned = fedavg_then_prune(cfg.model_spec, "filter", state, 0.9, digits[1])
    assert dense.sparsity == 0.0 and pruned.sparsity > 0.8
    assert dense.loss != pruned.loss


def test_centralised_pruning_follows_the_schedule_and_learns(
    digits: tuple[Dataset, Dataset],
) -> None:
    train, test = digits
    cfg = _cfg(mask_rounds=3, train_rounds=3, final_sparsity=0.6, local_epochs=1,
               schedule="linear", layer_sparsity="uniform")
    result = centralised_pruning(cfg, train, test, eval_every_round=True)
    mask_rounds = [r for r in result.rounds if r.phase == "mask"]
    assert [round(r.target_sparsity, 6) for r in mask_rounds] == [0.2, 0.4, 0.6]
    # sparsity grows monotonically and never un-prunes
    assert [r.sparsity for r in mask_rounds] == sorted(r.sparsity for r in mask_rounds)
    unit_map = build_unit_map(build_model(cfg.model_spec), cfg.model_spec, "filter")
    for layer in unit_map.slices:
        assert result.mask[layer].sum() == keep_count(layer.stop - layer.start, 0.6)
    # pruned positions are exactly zero in the trained state
    masks = unit_map.tensor_masks(result.mask)
    for name, m in masks.items():
        assert np.all(result.state[name][~m] == 0)
    assert result.accuracy > 0.5  # 8x8 digits are easy; chance is 0.1
    assert result.accuracy == result.rounds[-1].accuracy


# -- the experiment runner ----------------------------------------------------------------


def test_runner_counts_every_uplink_byte() -> None:
    ex = Experiments(None, TINY)
    result = ex.run("m", "digits", "mlp", "mpfl", 0.5)
    assert [r.phase for r in result.rounds] == ["mask", "mask", "train", "train"]
    assert result.uplink_bytes == sum(r.uplink_bytes for r in result.rounds)
    assert result.rounds[-1].cumulative_uplink_bytes == result.uplink_bytes
    assert result.downlink_bytes >= sum(r.downlink_bytes for r in result.rounds) > 0
    data = ex.data("digits", TINY)
    spec = ModelSpec("mlp", data.model_args)
    unit_map = build_unit_map(build_model(spec), spec, "weight")
    assert result.final_mask is not None
    sizes = unit_map.layer_sizes(result.final_mask)
    codec, body = encode_values(np.zeros(sum(sizes), np.float32), sizes, "fp32")
    for r in result.rounds:
        if r.phase != "train":
            continue
        # every node: one envelope holding its sample count and its fp32 alive values
        expected = sum(
            len(encode_envelope(Envelope(Kind.UPDATE, r.round, unit_map.fingerprint,
                                         f"node-{i}", codec, encode_update(len(d), body))))
            for i, d in enumerate(data.node_data))
        assert r.uplink_bytes == expected
    assert result.dense_uplink_bytes == 4 * unit_map.n_values * TINY.nodes * TINY.rounds


def test_runner_dense_fedavg_sends_every_value(digits: tuple[Dataset, Dataset]) -> None:
    ex = Experiments(None, TINY)
    dense = ex.run("d", "digits", "mlp", "fedavg")
    assert [r.phase for r in dense.rounds] == ["train"] * TINY.rounds
    assert dense.sparsity == 0.0
    for r in dense.rounds:  # fp32 values of every parameter plus a small envelope
        assert r.dense_uplink_bytes < r.uplink_bytes < r.dense_uplink_bytes * 1.01
    mpfl = ex.run("m", "digits", "mlp", "mpfl", 0.9)
    assert mpfl.uplink_bytes < dense.uplink_bytes / 3
    # the dense run is shared by every fedavg-prune point and not retrained
    p1 = ex.run("p", "digits", "mlp", "fedavg-prune", 0.5)
    p2 = ex.run("q", "digits", "mlp", "fedavg-prune", 0.9)
    assert p1.uplink_bytes == p2.uplink_bytes == dense.uplink_bytes
    assert p1.sparsity == pytest.approx(0.5, abs=0.01) and p2.sparsity > p1.sparsity
    assert dense.accuracy >= p2.accuracy


def test_runner_is_deterministic_and_methods_share_the_split() -> None:
    a = run_experiment("a", "digits", "mlp", "mpfl", 0.5, TINY)
    b = run_experiment("b", "digits", "mlp", "mpfl", 0.5, TINY)
    assert a.accuracy == b.accuracy and a.uplink_bytes == b.uplink_bytes
    central = run_experiment("c", "digits", "mlp", "central", 0.5, TINY)
    assert central.uplink_bytes == 0 and central.sparsity == pytest.approx(0.5, abs=0.01)
    assert json.loads(json.dumps(central.to_dict()))["method"] == "central"
    slower = run_experiment("c", "digits", "mlp", "central", 0.5,
                            dataclasses.replace(TINY, central_lr=0.001))
    assert slower.loss != central.loss  # the centralised baseline's own learning rate
    again = run_experiment("c", "digits", "mlp", "central", 0.5,
                           dataclasses.replace(TINY, central_lr=TINY.lr))
    assert again.loss == central.loss
    with pytest.raises(ConfigError):
        run_experiment("x", "digits", "mlp", "nope", 0.5, TINY)


def test_result_survives_json() -> None:
    result = run_experiment("j", "digits", "mlp", "mpfl", 0.5, TINY)
    doc = json.loads(json.dumps(result.to_dict()))
    back = ExperimentResult.from_dict(doc)
    assert back.to_dict() == result.to_dict()
    assert back.settings == TINY and back.rounds == result.rounds
    assert back.train_samples == result.train_samples > back.test_samples > 0


def test_runner_applies_robustness_switches() -> None:
    s = dataclasses.replace(TINY, noise_nodes=(0,), permuted_nodes=(1,))
    clean = Experiments(None, TINY).data("digits", TINY)
    dirty = Experiments(None, s).data("digits", s)
    for i in range(len(clean.parts)):
        np.testing.assert_array_equal(clean.parts[i], dirty.parts[i])
    assert not np.array_equal(clean.node_data[0].x, dirty.node_data[0].x)
    assert np.all(clean.node_data[1].y != dirty.node_data[1].y)
    np.testing.assert_array_equal(clean.node_data[2].x, dirty.node_data[2].x)
    result = Experiments(None, s).run("r", "digits", "mlp", "mpfl", 0.5)
    assert 0.0 <= result.accuracy <= 1.0


# -- the benchmark script -----------------------------------------------------------------


def _bench_module() -> object:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_learning.py"
    spec = importlib.util.spec_from_file_location("bench_learning", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_learning"] = module
    spec.loader.exec_module(module)
    return module


def test_bench_jobs_cover_every_point_once() -> None:
    bench = _bench_module()
    profile = bench.full_profile()  # type: ignore[attr-defined]
    todo = bench.jobs(profile)  # type: ignore[attr-defined]
    keys = [j.key for j in todo]
    assert len(keys) == len(set(keys))
    assert [j.part for j in todo[:4]] == ["a"] * 4  # the headline comparison runs first
    for sweep in profile.sweeps:
        def runs(method: str, sweep: object = sweep) -> set[tuple[tuple[float, ...], int]]:
            return {(j.sparsities, j.settings.seed) for j in todo if j.part == "b"
                    and (j.dataset, j.tag) == (sweep.dataset, sweep.tag)  # type: ignore[attr-defined]
                    and j.method == method}

        # MPFL and dense FedAvg (pruned at every point) on every seed; centralised on one.
        assert runs("mpfl") == {((s,), seed) for s in sweep.sparsities for seed in sweep.seeds}
        assert runs("central") == ({((s,), sweep.seeds[0]) for s in sweep.sparsities}
                                   if sweep.central else set())
        assert runs("fedavg-prune") == {(sweep.sparsities, seed) for seed in sweep.seeds}
        assert all(j.settings.eval_every_round for j in todo
                   if j.method == "fedavg-prune")  # the dense curve
    cifar, long = (sw for sw in profile.sweeps if sw.dataset == "cifar10")
    assert long.settings.rounds == 2 * cifar.settings.rounds and long.seeds == (0, 1, 2, 3)
    assert cifar.seeds == (0, 1, 2) and cifar.sparsities == (0.3, 0.5, 0.7, 0.9)
    assert cifar.settings.train_limit is None and cifar.settings.granularity == "filter"
    order = bench._by_priority([0.1, 0.3, 0.5, 0.7, 0.9])  # type: ignore[attr-defined]
    assert order[:3] == [0.9, 0.5, 0.1] and sorted(order) == [0.1, 0.3, 0.5, 0.7, 0.9]


def test_bench_requires_a_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPFL_DATA_DIR", raising=False)
    bench = _bench_module()
    with pytest.raises(SystemExit):
        bench.main(["--quick"])  # type: ignore[attr-defined]


def test_bench_quick_smoke(
    mnist_dir: Path, fashion_dir: Path, cifar_dir: Path, tmp_path: Path
) -> None:
    assert mnist_dir == fashion_dir == cifar_dir
    bench = _bench_module()
    report = bench.main(["--quick", "--data-dir", str(mnist_dir),  # type: ignore[attr-defined]
                         "--out", str(tmp_path)])
    assert {p.name for p in tmp_path.iterdir()} >= {
        "learning.json", "learning.md", "learning_uplink.png", "learning_sparsity.png"}
    saved = json.loads((tmp_path / "learning.json").read_text())
    assert saved["profile"] == "quick" and saved["command"] == report["command"]
    rows = {(r["dataset"], r["variant"], r["method"]) for r in saved["part_a"]}
    assert rows == {(d, v, m) for d in ("mnist", "fashion-mnist")
                    for v, m in (("fedavg", "fedavg"), ("int8", "mpfl"),
                                 ("plain-average", "mpfl"))}
    for r in saved["part_a"]:
        assert r["uplink_bytes"] == sum(x["uplink_bytes"] for x in r["rounds"]) > 0
        if r["variant"] == "plain-average":
            options = ("value_codec", "server_optimizer", "mode", "schedule", "layer_sparsity")
            assert [r["settings"][k] for k in options] == [
                "int4-deflate", "none", "joint", "cubic", "inverse-sqrt"]
    assert {r["method"] for r in saved["part_b"]} == {"fedavg", "fedavg-prune", "mpfl",
                                                       "central"}
    table = (tmp_path / "learning.md").read_text()
    assert "| mnist | dense FedAvg, fp32 | " in table
    assert "| mnist | MPFL default: joint cubic mask rounds, inverse-sqrt layers, " in table


def test_part_a_table_gives_mean_spread_and_bits_per_parameter() -> None:
    """Two seeds: accuracy mean ± sample sd, the gap paired by seed, bit/param from bytes."""
    bench = _bench_module()
    import learning_report as report  # put on the path by bench_learning

    profile = bench.full_profile()  # type: ignore[attr-defined]
    fedavg = profile.variants[0]
    default = next(v for v in profile.variants if v.key == profile.default)

    def result(variant: object, seed: int, accuracy: float, uplink: int) -> ExperimentResult:
        settings = dataclasses.replace(variant.settings, seed=seed)  # type: ignore[attr-defined]
        return ExperimentResult("r", variant.method, "mnist", "lenet5", "weight",  # type: ignore[attr-defined]
                                0.9, 0.9, accuracy, 0.1, uplink, 0, 32_000, [], 1.0, settings)

    grouped = report.group_part_a([
        ("fedavg", result(fedavg, 0, 0.99, 32_000)), ("fedavg", result(fedavg, 1, 0.98, 32_000)),
        (default.key, result(default, 0, 0.985, 500)), (default.key, result(default, 1, 0.98, 500)),
    ])
    table = report.table_a(grouped, profile, [fedavg, default])
    row = next(line for line in table.splitlines() if default.label in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "98.25 ± 0.35"  # mean and sample sd of 98.5 and 98.0
    assert cells[3] == "-0.25 ± 0.35"  # -0.5 and 0.0, paired by seed
    assert cells[4] == "0.500" and cells[6] == "1/64"  # 32 * 500 / 32,000 bits
    assert cells[7] == "98.50 / 98.00" and cells[8] == "0,1"


def test_part_b_table_pairs_seeds_and_reports_the_dense_curve() -> None:
    """Two seeds: cells are mean ± sd, gaps are paired by seed, dense runs give the curve."""
    bench = _bench_module()
    import learning_report as report  # put on the path by bench_learning

    profile = bench.full_profile()  # type: ignore[attr-defined]
    cifar = next(sw for sw in profile.sweeps if sw.dataset == "cifar10")

    def result(method: str, seed: int, sparsity: float, accuracy: float,
               curve: tuple[float, ...] = ()) -> ExperimentResult:
        rounds = [RoundRecord(t, "train", 0.0, 0.0, a, 1.0, 0, 0, 0, 0, 1.0)
                  for t, a in enumerate(curve, start=1)]
        return ExperimentResult("b-x", method, "cifar10", "cnn-cifar", "filter", sparsity,
                                sparsity, accuracy, 1.0, 1_000, 0, 32_000, rounds, 1.0,
                                dataclasses.replace(cifar.settings, seed=seed))

    results = [result("fedavg", 0, 0.0, 0.60, (0.2, 0.5, 0.6)),
               result("fedavg", 1, 0.0, 0.62, (0.3, 0.5, 0.62)),
               result("fedavg-prune", 0, 0.5, 0.30), result("fedavg-prune", 1, 0.5, 0.40),
               result("mpfl", 0, 0.5, 0.58), result("mpfl", 1, 0.5, 0.60),
               result("central", 0, 0.5, 0.65)]
    table = report.table_b(results, profile).split("**cifar10 / cnn-cifar")[1]
    assert "dense FedAvg 61.00 ± 1.41% (seeds 0,1)" in table
    row = next(line for line in table.splitlines() if line.startswith("| 50% "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["59.00 ± 1.41", "35.00 ± 7.07", "24.00 ± 5.66"]  # +28 and +20
    assert cells[4] == "65.00" and cells[5] == "-2.00 ± 0.00" and cells[6] == "1.000"
    assert "| seed 1 | 30.00 | 50.00 | 62.00 |" in table  # the dense curve, by round
    assert "| mean | 25.00 | 50.00 | 61.00 |" in table
    assert "| 30% | - | - | - |" in table  # a point not run stays empty
