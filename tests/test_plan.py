"""Link emulation for planning: round times, wall-clock, time to accuracy, the printout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.plan import (
    STATE_MESSAGE_BYTES,
    RoundBytes,
    compare,
    dense_fedavg_rounds,
    dense_model_bytes,
    dense_update_bytes,
    format_duration,
    headline,
    round_comm_seconds,
    timeline,
)
from hardware.catalog import Link
from mpfl.errors import ConfigError
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
