"""The link plan read from a run directory and from node metrics, and the text it prints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.plan import (
    MESSAGES_PER_ROUND,
    RoundBytes,
    compare,
    format_bytes,
    format_duration,
    format_plan,
    plan_from_run_dir,
    rounds_from_logs,
    rounds_from_metrics,
    setup_seconds,
)
from hardware.catalog import Link, get_link, get_profile
from mpfl.errors import ConfigError, DataError, HardwareError
from mpfl.federation.metrics import RoundLog

# 1 Mbit/s both ways, 50 ms per message: 1 MB takes 8 s plus latency.
MBIT = Link("mbit", "test link", uplink_kbps=1000, downlink_kbps=1000, latency_ms=50, source="")


def _log(t: int, phase: str, nodes: list[str], **kw: object) -> RoundLog:
    base: dict[str, object] = {
        "target_sparsity": 0.5,
        "sparsity": 0.5,
        "uplink_bytes": 1000,
        "downlink_bytes": 4000,
        "dense_uplink_bytes": 4 * 100 * len(nodes),
        "accuracy": None,
        "loss": None,
        "seconds": 2.0,
    }
    base.update(kw)
    return RoundLog(t, phase, participants=nodes, **base)  # type: ignore[arg-type]


def _write_metrics(run_dir: Path, logs: list[RoundLog]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(dataclasses.asdict(log)) for log in logs]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


# ----------------------------------------------------------------------------- inputs


@given(
    st.lists(st.sampled_from(["n0", "n1", "n2", "n3"]), min_size=1, max_size=4, unique=True),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
)
def test_logs_split_into_exact_per_node_figures(
    nodes: list[str], uplink: int, downlink: int
) -> None:
    fleet = ["n0", "n1", "n2", "n3"]
    logs = [
        _log(1, "mask", fleet),
        _log(2, "train", nodes, uplink_bytes=uplink, downlink_bytes=downlink, seconds=3.0),
    ]
    record = rounds_from_logs(logs)[1]
    assert record.node_ids == tuple(nodes)
    assert sum(record.uplink) == uplink and max(record.uplink) - min(record.uplink) <= 1
    # the coordinator counts a broadcast once per known node: four here
    assert all(abs(d - downlink / 4) < 1 for d in record.downlink)
    assert record.train_seconds == pytest.approx(3.0 / len(nodes))
    assert record.n_params == 100
    assert rounds_from_logs(logs, nodes_train_sequentially=False)[1].train_seconds == 3.0


def test_rounds_from_metrics_reads_a_run_directory(tmp_path: Path) -> None:
    logs = [
        _log(1, "mask", ["a", "b"], uplink_bytes=600, downlink_bytes=900),
        _log(2, "train", ["a", "b"], uplink_bytes=8000, accuracy=0.75, seconds=4.0),
    ]
    run = _write_metrics(tmp_path / "run", logs)
    rounds = rounds_from_metrics(run)
    assert rounds == rounds_from_metrics(run / "metrics.jsonl") == rounds_from_logs(logs)
    assert rounds[0].uplink == (300, 300) and rounds[0].downlink == (450, 450)
    assert rounds[1].accuracy == 0.75 and rounds[1].train_seconds == 2.0
    assert rounds[0].messages == MESSAGES_PER_ROUND


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "no rounds"),
        ("{not json\n", "line=1"),
        ("[1, 2]\n", "line=1"),
        ('{"round": 1}\n', "line=1"),
    ],
)
def test_bad_metrics_are_data_errors(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "metrics.jsonl").write_text(text)
    with pytest.raises(DataError, match=where):
        rounds_from_metrics(tmp_path)


def test_bad_metrics_values_and_missing_file(tmp_path: Path) -> None:
    good = dataclasses.asdict(_log(1, "train", ["a"]))
    for key, value in [("accuracy", 1.5), ("uplink_bytes", -1), ("participants", [3]),
                       ("seconds", "fast"), ("round", True)]:
        line = json.dumps({**good, key: value})
        (tmp_path / "metrics.jsonl").write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(DataError, match="line=2"):
            rounds_from_metrics(tmp_path)
    with pytest.raises(DataError, match="cannot read metrics"):
        rounds_from_metrics(tmp_path / "absent")


def test_round_bytes_validates_itself() -> None:
    with pytest.raises(ConfigError):
        RoundBytes(1, "train", (), (), None, 0.0)
    with pytest.raises(ConfigError):
        RoundBytes(1, "train", (1, 2), (1,), None, 0.0)
    with pytest.raises(ConfigError):
        RoundBytes(1, "train", (-1,), (1,), None, 0.0)
    with pytest.raises(ConfigError):
        RoundBytes(1, "train", (1,), (1,), 2.0, 0.0)
    with pytest.raises(ConfigError):
        RoundBytes(1, "train", (1,), (1,), None, float("nan"))


# ------------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250 ms"), (8.05, "8.1 s"), (270, "4.5 min"), (4320, "1.2 h"), (198720, "2.3 d")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (999, 1200, 3_400_000, 5e9)] == [
        "999 B", "1.2 kB", "3.4 MB", "5.0 GB",
    ]


def test_plan_from_run_dir_prints_both_side_by_side(tmp_path: Path) -> None:
    fleet = ["pi-01", "pi-02"]
    logs = [_log(1, "mask", fleet, uplink_bytes=200, downlink_bytes=600)] + [
        _log(t, "train", fleet, uplink_bytes=4000, downlink_bytes=4500, accuracy=0.5 + t / 20,
             dense_uplink_bytes=2 * 4 * 60_000)
        for t in (2, 3, 4)
    ]
    run = _write_metrics(tmp_path / "run", logs)
    text = plan_from_run_dir(run, ["lte-m"], "rpi4", per_round=True)
    first = text.splitlines()[0]
    assert first.startswith("on lte-m (rpi4-4gb), MPFL reaches 70.0% in ")
    assert "dense FedAvg in " in first
    for label in ("MPFL", "dense FedAvg", "time to 70.0%", "total wall-clock", "round by round"):
        assert label in text
    assert all(len(line) <= 100 for line in text.splitlines())
    # what the text says is what compare() computes
    c = compare(rounds_from_metrics(run), get_link("lte-m"), profile=get_profile("rpi4"))
    assert c.mpfl.seconds_to_target is not None and c.dense.seconds_to_target is not None
    assert format_plan(c).splitlines()[0] == first
    # the profile's default link, a per-node mix, a board-measured epoch time
    assert plan_from_run_dir(run, [], "rpi4").startswith("on wifi (rpi4-4gb)")
    assert "a wifi/lte-m mix" in plan_from_run_dir(run, ["wifi", "lte-m"])
    measured = plan_from_run_dir(run, ["wifi"], seconds_per_epoch=30.0, local_epochs=2)
    assert "1.0 min per round per node" in measured
    assert "inference-only" in plan_from_run_dir(run, ["wifi"], "zero2w")


def test_plan_from_run_dir_errors(tmp_path: Path) -> None:
    run = _write_metrics(tmp_path / "run", [_log(1, "train", ["a"], accuracy=0.5)])
    with pytest.raises(HardwareError, match="unknown link"):
        plan_from_run_dir(run, ["carrier-pigeon"])
    with pytest.raises(ConfigError):
        plan_from_run_dir(run, [])
    with pytest.raises(DataError):
        plan_from_run_dir(tmp_path / "nothing", ["wifi"])
    assert setup_seconds(0, MBIT) == 0.0


def test_node_metrics_give_the_slowest_nodes_training_time(tmp_path: Path) -> None:
    run = _write_metrics(tmp_path / "run", [
        _log(1, "mask", ["a", "b"], seconds=9.0),
        _log(2, "train", ["a", "b"], seconds=9.0, accuracy=0.6),
    ])
    reports = [
        {"node": "a", "round": 1, "train_seconds": 1.5},
        {"node": "b", "round": 1, "train_seconds": 2.5},
        {"node": "a", "round": 1, "train_seconds": True},  # not a time: skipped
        {"node": "b", "round": "2", "train_seconds": 7.0},  # not a round: skipped
    ]
    lines = [json.dumps(r) for r in reports] + ["{broken", "[]"]
    (run / "node_metrics.jsonl").write_text("\n".join(lines) + "\n")
    rounds = rounds_from_metrics(run)
    assert [r.train_seconds for r in rounds] == [2.5, 4.5]  # round 2: 9 s over 2 nodes
    assert rounds_from_metrics(run, use_node_metrics=False)[0].train_seconds == 4.5
    assert "slowest node's reported training time" in plan_from_run_dir(run, ["wifi"])


def test_local_epochs_default_to_the_run_config(tmp_path: Path) -> None:
    run = _write_metrics(tmp_path / "run", [_log(1, "train", ["a"], accuracy=0.5)])
    (run / "config.json").write_text(json.dumps({"local_epochs": 3, "model": "lenet5"}))
    text = plan_from_run_dir(run, ["wifi"], seconds_per_epoch=10.0)
    assert "30.0 s per round per node (3 epoch(s) x 10.0 s)" in text
    (run / "config.json").write_text("{not json")
    assert "(1 epoch(s) x 10.0 s)" in plan_from_run_dir(run, ["wifi"], seconds_per_epoch=10.0)


def test_a_profile_plans_with_its_declared_training_speed_not_this_hosts(tmp_path: Path) -> None:
    from apps.plan.compute import input_shape, train_flops_per_sample
    from mpfl.wire.specs import ModelSpec

    run = _write_metrics(tmp_path / "run", [
        _log(1, "mask", ["a", "b"], seconds=0.5),
        _log(2, "train", ["a", "b"], seconds=0.5, accuracy=0.6),
    ])
    (run / "config.json").write_text(json.dumps({"local_epochs": 2, "model": "lenet5"}))
    reports = [{"node": "a", "round": 1, "train_seconds": 0.2, "samples": 6000},
               {"node": "b", "round": 1, "train_seconds": 0.1, "samples": 4000}]
    (run / "node_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reports))
    spec = ModelSpec("lenet5")
    flops = train_flops_per_sample(spec)
    rpi4 = get_profile("rpi4")
    assert rpi4.train_gflops is not None
    expected = flops * 6000 * 2 / (rpi4.train_gflops * 1e9)
    text = plan_from_run_dir(run, ["lte-m"], "rpi4")
    assert f"{format_duration(expected)} per round per node on rpi4-4gb v2" in text
    assert "declared" in text and "not this host's time" in text
    # the host's own figures remain the source without a profile
    assert "reported training time in each round of the run on this host" in plan_from_run_dir(
        run, ["lte-m"])
    # FLOPs follow the architecture and the images it is built for
    assert input_shape(spec) == (1, 28, 28)
    assert input_shape(ModelSpec("cnn-cifar")) == (3, 32, 32)
    assert input_shape(ModelSpec("lenet5", {"in_channels": 3, "image_size": 32})) == (3, 32, 32)
    assert train_flops_per_sample(ModelSpec("resnet20")) > 10 * flops > 0
