"""An edge node's side of the protocol, free of I/O.

The node follows the retained ``server/state``, ``server/model`` and ``server/mask``.
Once it holds all three for the current round it does the round's work (train with the
consensus mask enforced, then propose a local mask or send its alive values) and returns
the messages to publish. A finished round is never trained twice: its bytes are kept and
only resent when a restarted coordinator (new session) asks for the same round again.

A node never dies on a server message it cannot use (not JSON, another protocol version,
an unknown, missing or mistyped field, a value out of range, a model it cannot build, a
fingerprint it does not reproduce, an envelope that does not decode): it counts it in
``rejected`` by reason, logs it (the first of each reason, then rate-limited summaries:
``mpfl.federation.rejections``), keeps its last good state and waits for the next.
"""

from __future__ import annotations

import logging
import resource
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpfl.choices import Granularity, Mode, ModelScope, Phase
from mpfl.errors import DocumentError, FingerprintMismatch, ModelError, WireError
from mpfl.federation.feedback import ErrorFeedback
from mpfl.federation.rejections import RejectionLog
from mpfl.maths.layer_sparsity import get_allocation
from mpfl.ml.data import Dataset
from mpfl.ml.masks import local_mask, unit_scores
from mpfl.ml.models import ModelSpec, ZooModel, build_model, parameter_count
from mpfl.ml.train import MaskEnforcer, check_fits, load_state, train_local
from mpfl.ml.units import UnitMap, build_unit_map, model_state
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
from mpfl.wire.protocol import (
    Hello,
    Progress,
    Publish,
    StateDocument,
    decode_state,
    encode_json,
    encode_update,
)

log = logging.getLogger(__name__)


@dataclass
class Finished:
    """A round this node completed, and the exact bytes it sent for it.

    ``run`` names the coordinator's run (stable across its restarts): a cached round of an
    earlier run with the same federation name must not stop this node from taking part.
    """

    round: int
    session: str
    messages: list[Publish]
    run: str = ""


