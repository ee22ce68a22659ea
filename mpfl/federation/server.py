"""The coordinator's round state machine, free of I/O.

waiting -> mask rounds -> training rounds -> done (or failed). A round closes when every
node active at its start has answered, or at its deadline with at least the quorum;
below quorum it is retried (the deadline moves on), then fails. Every incoming message
is decoded and checked completely before it touches an accumulator, so a bad one is
counted by reason and dropped, never half-applied.

Rounds are numbered across phases: mask rounds 1..T_M, then training rounds. The
``session`` in every state document changes each time a coordinator process starts, which
tells nodes to resend a round they already finished (their cached bytes, no retraining).

``snapshot()`` captures everything a closed round leaves behind (mask, vote history,
global values, nodes, counters, the round log) as plain arrays plus a JSON-able dict;
``FederationServer.restore`` rebuilds a server from it and re-opens the round after the
last closed one, so a restarted coordinator neither repeats nor loses a round.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpfl.choices import Granularity, Mode, ModelScope, Phase, ValueCodecName
from mpfl.config.settings import FederationConfig
from mpfl.errors import (
    FederationError,
    FingerprintMismatch,
    ModelError,
    MpflError,
    WireError,
)
from mpfl.federation.metrics import RoundLog
from mpfl.maths.aggregate import WeightedAverager, aggregate
from mpfl.maths.consensus import VoteAccumulator, consensus_mask
from mpfl.maths.schedules import get_schedule
from mpfl.ml.data import Dataset
from mpfl.ml.models import build_model
from mpfl.ml.train import evaluate, load_state
from mpfl.ml.units import State, build_unit_map, model_state
from mpfl.wire import (
    Envelope,
    Kind,
    decode_envelope,
    decode_mask,
    decode_values,
    encode_envelope,
    encode_mask,
    encode_values,
    topics,
)
from mpfl.wire.protocol import PROTOCOL_VERSION, Hello, Publish, StateDocument, decode_update


@dataclass
class NodeInfo:
    samples: int
    hardware: str = "unknown"
    online: bool = True


SNAPSHOT_VERSION = 1


class FederationServer:
    def __init__(
        self,
        cfg: FederationConfig,
        eval_data: Dataset | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.eval_data = eval_data
        self.clock = clock
        self.session = secrets.token_hex(4)
        self.run_id = secrets.token_hex(8)  # one per run directory, kept across restarts
        self.model = build_model(cfg.model_spec, seed=cfg.seed)
        self.unit_map = build_unit_map(self.model, cfg.model_spec, cfg.granularity)
        self.w0: State = model_state(self.model)
        full = self.unit_map.full_mask()
        self._w0_values = self.unit_map.alive_values(self.w0, full)
        self._w0_sizes = self.unit_map.layer_sizes(full)
        self.mask = self.unit_map.full_mask()
        self.history = np.zeros(self.unit_map.n_units)
        self.global_values: np.ndarray | None = None  # alive values once training starts
        self.phase = "waiting"
        self.round = 0
        self.nodes: dict[str, NodeInfo] = {}
        self.expected: set[str] = set()
        self.answered: set[str] = set()
        self._seen: dict[str, set[Kind]] = {}  # what each node sent this round
        self.deadline = 0.0
        self.attempts = 0
        self.started_waiting = clock()
        self.round_started = 0.0
        self.dropped: Counter[str] = Counter()
        self.round_dropped: Counter[str] = Counter()
        self.uplink = 0
        self.downlink = 0
        self.log: list[RoundLog] = []
        self.error: str | None = None
        self._votes: VoteAccumulator | None = None
        self._avg: WeightedAverager | None = None
        self._updates: list[tuple[np.ndarray, float]] = []
        self._sizes: list[int] = []  # alive values per tensor under this round's mask

    # -- what the coordinator publishes -------------------------------------------------

    @property
    def total_rounds(self) -> int:
        return self.cfg.mask_rounds + self.cfg.train_rounds

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "failed")

    def _topic(self, name: str) -> str:
        return topics.server_topic(self.cfg.federation, name)

    def target(self) -> float:
        """This round's target sparsity (the final one once the mask rounds are over)."""
        t = min(self.round, self.cfg.mask_rounds)
        if t <= 0:
            return 0.0
        return get_schedule(self.cfg.schedule)(t, self.cfg.mask_rounds, self.cfg.final_sparsity)

    def state_doc(self) -> StateDocument:
        cfg = self.cfg
        return StateDocument(
            protocol=PROTOCOL_VERSION,
            federation=cfg.federation,
            session=self.session,
            run=self.run_id,
            phase=Phase(self.phase),
            round=self.round,
            mask_rounds=cfg.mask_rounds,
            train_rounds=cfg.train_rounds,
            target_sparsity=self.target(),
            deadline=self.deadline,
            model=cfg.model_spec,
            granularity=Granularity(cfg.granularity),
            fingerprint=self.unit_map.fingerprint.hex(),
            model_scope=ModelScope.DENSE if self.global_values is None else ModelScope.MASK,
            train=cfg.train_spec,
            value_codec=ValueCodecName(cfg.value_codec),
            mode=Mode(cfg.mode),
            delta=cfg.delta,
            error=self.error,
        )

    def _envelope(self, kind: Kind, codec: int, payload: bytes, t: int) -> bytes:
        env = Envelope(kind, t, self.unit_map.fingerprint, "", codec, payload)
        return encode_envelope(env)

    def _publish(self, name: str, payload: bytes) -> Publish:
        self.downlink += len(payload) * max(len(self.nodes), 1)
        return Publish(self._topic(name), payload, retain=True)

    def publish_state(self) -> Publish:
        return self._publish(topics.SERVER_STATE, self.state_doc().encode())

    def publish_model(self, t: int) -> Publish:
        """The weights that round ``t + 1`` starts from."""
        if self.global_values is None:  # dense w0: the whole state, scope "all ones"
            values, sizes = self._w0_values, self._w0_sizes
        else:
            values, sizes = self.global_values, self.unit_map.layer_sizes(self.mask)
        codec, payload = encode_values(values, sizes, "fp32")
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

    def handle(self, topic: str, payload: bytes) -> list[Publish]:
        parsed = topics.parse_node_topic(self.cfg.federation, topic)
        if parsed is None:
            return []
        node_id, name = parsed
        try:
            if name == topics.NODE_STATUS:
                self._on_status(node_id, payload)
            elif name in (topics.NODE_MASK, topics.NODE_UPDATE):
                reason = self._on_upload(node_id, name, payload)
                if reason is not None:
                    self._drop(reason)
        except FingerprintMismatch:
            self._drop("fingerprint")
        except MpflError:
            self._drop("malformed")
        return self.tick()

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count
        self.round_dropped[reason] += count

    def record_drop(self, reason: str, count: int = 1) -> None:
        """Count messages the transport dropped before they reached ``handle``."""
        if count > 0:
            self._drop(reason, count)

    def _on_status(self, node_id: str, payload: bytes) -> None:
        hello = Hello.decode(payload)
        if hello is None:
            if node_id in self.nodes:
                self.nodes[node_id].online = False
            return
        if hello.node_id != node_id:
            raise WireError("status node id does not match its topic", node=node_id)
        self.nodes[node_id] = NodeInfo(hello.samples, hello.hardware, online=True)

    def _on_upload(self, node_id: str, name: str, payload: bytes) -> str | None:
        """Check and aggregate one upload; returns the reason it was dropped, if it was."""
        if node_id not in self.nodes:
            return "unknown-node"
        want = Kind.LOCAL_MASK if name == topics.NODE_MASK else Kind.UPDATE
        env = decode_envelope(payload, expected_fingerprint=self.unit_map.fingerprint,
                              expected_kind=want)
        if env.node_id != node_id:
            return "malformed"
        if self.phase not in ("mask", "train"):
            return "late"
        if env.round != self.round:
            return "stale-round" if env.round < self.round else "future-round"
        expected = self._expected_kinds()
        if want not in expected:
            return "wrong-phase"
        seen = self._seen.setdefault(node_id, set())
        if want in seen:
            return "duplicate"
        if want is Kind.LOCAL_MASK:
            local = decode_mask(env.codec, env.payload, self.unit_map.n_units, scope=self.mask)
            assert self._votes is not None
            self._votes.add(local, self._vote_weight(node_id))
        else:
            samples, body = decode_update(env.payload)
            base = self._published_values() if self.cfg.delta else None
            values = decode_values(env.codec, body, self._sizes, base)
            if not np.all(np.isfinite(values)):
                return "malformed"
            self._add_update(values, float(samples))
        seen.add(want)
        if seen == expected:
            self.answered.add(node_id)
        self.uplink += len(payload)
        return None

    def _expected_kinds(self) -> set[Kind]:
        """What a node sends in this round: its mask, its values, or both (joint mode)."""
        if self.phase == "train":
            return {Kind.UPDATE}
        return {Kind.LOCAL_MASK, Kind.UPDATE} if self.cfg.mode == "joint" else {Kind.LOCAL_MASK}

    def _published_values(self) -> np.ndarray:
        """The alive values of the model the current round started from."""
        return self._w0_values if self.global_values is None else self.global_values

    def _vote_weight(self, node_id: str) -> float:
        return float(self.nodes[node_id].samples) if self.cfg.vote_weighting == "samples" else 1.0

    def _add_update(self, values: np.ndarray, weight: float) -> None:
        if self.cfg.aggregator == "fedavg":
            assert self._avg is not None
            self._avg.add(values, weight)
        else:  # robust rules need every update at once: O(nodes x values), by choice
            self._updates.append((values, weight))

    # -- time and round transitions ------------------------------------------------------

    def active_nodes(self) -> set[str]:
        return {n for n, info in self.nodes.items() if info.online}

    def tick(self) -> list[Publish]:
        """Advance on time or on answers; returns what to publish."""
        now = self.clock()
        if self.phase == "waiting":
            active = len(self.active_nodes())
            timed_out = now - self.started_waiting >= self.cfg.start_timeout
            if active >= self.cfg.min_nodes or (timed_out and active >= self.cfg.quorum):
                return self._open_round(1)
            if timed_out:
                return self._fail(f"only {active} node(s) joined within the start timeout "
                                  f"(need {self.cfg.quorum})")
            return []
        if self.phase not in ("mask", "train"):
            return []
        waiting_for = (self.expected & self.active_nodes()) - self.answered
        if self.answered and not waiting_for:
            return self._close_round()
        if now < self.deadline:
            return []
        if len(self.answered) >= self.cfg.quorum:
            return self._close_round()
        if self.attempts < self.cfg.retries:
            self.attempts += 1
            self.deadline = now + self.cfg.round_timeout
            self.expected = self.active_nodes()
            return [self.publish_state()]
        return self._fail(f"round {self.round} got {len(self.answered)} answer(s), below the "
                          f"quorum of {self.cfg.quorum}, after {self.attempts + 1} attempts")

    def _fail(self, message: str) -> list[Publish]:
        self.phase = "failed"
        self.error = message
        return [self.publish_state()]

    def _open_round(self, t: int) -> list[Publish]:
        out: list[Publish] = []
        self.round = t
        self.phase = "mask" if t <= self.cfg.mask_rounds else "train"
        if self.phase == "train" and self.global_values is None:
            # Training starts from the rewound, masked initial weights.
            self.global_values = self.unit_map.alive_values(self.w0, self.mask)
            out.append(self.publish_model(t - 1))
        self.answered = set()
        self._seen = {}
        self.expected = self.active_nodes()
        self.attempts = 0
        self.round_dropped = Counter()
        self.round_started = self.clock()
        self.deadline = self.round_started + self.cfg.round_timeout
        self._votes = VoteAccumulator(self.unit_map.n_units, self.cfg.vote_weighting == "samples")
        self._sizes = self.unit_map.layer_sizes(self.mask)
        self._avg = WeightedAverager(sum(self._sizes))
        self._updates = []
        self._uplink_at_open, self._downlink_at_open = self.uplink, self.downlink
        out.append(self.publish_state())
        return out

    def _close_round(self) -> list[Publish]:
        out: list[Publish] = []
        accuracy = loss = None
        if self.phase == "mask":
            assert self._votes is not None
            tally = self._votes.tally()
            previous = self.mask
            self.mask = consensus_mask(tally, self.mask, self.unit_map.slices, self.target(),
                                       self.cfg.consensus, self.history)
            self.history = self.history + tally.share
            out.append(self.publish_mask(self.round))
            if self.cfg.mode == "joint":
                # The average is over the units alive before this round's consensus; the
                # next round starts from it under the new mask.
                state = self.unit_map.state_from_values(self._average(), previous)
                self.global_values = self.unit_map.alive_values(state, self.mask)
                loss, accuracy = self.evaluate()
                out.append(self.publish_model(self.round))
        else:
            self.global_values = self._average()
            loss, accuracy = self.evaluate()
            out.append(self.publish_model(self.round))
        participants = sorted(self.answered)
        dense = 4 * self.unit_map.n_values * len(participants)
        self.log.append(RoundLog(
            self.round, self.phase, self.target(), self.sparsity(), participants,
            self.uplink - self._uplink_at_open, self.downlink - self._downlink_at_open, dense,
            accuracy, loss, self.clock() - self.round_started, dict(self.round_dropped),
        ))
        if self.round >= self.total_rounds:
            self.phase = "done"
            out.append(self.publish_state())
            return out
        return out + self._open_round(self.round + 1)

    def _average(self) -> np.ndarray:
        if self.cfg.aggregator == "fedavg":
            assert self._avg is not None
            return self._avg.result()
        vals, weights = zip(*self._updates, strict=True)
        return aggregate(self.cfg.aggregator, list(vals), list(weights))

    # -- results -------------------------------------------------------------------------

    def sparsity(self) -> float:
        """Fraction of prunable units pruned in the consensus."""
        return 1.0 - float(self.mask.mean()) if self.mask.size else 0.0

    def final_state(self) -> State:
        if self.global_values is None:
            return self.unit_map.apply(self.w0, self.mask)
        return self.unit_map.state_from_values(self.global_values, self.mask)

    def evaluate(self) -> tuple[float | None, float | None]:
        if self.eval_data is None:
            return None, None
        load_state(self.model, self.final_state())
        return evaluate(self.model, self.eval_data)

    def new_session(self) -> list[Publish]:
        """A new session id (nodes resend the open round's cached bytes) and a full catch-up.

        For a broker that lost its state (restarted without persistence): uploads in flight
        may be gone, and resent ones that did arrive are dropped as duplicates.
        """
        self.session = secrets.token_hex(4)
        return self.start()

    # -- checkpoints ---------------------------------------------------------------------

    @property
    def closed_round(self) -> int:
        return self.log[-1].round if self.log else 0

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and a JSON-able description of the state after the last closed round."""
        arrays = {"mask": self.mask.astype(bool), "history": np.asarray(self.history)}
        if self.global_values is not None:
            arrays["global_values"] = np.asarray(self.global_values, dtype=np.float32)
        status = self.phase if self.finished else "running"
        meta = {
            "version": SNAPSHOT_VERSION,
            "config": self.cfg.to_dict(),
            "fingerprint": self.unit_map.fingerprint.hex(),
            "run_id": self.run_id,
            "status": status,
            "round": self.round,
            "closed_round": self.closed_round,
            "error": self.error,
            "nodes": {n: dataclasses.asdict(info) for n, info in sorted(self.nodes.items())},
            "dropped": dict(sorted(self.dropped.items())),
            "uplink": self.uplink,
            "downlink": self.downlink,
            "log": [entry.to_dict() for entry in self.log],
        }
        return arrays, meta

    @classmethod
    def restore(
        cls,
        cfg: FederationConfig,
        arrays: Mapping[str, np.ndarray],
        meta: Mapping[str, Any],
        eval_data: Dataset | None = None,
        clock: Callable[[], float] = time.time,
    ) -> FederationServer:
        """A server in the state ``snapshot`` saw, with the next round open (new session)."""
        server = cls(cfg, eval_data, clock)
        if meta.get("version") != SNAPSHOT_VERSION:
            raise ModelError("unsupported checkpoint version", version=meta.get("version"))
        if meta.get("fingerprint") != server.unit_map.fingerprint.hex():
            raise ModelError("checkpoint is for another model or granularity",
                             fingerprint=meta.get("fingerprint"))
        try:
            mask = np.asarray(arrays["mask"]).astype(bool)
            history = np.asarray(arrays["history"], dtype=np.float64)
            server.unit_map.check_mask(mask)
            if history.shape != mask.shape:
                raise ModelError("checkpoint vote history does not match the mask")
            server.mask, server.history = mask, history
            server.run_id = str(meta["run_id"])
            if "global_values" in arrays:
                values = np.asarray(arrays["global_values"], dtype=np.float32)
                if values.shape != (sum(server.unit_map.layer_sizes(mask)),):
                    raise ModelError("checkpoint values do not match the mask")
                server.global_values = values
            server.nodes = {str(n): NodeInfo(int(d["samples"]), str(d.get("hardware", "unknown")),
                                             bool(d.get("online", True)))
                            for n, d in dict(meta.get("nodes", {})).items()}
            server.dropped = Counter({str(k): int(v) for k, v in meta["dropped"].items()})
            server.uplink, server.downlink = int(meta["uplink"]), int(meta["downlink"])
            server.log = [RoundLog.from_dict(d) for d in meta["log"]]
            status, closed = str(meta["status"]), int(meta["closed_round"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"malformed checkpoint: {exc}") from exc
        if closed != server.closed_round:
            raise ModelError("checkpoint round log is inconsistent", closed_round=closed)
        if status in ("done", "failed"):
            server.phase, server.round, server.error = status, int(meta["round"]), meta.get("error")
        elif closed >= server.total_rounds:
            server.phase, server.round = "done", closed
        elif closed > 0:
            server._open_round(closed + 1)  # start() publishes everything a node needs
        return server

    def require_success(self) -> None:
        if self.phase == "failed":
            raise FederationError(self.error or "federation failed", round=self.round)
