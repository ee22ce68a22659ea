"""The coordinator's round state machine, free of I/O.

waiting -> mask rounds -> training rounds -> done (or failed). A round closes with the
quorum once every node active at its start (and still online) answered, or at its
deadline; below quorum it is retried (the deadline moves on), then fails. Every message
is decoded and checked completely before it touches an accumulator, so a bad one is
counted by reason and dropped, never half-applied.

A regional coordinator (``region``) is a node with weight: its one upload per round, a
partial aggregate, answers every kind the round asks for and is merged exactly.

Rounds are numbered across phases: mask rounds 1..T_M, then training rounds. The
``session`` in every state document changes each time a coordinator process starts, which
tells nodes to resend a round they already finished (their cached bytes, no retraining).

``handle`` and ``tick`` return a :class:`Step`: what to publish and, when a round closed,
its record, so the caller makes the round durable before it announces the next one. What
is not orchestration lives beside this module: the round in progress and the round mode
(``rounds``), the shared weights (``weights``), the checkpoint format (``snapshot``) and the
byte count (``traffic``); aggregation and consensus are policies looked up once from the
config, and evaluation is a callable the caller passes in.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mpfl.choices import Phase
from mpfl.config.settings import FederationConfig
from mpfl.errors import FederationError, FingerprintMismatch, MpflError, WireError
from mpfl.federation.announce import state_document
from mpfl.federation.evaluation import Evaluator
from mpfl.federation.metrics import RoundLog
from mpfl.federation.resume import resume, saved_state
from mpfl.federation.rounds import NodeInfo, NodeTable, OpenRound, Step, get_mode, new_votes
from mpfl.federation.snapshot import decode_snapshot, encode_snapshot
from mpfl.federation.traffic import Traffic
from mpfl.federation.weights import GlobalWeights
from mpfl.maths.aggregate import new_aggregation
from mpfl.maths.consensus import get_rule
from mpfl.maths.layer_sparsity import get_allocation
from mpfl.maths.schedules import get_schedule
from mpfl.ml.units import State, UnitMap
from mpfl.wire import (
    Envelope,
    Kind,
    decode_envelope,
    encode_envelope,
    encode_mask,
    encode_values,
    topics,
)
from mpfl.wire.protocol import Hello, Publish, StateDocument

__all__ = ["FederationServer", "NodeInfo", "Step"]


# What each upload topic carries; a region's partial aggregate answers a whole round.
_UPLOAD_KINDS = {topics.NODE_MASK: Kind.LOCAL_MASK, topics.NODE_UPDATE: Kind.UPDATE,
                 topics.NODE_PARTIAL: Kind.PARTIAL}


class FederationServer:
    def __init__(
        self,
        cfg: FederationConfig,
        evaluate: Evaluator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.session = secrets.token_hex(4)
        self.run_id = secrets.token_hex(8)  # one per run directory, kept across restarts
        self._evaluate = evaluate
        self._mode = get_mode(cfg.mode)
        self._rule = get_rule(cfg.consensus)
        self._schedule = get_schedule(cfg.schedule)
        self._allocation = get_allocation(cfg.layer_sparsity)
        self._weighted_votes = cfg.vote_weighting == "samples"
        self.weights = GlobalWeights.from_config(cfg)
        self.phase: Phase = Phase.WAITING
        self.round = 0
        self.nodes = NodeTable()
        self.started_waiting = clock()
        self.dropped: Counter[str] = Counter()
        self.clamped_hellos = 0  # taken, with the claimed weight capped at max_samples
        self.traffic = Traffic()
        self.log: list[RoundLog] = []
        self.error: str | None = None
        self.current: OpenRound | None = None  # the round in progress (or the last one)

    # -- what the coordinator publishes -------------------------------------------------

    @property
    def total_rounds(self) -> int:
        return self.cfg.mask_rounds + self.cfg.train_rounds

    @property
    def finished(self) -> bool:
        return self.phase.is_final

    @property
    def unit_map(self) -> UnitMap:
        return self.weights.unit_map

    @property
    def mask(self) -> np.ndarray:
        return self.weights.mask

    @property
    def global_values(self) -> np.ndarray | None:
        """The global alive values, once training (or joint averaging) began."""
        return self.weights.values

    @property
    def deadline(self) -> float:
        return self.current.deadline if self.current is not None else 0.0

    @property
    def answered(self) -> set[str]:
        """Nodes that answered the round in progress."""
        return self.current.answered if self.current is not None else set()

    def _topic(self, name: str) -> str:
        return topics.server_topic(self.cfg.federation, name)

    def target(self) -> float:
        """This round's target sparsity (the final one once the mask rounds are over)."""
        t = min(self.round, self.cfg.mask_rounds)
        if t <= 0:
            return 0.0
        return self._schedule(t, self.cfg.mask_rounds, self.cfg.final_sparsity)

    def state_doc(self) -> StateDocument:
        return state_document(self)

    def _envelope(self, kind: Kind, codec: int, payload: bytes, t: int) -> bytes:
        env = Envelope(kind, t, self.unit_map.fingerprint, "", codec, payload)
        return encode_envelope(env)

    def _publish(self, name: str, payload: bytes) -> Publish:
        self.traffic.broadcast(len(payload), max(len(self.nodes), 1))
        return Publish(self._topic(name), payload, retain=True)

    def publish_state(self) -> Publish:
        return self._publish(topics.SERVER_STATE, self.state_doc().encode())

    def publish_model(self, t: int) -> Publish:
        """The weights that round ``t + 1`` starts from."""
        codec, payload = encode_values(*self.weights.published(), "fp32")
        return self._publish(topics.SERVER_MODEL, self._envelope(Kind.MODEL, codec, payload, t))

    def publish_mask(self, t: int) -> Publish:
        """The consensus closed by round ``t``, in force from round ``t + 1``."""
        codec, payload = encode_mask(self.mask)
        return self._publish(topics.SERVER_MASK, self._envelope(Kind.MASK, codec, payload, t))

    def start(self) -> list[Publish]:
        """Everything a node needs to catch up, as retained messages."""
        closed = self.round if self.finished else max(self.round - 1, 0)
        model_round = closed if self.global_values is not None else 0
        mask_round = min(closed, self.cfg.mask_rounds)
        return [
            self.publish_model(model_round), self.publish_mask(mask_round), self.publish_state()
        ]

    # -- incoming messages ---------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> Step:
        parsed = topics.parse_node_topic(self.cfg.federation, topic)
        if parsed is None:
            return Step()
        node_id, name = parsed
        try:
            if name == topics.NODE_STATUS:
                self._on_status(node_id, payload)
            elif name in _UPLOAD_KINDS:
                reason = self._on_upload(node_id, name, payload)
                if reason is not None:
                    self.record_drop(reason)
        except FingerprintMismatch:
            self.record_drop("fingerprint")
        except MpflError:
            self.record_drop("malformed")
        return self.tick()

    def record_drop(self, reason: str, count: int = 1) -> None:
        """Count dropped messages (here, or in the transport before ``handle``)."""
        if count > 0:
            self.dropped[reason] += count
            if self.current is not None:
                self.current.dropped[reason] += count

    def _on_status(self, node_id: str, payload: bytes) -> None:
        hello = Hello.decode(payload)
        if hello is None:
            self.nodes.leave(node_id)
            return
        if hello.node_id != node_id:
            raise WireError("status node id does not match its topic", node=node_id)
        self.nodes[node_id] = NodeInfo.from_hello(hello, self.cfg.max_samples)
        if hello.samples > self.cfg.max_samples:
            self.clamped_hellos += 1  # not a drop: the node takes part, at the capped weight

    def _on_upload(self, node_id: str, name: str, payload: bytes) -> str | None:
        """Check and aggregate one upload; returns the reason it was dropped, if it was."""
        if node_id not in self.nodes:
            return "unknown-node"
        want = _UPLOAD_KINDS[name]
        env = decode_envelope(payload, expected_fingerprint=self.unit_map.fingerprint,
                              expected_kind=want)
        if env.node_id != node_id:
            return "malformed"
        if not self.phase.is_round or self.current is None:
            return "late"
        if env.round != self.round:
            return "stale-round" if env.round < self.round else "future-round"
        if want is Kind.PARTIAL:  # a region: its weights travel inside, capped per voter
            refusal = self.current.take_partial(env, self.cfg.max_samples)
        else:
            claimed = self.nodes[node_id].samples  # the hello's count, at most max_samples
            weight = float(claimed) if self._weighted_votes else 1.0
            refusal = self.current.take(env, want, weight, claimed)
        if refusal is None:
            self.traffic.received(len(payload))
        return refusal

    # -- time and round transitions ------------------------------------------------------

    def active_nodes(self) -> set[str]:
        """Nodes whose last status said online: the coordinator's one view of liveness."""
        return set(self.nodes.online)

    def tick(self) -> Step:
        """Advance on time or on answers."""
        now = self.clock()
        if self.phase is Phase.WAITING:
            active = len(self.nodes.online)
            timed_out = now - self.started_waiting >= self.cfg.start_timeout
            if active >= self.cfg.min_nodes or (timed_out and active >= self.cfg.quorum):
                return Step(self.open_round(1))
            if timed_out:
                return self._fail(f"only {active} node(s) joined within the start timeout "
                                  f"(need {self.cfg.quorum})")
            return Step()
        current = self.current
        if not self.phase.is_round or current is None:
            return Step()
        # Never below the quorum: after a broker restart's last wills nobody is left to
        # wait for, but one answer is not a round.
        quorate = len(current.answered) >= self.cfg.quorum
        if quorate and not current.awaits_anyone(self.nodes.online):
            return self._close_round(current)
        if now < current.deadline:
            return Step()
        if len(current.answered) >= self.cfg.quorum:
            return self._close_round(current)
        if current.attempts < self.cfg.retries:
            current.retry(now + self.cfg.round_timeout, self.active_nodes())
            return Step([self.publish_state()])
        return self._fail(f"round {self.round} got {len(current.answered)} answer(s), below "
                          f"the quorum of {self.cfg.quorum}, after {current.attempts + 1} "
                          "attempts")

    def _fail(self, message: str) -> Step:
        self.phase = Phase.FAILED
        self.error = message
        return Step([self.publish_state()])

    def open_round(self, t: int) -> list[Publish]:
        out: list[Publish] = []
        self.round = t
        self.phase = Phase.MASK if t <= self.cfg.mask_rounds else Phase.TRAIN
        if self.phase is Phase.TRAIN and self.global_values is None:
            self.weights.start_training()
            out.append(self.publish_model(t - 1))
        base, sizes = self.weights.published()
        started = self.clock()
        self.current = OpenRound(
            self._mode.mask_uploads if self.phase is Phase.MASK else frozenset({Kind.UPDATE}),
            self.active_nodes(),
            new_votes(self.unit_map.n_units, self._weighted_votes, self.cfg.vote_agreement),
            new_aggregation(self.cfg.aggregator, sum(sizes), base, self.cfg.trim),
            self.mask, sizes, base if self.cfg.delta else None,
            started, started + self.cfg.round_timeout, self.traffic.mark(),
        )
        out.append(self.publish_state())
        return out

    def _close_round(self, closing: OpenRound) -> Step:
        out: list[Publish] = []
        accuracy = loss = None
        if self.phase is Phase.MASK:
            previous = self.weights.apply_consensus(closing.votes.tally(), self._rule,
                                                    self.target(), self._allocation)
            out.append(self.publish_mask(self.round))
            values = self._mode.values_after_consensus(
                closing.values, self.unit_map, previous, self.mask)
        else:
            values = self.weights.step_towards(closing.values.result())
        if values is not None:  # the nodes' average is the new global model
            self.weights.values = values
            loss, accuracy = self._evaluate_global()
            out.append(self.publish_model(self.round))
        participants = sorted(closing.answered)
        moved = self.traffic.since(closing.traffic_at_open)
        record = RoundLog(
            self.round, self.phase, self.target(), self.sparsity(), participants,
            moved.uplink, moved.downlink, 4 * self.unit_map.n_values * closing.nodes_answered,
            accuracy, loss, self.clock() - closing.started, dict(closing.dropped),
        )
        self.log.append(record)
        if self.round >= self.total_rounds:
            self.phase = Phase.DONE
            out.append(self.publish_state())
        else:
            out += self.open_round(self.round + 1)
        return Step(out, record)

    # -- results -------------------------------------------------------------------------

    def sparsity(self) -> float:
        return self.weights.sparsity()

    def final_state(self) -> State:
        return self.weights.final_state()

    def _evaluate_global(self) -> tuple[float | None, float | None]:
        if self._evaluate is None:
            return None, None
        return self._evaluate(self.final_state())

    def new_session(self) -> list[Publish]:
        """A new session id (nodes resend the open round's cached bytes) and a full catch-up.

        For a broker that lost its state (restarted without persistence): uploads in flight
        may be gone, and resent ones that did arrive are dropped as duplicates.
        """
        self.session = secrets.token_hex(4)
        return self.start()

    # -- checkpoints (the format and the restore live in ``resume``) ----------------------

    @property
    def closed_round(self) -> int:
        return self.log[-1].round if self.log else 0

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and a JSON-able description of the state after the last closed round."""
        return encode_snapshot(saved_state(self), self.cfg.to_dict(), self.unit_map.fingerprint)

    @classmethod
    def restore(
        cls,
        cfg: FederationConfig,
        arrays: Mapping[str, np.ndarray],
        meta: Mapping[str, Any],
        evaluate: Evaluator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> FederationServer:
        """A server in the state ``snapshot`` saw, with the next round open (new session)."""
        server = cls(cfg, evaluate, clock)
        resume(server, decode_snapshot(arrays, meta, server.unit_map))
        return server

    def require_success(self) -> None:
        if self.phase is Phase.FAILED:
            raise FederationError(self.error or "federation failed", round=self.round)
