"""Link emulation for planning: round times, wall-clock, time to accuracy, the printout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.plan import (
    MESSAGES_PER_ROUND,
    STATE_MESSAGE_BYTES,
    RoundBytes,
    compare,
    dense_fedavg_rounds,
    dense_model_bytes,
    dense_update_bytes,
    format_bytes,
    format_duration,
    format_plan,
    headline,
    plan_from_run_dir,
    round_comm_seconds,
    rounds_from_logs,
    rounds_from_metrics,
    setup_seconds,
    timeline,
)
from hardware.catalog import Link, get_link, get_profile
from mpfl.errors import ConfigError, DataError, HardwareError
from mpfl.federation.metrics import RoundLog
from mpfl.wire import Envelope, Kind, encode_envelope, encode_values
from mpfl.wire.protocol import encode_update

# 1 Mbit/s both ways, 50 ms per message: 1 MB takes 8 s plus latency.
MBIT = Link("mbit", "test link", uplink_kbps=1000, downlink_kbps=1000, latency_ms=50, source="")
SLOW = Link("slow", "test link", uplink_kbps=100, downlink_kbps=100, latency_ms=0, source="")


def _round(
    t: int,
    phase: str,
    up: int,
    down: int,
    *,
    nodes: int = 2,
    accuracy: float | None = None,
    train: float = 0.0,
    messages: int = 1,
    n_params: int = 0,
) -> RoundBytes:
    return RoundBytes(
        t, phase, (up,) * nodes, (down,) * nodes, accuracy, train, messages, n_params
    )


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


# ------------------------------------------------------------------------ round times


def test_one_megabyte_over_one_megabit_is_eight_seconds_plus_latency() -> None:
    record = _round(1, "mask", up=1_000_000, down=0, messages=1)
    assert round_comm_seconds(record, MBIT) == pytest.approx(8.0 + 0.05)


def test_uplink_and_downlink_and_every_message_count() -> None:
    # 250 kB up (2 s) + 125 kB down (1 s) + 3 messages x 50 ms
    record = _round(1, "train", up=250_000, down=125_000, messages=3)
    assert round_comm_seconds(record, MBIT) == pytest.approx(2.0 + 1.0 + 0.15)


def test_round_waits_for_the_slowest_node_and_links_cycle_over_nodes() -> None:
    record = RoundBytes(1, "train", (10_000, 10_000, 10_000), (0, 0, 0), None, 0.0, messages=1)
    # nodes 0 and 2 on MBIT (0.08 s + 0.05 s), node 1 on SLOW (0.8 s)
    assert round_comm_seconds(record, [MBIT, SLOW]) == pytest.approx(0.8)
    assert round_comm_seconds(record, [MBIT]) == pytest.approx(0.13)
    # the slow node's bytes decide, not the first node's
    uneven = RoundBytes(1, "train", (0, 20_000), (0, 0), None, 0.0, messages=0)
    assert round_comm_seconds(uneven, [SLOW]) == pytest.approx(1.6)


def test_timeline_adds_setup_communication_and_training() -> None:
    rounds = [
        _round(1, "mask", up=125_000, down=0, train=10.0, n_params=25_000),
        _round(2, "train", up=125_000, down=0, train=10.0, accuracy=0.5, n_params=25_000),
        _round(3, "train", up=125_000, down=0, train=10.0, accuracy=0.9, n_params=25_000),
    ]
    plan = timeline("MPFL", rounds, MBIT, target_accuracy=0.9)
    setup = (dense_model_bytes(25_000) + STATE_MESSAGE_BYTES) * 8 / 1e6 + 2 * 0.05
    assert plan.setup_seconds == pytest.approx(setup)
    per_round = 1.0 + 0.05 + 10.0
    assert [r.cumulative_seconds for r in plan.rounds] == pytest.approx(
        [setup + per_round * k for k in (1, 2, 3)]
    )
    assert plan.seconds_to_target == pytest.approx(setup + 3 * per_round)
    assert plan.rounds_to_target == 3
    assert plan.uplink_bytes == 3 * 2 * 125_000
    # a measured training time replaces the recorded one
    fast = timeline("MPFL", rounds, MBIT, train_seconds=0.0, target_accuracy=0.5)
    assert fast.seconds_to_target == pytest.approx(setup + 2 * 1.05)


def test_unreached_target_and_unknown_target() -> None:
    rounds = [_round(1, "train", up=0, down=0, accuracy=0.4)]
    assert timeline("x", rounds, MBIT, target_accuracy=0.5).seconds_to_target is None
    assert timeline("x", rounds, MBIT).rounds_to_target is None


@given(st.lists(st.floats(0.0, 1.0) | st.none(), min_size=1, max_size=12), st.floats(0.0, 1.0))
def test_time_to_target_is_the_first_round_at_or_above_it(
    accuracies: list[float | None], target: float
) -> None:
    rounds = [_round(i + 1, "train", 1000, 1000, accuracy=a) for i, a in enumerate(accuracies)]
    plan = timeline("x", rounds, MBIT, target_accuracy=target)
    hits = [i for i, a in enumerate(accuracies) if a is not None and a >= target]
    if not hits:
        assert plan.seconds_to_target is None
    else:
        assert plan.rounds_to_target == hits[0] + 1
        assert plan.seconds_to_target == plan.rounds[hits[0]].cumulative_seconds


# ------------------------------------------------------------------------ dense FedAvg


@given(st.integers(1, 5000), st.text("abc-0123456789", min_size=1, max_size=20))
def test_dense_message_sizes_match_the_real_envelopes(n_params: int, node_id: str) -> None:
    values = np.zeros(n_params, dtype=np.float32)
    codec, body = encode_values(values, [n_params], "fp32")
    fp = bytes(8)
    update = Envelope(Kind.UPDATE, 1, fp, node_id, codec, encode_update(10, body))
    model = Envelope(Kind.MODEL, 1, fp, "", codec, body)
    assert dense_update_bytes(n_params, len(node_id.encode())) == len(encode_envelope(update))
    assert dense_model_bytes(n_params) == len(encode_envelope(model))


def test_dense_mirror_keeps_training_rounds_only() -> None:
    rounds = [
        RoundBytes(1, "mask", (10, 10), (20, 20), None, 1.0, node_ids=("pi-01", "pi-2")),
        RoundBytes(2, "train", (30, 30), (40, 40), 0.7, 2.0, node_ids=("pi-01", "pi-2")),
        RoundBytes(3, "train", (30, 30), (40, 40), 0.8, 3.0, node_ids=("pi-01", "pi-2")),
    ]
    dense = dense_fedavg_rounds(rounds, n_params=1000)
    assert [(r.round, r.phase, r.accuracy, r.train_seconds) for r in dense] == [
        (1, "train", 0.7, 2.0),
        (2, "train", 0.8, 3.0),
    ]
    assert dense[0].uplink == (dense_update_bytes(1000, 5), dense_update_bytes(1000, 4))
    assert dense[0].downlink == (dense_model_bytes(1000) + STATE_MESSAGE_BYTES,) * 2
    # a mask-only run is mirrored round for round
    assert len(dense_fedavg_rounds(rounds[:1], n_params=1000)) == 1
    with pytest.raises(ConfigError):
        dense_fedavg_rounds(rounds)  # no n_params anywhere


def test_compare_mpfl_against_dense_on_a_slow_link() -> None:
    n = 250_000  # 1 MB of fp32 per dense message
    rounds = [
        _round(1, "mask", up=1_000, down=1_000, train=5.0, n_params=n, messages=3),
        _round(2, "train", up=100_000, down=100_000, accuracy=0.6, train=5.0, n_params=n,
               messages=3),
        _round(3, "train", up=100_000, down=100_000, accuracy=0.8, train=5.0, n_params=n,
               messages=3),
    ]
    c = compare(rounds, MBIT)
    assert c.target_accuracy == 0.8 and c.dense_assumed
    setup = (dense_model_bytes(n) + STATE_MESSAGE_BYTES) * 8 / 1e6 + 0.1
    mpfl = setup + (0.016 + 0.15 + 5) + 2 * (1.6 + 0.15 + 5)
    mpfl_time, dense_time = c.mpfl.seconds_to_target, c.dense.seconds_to_target
    assert mpfl_time is not None and dense_time is not None
    assert mpfl_time == pytest.approx(mpfl)
    dense_round = (dense_update_bytes(n) + dense_model_bytes(n) + STATE_MESSAGE_BYTES) * 8 / 1e6
    assert dense_time == pytest.approx(setup + 2 * (dense_round + 0.15 + 5))
    assert mpfl_time < dense_time
    line = headline(c)
    assert line.startswith("on mbit, MPFL reaches 80.0% in ")
    assert format_duration(mpfl_time) in line
    assert line.endswith(f"dense FedAvg in {format_duration(dense_time)}")


def test_compare_with_a_measured_dense_run_that_falls_short() -> None:
    mpfl = [_round(1, "train", 100, 100, accuracy=0.9, n_params=10)]
    dense = [_round(1, "train", 400, 400, accuracy=0.85, n_params=10)]
    c = compare(mpfl, MBIT, dense_rounds=dense)
    assert not c.dense_assumed
    assert c.dense.seconds_to_target is None
    assert "dense FedAvg does not reach it in 1 rounds" in headline(c)
    explicit = compare(mpfl, MBIT, dense_rounds=dense, target_accuracy=0.85)
    assert explicit.dense.rounds_to_target == 1
    with pytest.raises(ConfigError):
        compare(mpfl, MBIT, target_accuracy=1.5)
    with pytest.raises(ConfigError):
        compare(mpfl, [])


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
