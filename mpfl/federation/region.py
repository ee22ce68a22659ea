"""A regional coordinator's round state machine, free of I/O.

A region serves its own nodes through its own broker and follows the root's rounds: the
root's retained ``server/state``, ``server/model`` and ``server/mask`` reach the region's
broker over a bridge, and the region's nodes follow them exactly as they would follow the
root. The region counts its nodes' uploads like the root would (same checks, same
``OpenRound``), and when its own round closes it sends ONE partial aggregate upstream on
``nodes/<region>/partial`` (``mpfl.wire.partial``): the vote counter and the weighted sums
with their weights. To the root a region is a node with weight.

Only sums can be split: a region refuses to start with mask agreement or with the median,
trimmed mean or norm-clipped mean, whose result depends on every update at once (a
median of regional medians is not the median). The root refuses a partial for those too.

A region's round closes when every node active at its start answered (with at least the
region's quorum), or at its own deadline, ahead of the root's by a margin so the partial
arrives in time; below its quorum it sends nothing and the root treats the region as a
node that did not answer (quorum, deadline, retry). A region keeps nothing on disk: a
restarted region joins the root's round in progress, and a new root session (a restarted
root) opens a new round, to which the nodes resend their cached uploads.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mpfl.choices import AggregatorName, Granularity, Mode, ModelScope, Phase, VoteWeighting
from mpfl.config.settings import FederationConfig
from mpfl.errors import ConfigError, DocumentError, FingerprintMismatch, MpflError
from mpfl.federation.rounds import NodeInfo, OpenRound
from mpfl.federation.traffic import Traffic
from mpfl.maths.aggregate import WeightedAverager
from mpfl.maths.votes import VoteAccumulator
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.units import UnitMap, build_unit_map
from mpfl.wire import (
    Envelope,
    Kind,
    decode_envelope,
    decode_mask,
    decode_values,
    encode_envelope,
    topics,
)
from mpfl.wire.partial import PartialAggregate, ValueSums, VoteCounts, encode_partial
from mpfl.wire.protocol import Hello, Publish, StateDocument, decode_state

REGION_HARDWARE = "region"  # what a region's hello says it runs on
MIN_MARGIN_S = 1.0
MARGIN_SHARE = 0.1  # of the round's time left at its start, kept for the partial's trip up
_KINDS = {topics.NODE_MASK: Kind.LOCAL_MASK, topics.NODE_UPDATE: Kind.UPDATE}


def check_mergeable(cfg: FederationConfig) -> None:
    """A ConfigError unless the region's counts add up to exactly the flat result."""
    if cfg.aggregator != AggregatorName.FEDAVG:
        raise ConfigError(f"a region cannot run aggregator {cfg.aggregator!r}: only fedavg's "
                          "weighted sums add up across regions (a median of regional medians "
                          "is not the median); run it on one coordinator, or use fedavg")
    if cfg.vote_agreement:
        raise ConfigError("a region cannot run vote_agreement: it scores each mask against "
                          "the whole round's majority, which no region sees")


@dataclass
class RegionRound:
    """What one region round did: its nodes' bytes up and down, and its partial's."""

    round: int
    phase: str
    session: str
    participants: list[str]
    node_uplink_bytes: int
    node_downlink_bytes: int
    partial_bytes: int
    seconds: float
    dropped: dict[str, int] = field(default_factory=dict)


