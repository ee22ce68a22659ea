"""A whole federation in one process, on scikit-learn's digits, checked from the outside.

Every message crosses a recording broker, so the tests recompute from the wire what the
coordinator should have done: each consensus mask from the nodes' local masks (with an
independent implementation of each rule), the uplink bytes of every round, and the
accuracy of the final model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from mpfl.config.settings import FederationConfig
from mpfl.federation import simulation
from mpfl.federation.evaluation import dataset_evaluator
from mpfl.federation.server import FederationServer
from mpfl.federation.transport import MemoryBroker
from mpfl.maths.layer_sparsity import inverse_sqrt
from mpfl.maths.partition import partition
from mpfl.maths.schedules import get_schedule, keep_count
from mpfl.ml.data import Dataset, load_dataset
from mpfl.ml.models import build_model
from mpfl.ml.train import evaluate, load_state
from mpfl.ml.units import model_state
from mpfl.wire import Envelope, Kind, decode_envelope, decode_mask, decode_values, topics
from mpfl.wire.protocol import Publish

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RULES = ["top-votes", "threshold-scan", "majority"]
GRANULARITIES = ["filter", "weight"]
N_NODES = 3


class RecordingBroker(MemoryBroker):
    """The in-memory broker, keeping a copy of every message published through it."""

    instances: list[RecordingBroker] = []

    def __init__(self) -> None:
        super().__init__()
        self.published: list[Publish] = []
        RecordingBroker.instances.append(self)

    def publish(self, message: Publish) -> None:
        self.published.append(message)
        super().publish(message)


@dataclass
class Run:
    cfg: FederationConfig
    server: FederationServer
    published: list[Publish]
    test: Dataset
    consensus: dict[int, np.ndarray] = field(default_factory=dict)  # closed by round t
    local: dict[int, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    uplink: dict[int, int] = field(default_factory=lambda: defaultdict(int))


def _config(rule: str, granularity: str, layer_sparsity: str) -> FederationConfig:
    return FederationConfig(
        federation="sim", model="mlp", model_args={"image_size": 8, "hidden": [32, 16]},
        granularity=granularity, final_sparsity=0.6, schedule="linear", consensus=rule,
        mode="rewind", layer_sparsity=layer_sparsity,
        mask_rounds=3, train_rounds=4, local_epochs=3, batch_size=32, lr=0.05,
        min_nodes=N_NODES, quorum=N_NODES, seed=1,
    )


def _run(rule: str, granularity: str, layer_sparsity: str) -> Run:
    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    parts = partition(train.y, N_NODES, "iid", seed=0)
    cfg = _config(rule, granularity, layer_sparsity)
    RecordingBroker.instances.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulation, "MemoryBroker", RecordingBroker)
        server = simulation.run_in_process(cfg, [train.subset(p) for p in parts],
                                           dataset_evaluator(cfg.model_spec, test))
    (broker,) = RecordingBroker.instances
    run = Run(cfg, server, broker.published, test)
    n_units = server.unit_map.n_units
    fp = server.unit_map.fingerprint
    mask_topic = topics.server_topic("sim", topics.SERVER_MASK)
    for message in run.published:  # server masks first: local masks are coded in their scope
        if message.topic == mask_topic:
            env = decode_envelope(message.payload, expected_fingerprint=fp, expected_kind=Kind.MASK)
            run.consensus[env.round] = decode_mask(env.codec, env.payload, n_units)
    for message in run.published:
        parsed = topics.parse_node_topic("sim", message.topic)
        if parsed is None or parsed[1] not in (topics.NODE_MASK, topics.NODE_UPDATE):
            continue
        env = decode_envelope(message.payload, expected_fingerprint=fp)
        run.uplink[env.round] += len(message.payload)
        if env.kind is Kind.LOCAL_MASK:
            scope = run.consensus[env.round - 1]
            run.local[env.round].append(decode_mask(env.codec, env.payload, n_units, scope))
    return run


_RUNS: dict[tuple[str, str, str], Run] = {}


def _cached_run(rule: str, granularity: str, layer_sparsity: str = "uniform") -> Run:
    """The reference algorithm's run (every layer pruned as far) unless told otherwise."""
    key = (rule, granularity, layer_sparsity)
    if key not in _RUNS:
        _RUNS[key] = _run(*key)
    return _RUNS[key]


