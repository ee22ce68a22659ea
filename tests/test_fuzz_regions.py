"""Byte-level fuzzing of the region tier: the root's ``handle`` on a region's partial
topic in an open round, and ``RegionalServer.handle`` on its nodes' and the root's
topics. Neither raises nor hangs on a message it cannot use, and a message it drops
changes nothing it holds (the round's votes and sums, the known nodes, the partials sent).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from _fuzz import FUZZ, fix_envelope_crc, hostile, json_hostile, no_hang, view
from hypothesis import given
from hypothesis import strategies as st

from mpfl.config.settings import FederationConfig
from mpfl.federation.region import RegionalServer
from mpfl.federation.server import FederationServer
from mpfl.maths.aggregate import WeightedAverager
from mpfl.maths.votes import VoteAccumulator
from mpfl.wire import Envelope, Kind, encode_envelope, encode_mask, encode_values, topics
from mpfl.wire.partial import PartialAggregate, ValueSums, VoteCounts, encode_partial
from mpfl.wire.protocol import Hello, Publish, encode_update

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FED = "fzr"
# Joint mode with deltas: one open round takes votes and values, through the base path.
CFG = FederationConfig(federation=FED, model="mlp", model_args={"image_size": 8, "hidden": [8]},
                       granularity="weight", final_sparsity=0.5, mask_rounds=1, train_rounds=1,
                       mode="joint", delta=True, min_nodes=2, quorum=2)
REGION_CFG = replace(CFG, min_nodes=3, quorum=3)
NODES = ("n0", "n1", "n2")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _partial(server: FederationServer, region: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    votes = VoteAccumulator(server.unit_map.n_units)
    for _ in range(3):
        votes.add(rng.random(server.unit_map.n_units) < 0.5)
    base, _sizes = server.weights.published()
    sums = WeightedAverager(base.size)
    sums.add((base + rng.standard_normal(base.size)).astype(np.float32), 40.0)
    payload = encode_partial(PartialAggregate(
        votes.n_units, VoteCounts(votes.n_voters, votes.total_weight,
                                  planes=tuple(votes.packed_planes())),
        ValueSums(sums.n_updates, sums.total_weight, sums.sums)), scope=server.mask)
    return encode_envelope(Envelope(Kind.PARTIAL, server.round, server.unit_map.fingerprint,
                                    region, 0, payload))


def root_in_round() -> FederationServer:
    """A root in round 1 with two regions, of which r1 has already sent its partial."""
    server = FederationServer(CFG, None, Clock())
    for region in ("r0", "r1"):
        server.handle(topics.node_topic(FED, region, topics.NODE_STATUS),
                      Hello(region, 120, "region").encode())
    assert server.round == 1
    server.handle(topics.node_topic(FED, "r1", topics.NODE_PARTIAL), _partial(server, "r1", 1))
    assert server.answered == {"r1"}
    return server


SEED_ROOT = root_in_round()
PARTIALS = [_partial(SEED_ROOT, "r0", 2), _partial(SEED_ROOT, "r1", 3)]


@FUZZ
@given(messages=st.lists(st.tuples(st.sampled_from(["r0", "r1", "ghost"]),
                                   hostile(PARTIALS, fix_envelope_crc)), min_size=1, max_size=3))
def test_root_handle_partial(messages: list[tuple[str, bytes]]) -> None:
    server = root_in_round()
    for region, payload in messages:
        current = server.current
        assert current is not None
        before = view({"votes": current.votes, "values": current.values,
                       "answered": current.answered, "nodes": server.nodes})
        dropped = server.dropped.total()
        with no_hang():
            step = server.handle(topics.node_topic(FED, region, topics.NODE_PARTIAL), payload)
        if server.dropped.total() > dropped:
            assert step.closed is None and not step.publishes
            assert view({"votes": current.votes, "values": current.values,
                         "answered": current.answered, "nodes": server.nodes}) == before
        if server.round != 1:
            return


ROOT_START = FederationServer(CFG, None, Clock())
for _region in ("r0", "r1"):
    ROOT_START.handle(topics.node_topic(FED, _region, topics.NODE_STATUS),
                      Hello(_region, 120).encode())
ROOT_MESSAGES: list[Publish] = ROOT_START.start()


def region_in_round() -> RegionalServer:
    """A region following the root's round 1 with three nodes, n1 answered already."""
    region = RegionalServer(REGION_CFG, "r0", Clock())
    for message in ROOT_MESSAGES:
        region.handle(message.topic, message.payload)
    for node_id in NODES:
        region.handle(topics.node_topic(FED, node_id, topics.NODE_STATUS),
                      Hello(node_id, 40).encode())
    assert region.current is not None
    for name, payload in _uploads(region, "n1", 1).items():
        region.handle(topics.node_topic(FED, "n1", name), payload)
    assert region.current.answered == {"n1"}
    return region


def _uploads(region: RegionalServer, node_id: str, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    current, doc = region.current, region.state
    assert current is not None and doc is not None and current.base is not None
    fp = ROOT_START.unit_map.fingerprint
    mask_codec, mask = encode_mask(rng.random(current.votes.n_units) < 0.5)
    values = (current.base + rng.standard_normal(current.base.size)).astype(np.float32)
    codec, body = encode_values(values, current.sizes, "int8", current.base)
    return {
        topics.NODE_MASK: encode_envelope(Envelope(Kind.LOCAL_MASK, doc.round, fp, node_id,
                                                   int(mask_codec), mask)),
        topics.NODE_UPDATE: encode_envelope(Envelope(Kind.UPDATE, doc.round, fp, node_id,
                                                     int(codec), encode_update(40, body))),
    }


SEED_REGION = region_in_round()
REGION_SEEDS = {
    "nodes/n0/" + name: [payload] for name, payload in _uploads(SEED_REGION, "n0", 2).items()
} | {
    "nodes/n0/status": [Hello("n0", 40).encode(), b"offline"],
    **{"server/" + m.topic.rsplit("/", 1)[1]: [m.payload] for m in ROOT_MESSAGES},
}


@st.composite
def region_message(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from(sorted(REGION_SEEDS)))
    seeds = REGION_SEEDS[suffix]
    json_like = suffix.endswith(("status", "state"))
    payload = draw(json_hostile(seeds) if json_like else hostile(seeds, fix_envelope_crc))
    node = draw(st.sampled_from(["n0", "n2", "ghost", "r0"]))
    return f"mpfl/v1/{FED}/" + suffix.replace("n0", node, 1), payload


@FUZZ
@given(messages=st.lists(region_message(), min_size=1, max_size=3))
def test_region_handle(messages: list[tuple[str, bytes]]) -> None:
    region = region_in_round()
    for topic, payload in messages:
        current = region.current
        before = view({"votes": getattr(current, "votes", None), "nodes": region.nodes,
                       "values": getattr(current, "values", None), "log": len(region.log)})
        dropped = region.dropped.total()
        with no_hang():
            out = region.handle(topic, payload)  # never raises
        if region.dropped.total() > dropped:
            assert not out
            assert view({"votes": getattr(current, "votes", None), "nodes": region.nodes,
                         "values": getattr(current, "values", None),
                         "log": len(region.log)}) == before
        if region.log:
            return
