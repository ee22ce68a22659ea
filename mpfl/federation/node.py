"""An edge node's side of the protocol, free of I/O.

The node follows the retained ``server/state``, ``server/model`` and ``server/mask``.
Once it holds all three for the current round it does the round's work (train with the
consensus mask enforced, then propose a local mask or send its alive values) and returns
the messages to publish. A finished round is never trained twice: its bytes are kept and
only resent when a restarted coordinator (new session) asks for the same round again.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mpfl.errors import FingerprintMismatch, WireError
from mpfl.ml.data import Dataset
from mpfl.ml.masks import local_mask, unit_scores
from mpfl.ml.models import ModelSpec, ZooModel, build_model, parameter_count
from mpfl.ml.train import MaskEnforcer, TrainConfig, load_state, train_local
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
    PROTOCOL_VERSION,
    Hello,
    Publish,
    decode_json,
    encode_json,
    encode_update,
)


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
        self.state: dict[str, Any] | None = None
        self._model_env: Envelope | None = None
        self._mask_env: Envelope | None = None
        self._model: ZooModel | None = None
        self._unit_map: UnitMap | None = None
        self._spec_key = ""
        self.sent_bytes = 0
        self.received_bytes = 0
        self.last_metrics: dict[str, Any] = {}

    def _topic(self, name: str) -> str:
        return topics.node_topic(self.federation, self.node_id, name)

    def hello(self) -> Publish:
        import torch

        hello = Hello(self.node_id, len(self.data), self.hardware,
                      {"mpfl": "0.1.0", "torch": torch.__version__})
        return Publish(self._topic(topics.NODE_STATUS), hello.encode(), retain=True)

    @property
    def done(self) -> bool:
        return self.state is not None and self.state.get("phase") in ("done", "failed")

    # -- incoming ------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> list[Publish]:
        """Take one server message; returns what to publish (after training, if due)."""
        self.received_bytes += len(payload)
        name = topic.rsplit("/", 1)[-1]
        if name == topics.SERVER_STATE:
            doc = decode_json(payload, "server state")
            if doc.get("protocol") != PROTOCOL_VERSION:
                raise WireError("server speaks another protocol version", got=doc.get("protocol"))
            self.state = doc
            self._prepare(doc)
        elif name in (topics.SERVER_MODEL, topics.SERVER_MASK):
            kind = Kind.MODEL if name == topics.SERVER_MODEL else Kind.MASK
            env = decode_envelope(payload, expected_kind=kind)
            if kind is Kind.MODEL:
                self._model_env = env
            else:
                self._mask_env = env
        return self.work()

    def _prepare(self, doc: dict[str, Any]) -> None:
        """Build the named model once per spec and check it matches the coordinator's."""
        key = encode_json({"m": doc.get("model"), "g": doc.get("granularity")}).decode()
        if key == self._spec_key:
            return
        spec = ModelSpec.from_dict(doc.get("model") or {})
        model = build_model(spec)
        unit_map = build_unit_map(model, spec, str(doc.get("granularity")))
        if unit_map.fingerprint.hex() != doc.get("fingerprint"):
            raise FingerprintMismatch("this node builds a different model than the coordinator",
                                      node=self.node_id)
        if self.fit_batch is not None:
            wanted = self.batch_size or int((doc.get("train") or {}).get("batch_size", 32))
            self.batch_size = self.fit_batch(parameter_count(model), wanted)
        self._model, self._unit_map, self._spec_key = model, unit_map, key

    # -- the round's work ----------------------------------------------------------------

    def work(self) -> list[Publish]:
        doc = self.state
        if doc is None or doc.get("phase") not in ("mask", "train"):
            return []
        t = int(doc["round"])
        if self.finished is not None and self.finished.run != str(doc.get("run", "")):
            self.finished = None  # a new run of this federation: the cache is stale
        if self.finished is not None and self.finished.round == t:
            if self.finished.session == doc["session"]:
                return []
            self.finished.session = doc["session"]  # a restarted coordinator: resend as is
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
        if mask_env.round != min(t - 1, int(doc["mask_rounds"])):
            return []
        scope_is_mask = doc.get("model_scope") == "mask"
        if model_env.round != (t - 1 if scope_is_mask else 0):
            return []
        messages = self._do_round(doc, t, mask_env, model_env, scope_is_mask)
        self.finished = Finished(t, str(doc["session"]), messages, str(doc.get("run", "")))
        return messages

    def _do_round(
        self, doc: dict[str, Any], t: int, mask_env: Envelope, model_env: Envelope,
        scope_is_mask: bool,
    ) -> list[Publish]:
        unit_map, model = self._unit_map, self._model
        assert unit_map is not None and model is not None
        mask = decode_mask(mask_env.codec, mask_env.payload, unit_map.n_units)
        scope = mask if scope_is_mask else unit_map.full_mask()
        values = decode_values(model_env.codec, model_env.payload, unit_map.layer_sizes(scope))
        state = unit_map.state_from_values(values, scope)
        load_state(model, unit_map.apply(state, mask))
        enforcer = MaskEnforcer(model, unit_map, mask)
        train = dict(doc.get("train") or {})
        if self.batch_size is not None:
            train["batch_size"] = self.batch_size
        cfg = TrainConfig(**train)
        result = train_local(model, self.data, cfg, enforcer, seed=self.seed * 100_003 + t)
        trained = model_state(model)
        uploads: list[tuple[Kind, int, bytes]] = []
        if doc["phase"] == "mask":
            local = local_mask(unit_scores(trained, unit_map), mask, unit_map.slices,
                               float(doc["target_sparsity"]))
            mask_codec, payload = encode_mask(local, scope=mask)
            uploads.append((Kind.LOCAL_MASK, int(mask_codec), payload))
        if doc["phase"] == "train" or doc.get("mode") == "joint":
            # Alive under the mask in force (in joint mask rounds the coordinator re-scopes
            # the average to the new consensus itself).
            alive = unit_map.alive_values(trained, mask)
            base = values if doc.get("delta") else None
            value_codec, body = encode_values(alive, unit_map.layer_sizes(mask),
                                              str(doc.get("value_codec", "fp32")), base)
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
            "round": t, "phase": doc["phase"], "loss": result.loss, "accuracy": result.accuracy,
            "samples": result.samples, "train_seconds": result.seconds,
            "upload_bytes": upload_bytes, "sent_bytes": self.sent_bytes,
            "received_bytes": self.received_bytes, "max_rss_mb": peak_rss_mb(),
        }
        metrics = Publish(self._topic(topics.NODE_METRICS), encode_json(self.last_metrics), qos=0)
        return [*messages, metrics]


_UPLOAD_TOPIC = {Kind.LOCAL_MASK: topics.NODE_MASK, Kind.UPDATE: topics.NODE_UPDATE}


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