@pytest.fixture(params=[(r, g) for r in RULES for g in GRANULARITIES],
                ids=lambda p: f"{p[0]}-{p[1]}")
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    yield _cached_run(*request.param)


# -- an independent implementation of the consensus rules, from DESIGN.md -------------------


def _ranked(counts: np.ndarray, history: np.ndarray, alive: np.ndarray) -> list[int]:
    idx = np.flatnonzero(alive)
    return sorted(idx.tolist(), key=lambda i: (-counts[i], -history[i], i))


def _expected_consensus(rule: str, counts: np.ndarray, n: int, history: np.ndarray,
                        alive: np.ndarray, layers: list[slice], target: float) -> np.ndarray:
    out = np.zeros_like(alive)
    for s in layers:
        size = s.stop - s.start
        c, a, h = counts[s], alive[s], history[s]
        if rule == "top-votes":
            keep = max(1, keep_count(size, target))
            out[s][_ranked(c, h, a)[:keep]] = True
        elif rule == "majority":
            layer = a & (2 * c >= n)
            if a.any() and not layer.any():
                layer[_ranked(c, h, a)[0]] = True
            out[s] = layer
        else:  # threshold-scan: tau = 1, (N-1)/N, ..., 1/N; the first reaching the target
            for need in range(n, 0, -1):
                layer = a & (c >= need)
                if (size - layer.sum()) / size >= target:
                    break
            out[s] = layer
    return out


def test_consensus_masks_follow_the_rule_from_the_nodes_votes(run: Run) -> None:
    umap, cfg = run.server.unit_map, run.cfg
    schedule = get_schedule(cfg.schedule)
    history = np.zeros(umap.n_units)
    assert sorted(run.consensus) == list(range(cfg.mask_rounds + 1))
    assert run.consensus[0].all()
    for t in range(1, cfg.mask_rounds + 1):
        votes = run.local[t]
        assert len(votes) == N_NODES
        alive = run.consensus[t - 1]
        target = schedule(t, cfg.mask_rounds, cfg.final_sparsity)
        for vote in votes:  # each node pruned its own layers to exactly the target
            assert not np.any(vote & ~alive)
            for s in umap.slices:
                want = min(int(alive[s].sum()), max(1, keep_count(s.stop - s.start, target)))
                assert vote[s].sum() == want
        counts = np.sum(votes, axis=0)
        expected = _expected_consensus(cfg.consensus, counts, N_NODES, history, alive,
                                       umap.slices, target)
        np.testing.assert_array_equal(run.consensus[t], expected)
        history = history + counts / N_NODES
        log = run.server.log[t - 1]
        assert log.phase == "mask" and log.round == t
        assert log.target_sparsity == pytest.approx(target)
        assert log.sparsity == pytest.approx(1 - run.consensus[t].mean())


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_top_votes_hits_the_schedule_target_exactly_in_every_layer(granularity: str) -> None:
    run = _cached_run("top-votes", granularity)
    umap, cfg = run.server.unit_map, run.cfg
    for t in range(1, cfg.mask_rounds + 1):
        target = get_schedule(cfg.schedule)(t, cfg.mask_rounds, cfg.final_sparsity)
        for s in umap.slices:
            n = s.stop - s.start
            assert run.consensus[t][s].sum() == max(1, keep_count(n, target))
    final = umap.layer_sparsity(run.server.mask)
    for s, sparsity in zip(umap.slices, final, strict=True):
        n = s.stop - s.start
        assert sparsity == pytest.approx((n - keep_count(n, cfg.final_sparsity)) / n)
        assert abs(sparsity - cfg.final_sparsity) < 1 / n


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_inverse_sqrt_leaves_small_layers_denser_at_the_same_overall_sparsity(
    granularity: str,
) -> None:
    """Nodes and coordinator share each round's sparsity among layers the same way: every
    vote and every consensus keeps each layer's allocated count, the model as a whole
    reaches the schedule's target, and no layer ends sparser than a larger one."""
    run = _cached_run("top-votes", granularity, "inverse-sqrt")
    umap, cfg = run.server.unit_map, run.cfg
    sizes = [s.stop - s.start for s in umap.slices]
    for t in range(1, cfg.mask_rounds + 1):
        target = get_schedule(cfg.schedule)(t, cfg.mask_rounds, cfg.final_sparsity)
        keeps = [max(1, keep_count(n, r)) for n, r in zip(sizes, inverse_sqrt(sizes, target),
                                                          strict=True)]
        for s, keep in zip(umap.slices, keeps, strict=True):
            assert run.consensus[t][s].sum() == keep
            for vote in run.local[t]:
                assert vote[s].sum() == min(keep, int(run.consensus[t - 1][s].sum()))
        assert 1 - run.consensus[t].mean() == pytest.approx(target, abs=len(sizes) / sum(sizes))
    final = umap.layer_sparsity(run.server.mask)
    by_size = [r for _, r in sorted(zip(sizes, final, strict=True))]
    assert by_size == sorted(by_size)
    assert final[int(np.argmax(sizes))] > cfg.final_sparsity > final[int(np.argmin(sizes))]