class RegionalServer:
    def __init__(self, cfg: FederationConfig, region: str,
                 clock: Callable[[], float] = time.time) -> None:
        check_mergeable(cfg)
        self.cfg = cfg
        self.region = topics.validate_node_id(region)
        self.clock = clock
        self._weighted_votes = cfg.vote_weighting == VoteWeighting.SAMPLES
        self._server_head = topics.topic_prefix(cfg.federation) + "/server/"
        self.nodes: dict[str, NodeInfo] = {}
        self.dropped: Counter[str] = Counter()
        self.state: StateDocument | None = None  # the root's, as last received
        self._envelopes: dict[Kind, Envelope] = {}  # the root's model and mask
        self._unit_map: UnitMap | None = None
        self._built_for: tuple[ModelSpec, Granularity] | None = None
        self.current: OpenRound | None = None
        self._key: tuple[str, int] | None = None  # (root session, round) of ``current``
        self._sent: tuple[str, int] | None = None  # the last round whose partial went up
        self._announced: str | None = None  # the session the last hello was sent in
        self.traffic = Traffic()  # this tier: nodes' uploads in, root's messages out to them
        self._closed_at = self.traffic.mark()
        self.log: list[RegionRound] = []

    @property
    def session(self) -> str:
        """The root's session: what the region's and its nodes' messages must carry."""
        return self.state.session if self.state is not None else ""

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.phase.is_final

    def active_nodes(self) -> set[str]:
        return {n for n, info in self.nodes.items() if info.online}

    def own_topic(self, topic: str) -> bool:
        """A topic of this region's own (its hello and partial, echoed by its broker)."""
        parsed = topics.parse_node_topic(self.cfg.federation, topic)
        return parsed is not None and parsed[0] == self.region

    def record_drop(self, reason: str, count: int = 1) -> None:
        if count > 0:
            self.dropped[reason] += count
            if self.current is not None:
                self.current.dropped[reason] += count

    # -- incoming ------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> list[Publish]:
        """One message from the region's broker: the root's (bridged down) or a node's."""
        try:
            if topic.startswith(self._server_head):
                self._on_server(topic.removeprefix(self._server_head), payload)
            elif not self.own_topic(topic):
                self._on_node(topic, payload)
        except FingerprintMismatch:
            self.record_drop("fingerprint")
        except MpflError:
            self.record_drop("malformed")
        return self.tick()

    def _on_server(self, name: str, payload: bytes) -> None:
        self.traffic.broadcast(len(payload), len(self.active_nodes()))
        if name == topics.SERVER_STATE:
            doc = decode_state(payload)
            if doc.federation != self.cfg.federation:
                raise DocumentError("server state", "another federation", field="federation",
                                    reason="wrong-federation")
            self._prepare(doc)
            self.state = doc
        elif name in (topics.SERVER_MODEL, topics.SERVER_MASK):
            kind = Kind.MODEL if name == topics.SERVER_MODEL else Kind.MASK
            self._envelopes[kind] = decode_envelope(payload, expected_kind=kind)

    def _prepare(self, doc: StateDocument) -> None:
        """The root's model, built once per spec: the unit map decodes masks and values."""
        if self._built_for != (doc.model, doc.granularity):
            model = build_model(doc.model)
            self._unit_map = build_unit_map(model, doc.model, doc.granularity)
            self._built_for = (doc.model, doc.granularity)
        assert self._unit_map is not None
        if self._unit_map.fingerprint.hex() != doc.fingerprint:
            raise FingerprintMismatch("the root's model is not the one this region builds",
                                      got=doc.fingerprint)

    def _on_node(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse_node_topic(self.cfg.federation, topic)
        if parsed is None:
            return
        node_id, name = parsed
        if name == topics.NODE_STATUS:
            hello = Hello.decode(payload)
            if hello is None:
                if node_id in self.nodes:
                    self.nodes[node_id].online = False
            elif hello.node_id != node_id:
                self.record_drop("malformed")
            else:
                self.nodes[node_id] = NodeInfo.from_hello(hello, self.cfg.max_samples)
        elif name in _KINDS:
            reason = self._on_upload(node_id, _KINDS[name], payload)
            if reason is not None:
                self.record_drop(reason)

    def _on_upload(self, node_id: str, kind: Kind, payload: bytes) -> str | None:
        if node_id not in self.nodes:
            return "unknown-node"
        if self._unit_map is None:
            return "late"
        env = decode_envelope(payload, expected_fingerprint=self._unit_map.fingerprint,
                              expected_kind=kind)
        if env.node_id != node_id:
            return "malformed"
        doc, current = self.state, self.current
        if doc is None or current is None or self._sent == self._key:
            return "late"
        if env.round != doc.round:
            return "stale-round" if env.round < doc.round else "future-round"
        claimed = self.nodes[node_id].samples
        weight = float(claimed) if self._weighted_votes else 1.0
        refusal = current.take(env, kind, weight, claimed)
        if refusal is None:
            self.traffic.received(len(payload))
        return refusal

    # -- rounds --------------------------------------------------------------------------

    def tick(self) -> list[Publish]:
        out = self._hello_if_due()
        self._follow()
        current = self.current
        if current is None or self._sent == self._key:
            return out
        quorate = len(current.answered) >= max(self.cfg.quorum, 1)
        if quorate and (not current.waiting_for(self.active_nodes())
                        or self.clock() >= current.deadline):
            out.append(self._close(current))
        return out

    def _hello_if_due(self) -> list[Publish]:
        """Join the root once this region has its own min_nodes (and again in each new root
        session): until then the root does not count on it."""
        active = self.active_nodes()
        if not self.session or self._announced == self.session or self.finished:
            return []
        if len(active) < self.cfg.min_nodes:
            return []
        self._announced = self.session
        return [self.hello()]

    def hello(self) -> Publish:
        samples = max(sum(self.nodes[n].samples for n in self.active_nodes()), 1)
        hello = Hello(self.region, min(samples, 0xFFFF_FFFF), REGION_HARDWARE)
        return Publish(topics.node_topic(self.cfg.federation, self.region, topics.NODE_STATUS),
                       hello.encode(), retain=True)

    def _follow(self) -> None:
        """Open the root's current round once its model and mask are here too; a retry of
        the root (same round, new deadline) moves the region's deadline with it."""
        doc, unit_map = self.state, self._unit_map
        if doc is None or unit_map is None or not doc.phase.is_round:
            self.current = None
            return
        key = (doc.session, doc.round)
        if key == self._key and self.current is not None:
            self.current.deadline = self._deadline(doc, self.current.started)
            return
        mask_env, model_env = self._envelopes.get(Kind.MASK), self._envelopes.get(Kind.MODEL)
        scope_is_mask = doc.model_scope == ModelScope.MASK
        fp = unit_map.fingerprint
        if (mask_env is None or model_env is None or mask_env.fingerprint != fp
                or model_env.fingerprint != fp or mask_env.round != doc.mask_in_force
                or model_env.round != (doc.round - 1 if scope_is_mask else 0)):
            return  # the root's retained model or mask for this round is not here yet
        try:
            self.current = self._open(doc, unit_map, mask_env, model_env, scope_is_mask)
        except MpflError:
            self.record_drop("malformed")
            self._envelopes.clear()  # wait for the root's next
            return
        self._key = key

    def _open(self, doc: StateDocument, unit_map: UnitMap, mask_env: Envelope,
              model_env: Envelope, scope_is_mask: bool) -> OpenRound:
        mask = decode_mask(mask_env.codec, mask_env.payload, unit_map.n_units)
        scope = mask if scope_is_mask else unit_map.full_mask()
        base = decode_values(model_env.codec, model_env.payload, unit_map.layer_sizes(scope))
        sizes = unit_map.layer_sizes(mask)
        uploads = {Kind.UPDATE} if doc.phase == Phase.TRAIN else {Kind.LOCAL_MASK}
        if doc.phase == Phase.MASK and doc.mode == Mode.JOINT:
            uploads.add(Kind.UPDATE)
        started = self.clock()
        return OpenRound(frozenset(uploads), self.active_nodes(),
                         VoteAccumulator(unit_map.n_units, self._weighted_votes),
                         WeightedAverager(sum(sizes)), mask, sizes,
                         base if doc.delta else None, started,
                         self._deadline(doc, started), self.traffic.mark())

    @staticmethod
    def _deadline(doc: StateDocument, started: float) -> float:
        """The root's deadline less a margin for the partial's way up (clocks in sync)."""
        margin = max(MIN_MARGIN_S, MARGIN_SHARE * (doc.deadline - started))
        return doc.deadline - margin

    def _close(self, closing: OpenRound) -> Publish:
        assert self.state is not None and self._unit_map is not None
        doc = self.state
        votes = values = None
        if Kind.LOCAL_MASK in closing.uploads:
            assert isinstance(closing.votes, VoteAccumulator)
            count = closing.votes
            votes = (VoteCounts(count.n_voters, count.total_weight, sums=count.weighted_sums)
                     if count.weighted else
                     VoteCounts(count.n_voters, count.total_weight,
                                planes=tuple(count.packed_planes())))
        if Kind.UPDATE in closing.uploads:
            assert isinstance(closing.values, WeightedAverager)
            summed = closing.values
            values = ValueSums(summed.n_updates, summed.total_weight, summed.sums)
        payload = encode_partial(PartialAggregate(self._unit_map.n_units, votes, values),
                                 scope=closing.scope)
        envelope = encode_envelope(Envelope(Kind.PARTIAL, doc.round, self._unit_map.fingerprint,
                                            self.region, 0, payload))
        self._sent = self._key
        # Since the last close: the root's messages that opened this round came before it.
        moved = self.traffic.since(self._closed_at)
        self._closed_at = self.traffic.mark()
        self.log.append(RegionRound(
            doc.round, doc.phase, doc.session, sorted(closing.answered), moved.uplink,
            moved.downlink, len(envelope), self.clock() - closing.started,
            dict(closing.dropped)))
        topic = topics.node_topic(self.cfg.federation, self.region, topics.NODE_PARTIAL)
        return Publish(topic, envelope, qos=1)