class FederationNode:
    def __init__(
        self,
        node_id: str,
        federation: str,
        data: Dataset,
        hardware: str = "unknown",
        seed: int = 0,
        batch_size: int | None = None,
        finished: Finished | None = None,
        fit_batch: Callable[[int, int], int] | None = None,
    ) -> None:
        """``fit_batch(parameters, batch_size)`` is the device's memory guard: the batch
        size it can afford for a model of that many parameters, or HardwareError."""
        self.node_id = topics.validate_node_id(node_id)
        self.federation = federation
        self.data = data
        self.hardware = hardware
        self.seed = seed
        self.batch_size = batch_size  # a hardware profile's override, else the server's
        self.finished = finished
        self.fit_batch = fit_batch
        self.state: StateDocument | None = None  # the last good one
        self.rejected: Counter[str] = Counter()  # server messages dropped, by reason
        # One line for the first drop of each reason, then periodic summaries: a flood of
        # bad messages must not flood the device's log.
        self.rejections = RejectionLog(log.warning, f"node {self.node_id}")
        self._model_env: Envelope | None = None
        self._mask_env: Envelope | None = None
        self._model: ZooModel | None = None
        self._unit_map: UnitMap | None = None
        self._built_for: tuple[ModelSpec, Granularity] | None = None
        self.sent_bytes = 0
        self.received_bytes = 0
        self.last_metrics: dict[str, Any] = {}
        # Hears of each local epoch while a round trains (the agent publishes it on
        # nodes/<id>/progress; the in-process simulation hands it to its live view).
        self.on_progress: Callable[[Progress], None] | None = None
        self.feedback = ErrorFeedback()

    def _topic(self, name: str) -> str:
        return topics.node_topic(self.federation, self.node_id, name)

    def hello(self) -> Publish:
        import torch

        hello = Hello(self.node_id, len(self.data), self.hardware,
                      {"mpfl": "0.1.0", "torch": str(torch.__version__)})
        return Publish(self._topic(topics.NODE_STATUS), hello.encode(), retain=True)

    @property
    def done(self) -> bool:
        return self.state is not None and self.state.phase.is_final

    # -- incoming ------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> list[Publish]:
        """Take one server message; returns what to publish (after training, if due).

        A message this node cannot use is counted, logged and dropped (see the module
        docstring); only a device that cannot hold the model (HardwareError) stops it.
        """
        self.received_bytes += len(payload)
        name = topic.rsplit("/", 1)[-1]
        try:
            if name == topics.SERVER_STATE:
                self._take_state(decode_state(payload))
            elif name in (topics.SERVER_MODEL, topics.SERVER_MASK):
                kind = Kind.MODEL if name == topics.SERVER_MODEL else Kind.MASK
                env = decode_envelope(payload, expected_kind=kind)
                if kind is Kind.MODEL:
                    self._model_env = env
                else:
                    self._mask_env = env
        except (WireError, ModelError) as exc:
            self._reject(topic, _reason(exc), exc)
            return []
        try:
            return self.work()
        except (WireError, ModelError) as exc:  # a model or mask payload that does not fit
            self._reject(topic, "payload", exc)
            return []

    def _reject(self, topic: str, reason: str, exc: Exception) -> None:
        self.rejected[reason] += 1
        self.rejections.note(reason, topic, str(exc))

    def record_drop(self, reason: str, count: int = 1, where: str = "",
                    detail: str = "") -> None:
        """Count server messages dropped before they reached ``handle`` (by the transport,
        or by the signing gate, which knows the topic and the detail)."""
        if count > 0:
            self.rejected[reason] += count
            self.rejections.note(reason, where, detail, count)

    def _take_state(self, doc: StateDocument) -> None:
        """Adopt a decoded state document once this node can follow it."""
        if doc.federation != self.federation:
            raise DocumentError("server state", f"{doc.federation!r}, this node is in "
                                f"{self.federation!r}", field="federation",
                                reason="wrong-federation")
        self._prepare(doc)
        self.state = doc

    def _prepare(self, doc: StateDocument) -> None:
        """Build the named model once per spec and check it matches the coordinator's."""
        if self._built_for == (doc.model, doc.granularity):
            assert self._unit_map is not None
            if self._unit_map.fingerprint.hex() != doc.fingerprint:
                raise FingerprintMismatch("the coordinator's fingerprint changed for the same "
                                          "model", node=self.node_id, got=doc.fingerprint)
            return
        model = build_model(doc.model)
        unit_map = build_unit_map(model, doc.model, doc.granularity)
        if unit_map.fingerprint.hex() != doc.fingerprint:
            raise FingerprintMismatch("this node builds a different model than the coordinator",
                                      node=self.node_id, got=doc.fingerprint,
                                      expected=unit_map.fingerprint.hex())
        check_fits(model, self.data)
        if self.fit_batch is not None:
            wanted = self.batch_size or doc.train.batch_size
            self.batch_size = self.fit_batch(parameter_count(model), wanted)
        self._model, self._unit_map = model, unit_map
        self._built_for = (doc.model, doc.granularity)

    # -- the round's work ----------------------------------------------------------------

    def work(self) -> list[Publish]:
        doc = self.state
        if doc is None or not doc.phase.is_round:
            return []
        t = doc.round
        if self.finished is not None and self.finished.run != doc.run:
            self.finished = None  # a new run of this federation: the cache is stale
        if self.finished is not None and self.finished.round == t:
            if self.finished.session == doc.session:
                return []
            self.finished.session = doc.session  # a restarted coordinator: resend as is
            return list(self.finished.messages)
        if self.finished is not None and self.finished.round > t:
            return []
        mask_env, model_env = self._mask_env, self._model_env
        if mask_env is None or model_env is None or self._unit_map is None:
            return []
        fp = self._unit_map.fingerprint
        if mask_env.fingerprint != fp or model_env.fingerprint != fp:
            return []  # retained messages of an earlier federation: wait for fresh ones
        # The mask in force is the one closed by the previous round; the model must be the
        # one published for this phase (dense w0 in mask rounds, alive values in training).
        if mask_env.round != doc.mask_in_force:
            return []
        scope_is_mask = doc.model_scope == ModelScope.MASK
        if model_env.round != (t - 1 if scope_is_mask else 0):
            return []
        messages = self._do_round(doc, mask_env, model_env, scope_is_mask)
        self.finished = Finished(t, doc.session, messages, doc.run)
        return messages

    def _decode_inputs(
        self, unit_map: UnitMap, mask_env: Envelope, model_env: Envelope, scope_is_mask: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The mask in force and the published values; an undecodable one is forgotten, so
        the node waits for the coordinator's next rather than failing on it again."""
        try:
            mask = decode_mask(mask_env.codec, mask_env.payload, unit_map.n_units)
        except (WireError, ModelError):
            self._mask_env = None
            raise
        scope = mask if scope_is_mask else unit_map.full_mask()
        try:
            values = decode_values(model_env.codec, model_env.payload,
                                   unit_map.layer_sizes(scope))
        except (WireError, ModelError):
            self._model_env = None
            raise
        return mask, values

    def _do_round(
        self, doc: StateDocument, mask_env: Envelope, model_env: Envelope, scope_is_mask: bool,
    ) -> list[Publish]:
        unit_map, model, t = self._unit_map, self._model, doc.round
        assert unit_map is not None and model is not None
        mask, values = self._decode_inputs(unit_map, mask_env, model_env, scope_is_mask)
        scope = mask if scope_is_mask else unit_map.full_mask()
        state = unit_map.state_from_values(values, scope)
        load_state(model, unit_map.apply(state, mask))
        enforcer = MaskEnforcer(model, unit_map, mask)
        spec = doc.train if self.batch_size is None else doc.train.replace(
            batch_size=self.batch_size)
        result = train_local(model, self.data, spec, enforcer, seed=self.seed * 100_003 + t,
                             on_epoch=self._epoch_reporter(t))
        trained = model_state(model)
        uploads: list[tuple[Kind, int, bytes]] = []
        if doc.phase == Phase.MASK:
            local = local_mask(unit_scores(trained, unit_map), mask, unit_map.slices,
                               doc.target_sparsity,
                               allocation=get_allocation(doc.layer_sparsity))
            mask_codec, payload = encode_mask(local, scope=mask)
            uploads.append((Kind.LOCAL_MASK, int(mask_codec), payload))
        if doc.phase == Phase.TRAIN or doc.mode == Mode.JOINT:
            # Alive under the mask in force (in joint mask rounds the coordinator re-scopes
            # the average to the new consensus itself).
            alive = unit_map.alive_values(trained, mask)
            base = values if doc.delta else None
            sizes = unit_map.layer_sizes(mask)
            if doc.error_feedback:
                value_codec, body = self.feedback.encode(alive, sizes, doc.value_codec, base,
                                                         doc.mask_in_force)
            else:
                value_codec, body = encode_values(alive, sizes, doc.value_codec, base)
            uploads.append((Kind.UPDATE, int(value_codec), encode_update(len(self.data), body)))
        messages = [
            Publish(self._topic(_UPLOAD_TOPIC[kind]),
                    encode_envelope(Envelope(kind, t, unit_map.fingerprint, self.node_id, codec,
                                             payload)), qos=1)
            for kind, codec, payload in uploads
        ]
        upload_bytes = sum(len(m.payload) for m in messages)
        self.sent_bytes += upload_bytes
        self.last_metrics = {
            "round": t, "phase": doc.phase, "loss": result.loss, "accuracy": result.accuracy,
            "samples": result.samples, "train_seconds": result.seconds,
            "upload_bytes": upload_bytes, "sent_bytes": self.sent_bytes,
            "received_bytes": self.received_bytes, "max_rss_mb": peak_rss_mb(),
        }
        metrics = Publish(self._topic(topics.NODE_METRICS), encode_json(self.last_metrics), qos=0)
        return [*messages, metrics]


    def _epoch_reporter(self, t: int) -> Callable[[int, int], None] | None:
        report = self.on_progress
        if report is None:
            return None
        return lambda done, epochs: report(Progress(t, done, epochs))

    def progress_message(self, progress: Progress) -> Publish:
        """``progress`` on this node's progress topic (QoS 0: a lost one is superseded)."""
        return Publish(self._topic(topics.NODE_PROGRESS), progress.encode(), qos=0)


_UPLOAD_TOPIC = {Kind.LOCAL_MASK: topics.NODE_MASK, Kind.UPDATE: topics.NODE_UPDATE}


def _reason(exc: WireError | ModelError) -> str:
    """The counter key of a server message this node could not take."""
    if isinstance(exc, DocumentError):
        return exc.reason  # wrong-type, missing-field, protocol-version, ...
    if isinstance(exc, FingerprintMismatch):
        return "fingerprint"
    if isinstance(exc, ModelError):
        return "model"  # a spec the zoo cannot build
    return "envelope"


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM: unlike ru_maxrss, not inherited
    from whatever process started this one)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