def test_every_rule_keeps_the_consensus_monotone_and_the_training_mask_fixed(run: Run) -> None:
    masks = [run.consensus[t] for t in sorted(run.consensus)]
    for before, after in zip(masks, masks[1:], strict=False):
        assert not np.any(after & ~before)  # a pruned unit never comes back
    np.testing.assert_array_equal(run.server.mask, masks[-1])
    assert 0 < run.server.sparsity() < 1


def test_trained_model_is_clearly_better_than_chance(run: Run) -> None:
    logs = [log for log in run.server.log if log.phase == "train"]
    assert len(logs) == run.cfg.train_rounds
    assert logs[-1].accuracy is not None and logs[-1].accuracy > 0.5
    model = build_model(run.cfg.model_spec)
    load_state(model, run.server.final_state())
    loss, accuracy = evaluate(model, run.test)
    assert accuracy == pytest.approx(logs[-1].accuracy)
    assert loss == pytest.approx(logs[-1].loss)


def test_uplink_bytes_are_the_bytes_the_nodes_put_on_the_wire(run: Run) -> None:
    assert len(run.server.log) == run.cfg.mask_rounds + run.cfg.train_rounds
    for log in run.server.log:
        assert log.uplink_bytes == run.uplink[log.round] > 0
        assert log.participants == [f"node-{i}" for i in range(N_NODES)]
        assert log.dropped == {}
    assert run.server.traffic.uplink == sum(run.uplink.values())
    # the default deflates the int4 levels: a training round, envelopes and scales
    # included, costs less than the packed nibbles alone (half a byte per value) would
    train_log = run.server.log[-1]
    n_alive = len(run.server.unit_map.alive_values(run.server.weights.w0, run.server.mask))
    assert run.cfg.value_codec == "int4-deflate"
    assert train_log.uplink_bytes < n_alive * N_NODES / 2


def test_final_state_is_zero_exactly_at_the_pruned_positions(run: Run) -> None:
    umap = run.server.unit_map
    state = run.server.final_state()
    for name, keep in umap.tensor_masks(run.server.mask).items():
        assert np.all(state[name][~keep] == 0), name
        assert np.count_nonzero(state[name][keep]) > 0.9 * keep.sum(), name


def test_training_starts_from_the_rewound_masked_initial_weights(run: Run) -> None:
    """The model published when the mask phase closes is w0 * C, with w0 from the seed."""
    cfg, umap = run.cfg, run.server.unit_map
    w0 = model_state(build_model(cfg.model_spec, seed=cfg.seed))
    model_topic = topics.server_topic("sim", topics.SERVER_MODEL)
    published: dict[int, Envelope] = {}
    for message in run.published:
        if message.topic == model_topic:
            env = decode_envelope(message.payload, expected_kind=Kind.MODEL)
            published.setdefault(env.round, env)
    start = published[cfg.mask_rounds]
    mask = run.consensus[cfg.mask_rounds]
    values = decode_values(start.codec, start.payload, umap.layer_sizes(mask))
    np.testing.assert_array_equal(values, umap.alive_values(w0, mask))
    dense = published[0]
    full = umap.full_mask()
    np.testing.assert_array_equal(decode_values(dense.codec, dense.payload,
                                                umap.layer_sizes(full)),
                                  umap.alive_values(w0, full))


def test_a_federation_is_reproducible() -> None:
    first = _cached_run("top-votes", "filter")
    again = _run("top-votes", "filter", "uniform")
    np.testing.assert_array_equal(again.server.mask, first.server.mask)
    a, b = first.server.final_state(), again.server.final_state()
    assert all(np.array_equal(a[k], b[k]) for k in a)
