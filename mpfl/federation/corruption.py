"""Hostile nodes for the in-process simulation only: what a node sends, corrupted.

The data corruptions (shuffled pixels, permuted labels) live in ``mpfl.ml.robustness``:
those nodes train honestly on bad data. These are nodes that lie about what they trained:
:class:`CorruptedNode` wraps a real :class:`FederationNode`, lets it do the round, then
rewrites its uploads before they leave, as a compromised device would. The edge agent
never uses it; it exists so the robust aggregation rules can be measured against
attacks on the values and the masks themselves.

- ``random-mask``: the honest local mask's kept units shuffled at random among the units
  alive in the mask in force (same count, no information).
- ``scale``: the sent values multiplied by 100.
- ``sign-flip``: the sent values negated.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from mpfl.errors import ConfigError
from mpfl.federation.node import FederationNode
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
from mpfl.wire.protocol import Publish, decode_update, encode_update

VALUE_FACTORS: Mapping[str, float] = MappingProxyType({"scale": 100.0, "sign-flip": -1.0})
CORRUPTIONS = ("random-mask", *VALUE_FACTORS)


class CorruptedNode:
    """A node whose uploads are rewritten by ``kind`` (one of :data:`CORRUPTIONS`)."""

    def __init__(self, node: FederationNode, kind: str, seed: int = 0) -> None:
        if kind not in CORRUPTIONS:
            raise ConfigError(f"unknown corruption '{kind}' (known: {', '.join(CORRUPTIONS)})")
        self.node = node
        self.kind = kind
        self.rng = np.random.default_rng(seed)

    def __getattr__(self, name: str) -> Any:
        # Everything but what it sends is the honest node's (id, federation, counters).
        return getattr(self.node, name)

    @property
    def node_id(self) -> str:
        return self.node.node_id

    def hello(self) -> Publish:
        return self.node.hello()

    def handle(self, topic: str, payload: bytes) -> list[Publish]:
        return [self._corrupt(m) for m in self.node.handle(topic, payload)]

    def _inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """The mask in force and the published values of the round just done."""
        node = self.node
        assert node._unit_map is not None and node._mask_env is not None
        assert node._model_env is not None and node.state is not None
        scope_is_mask = node.state.model_scope == "mask"
        return node._decode_inputs(node._unit_map, node._mask_env, node._model_env,
                                   scope_is_mask)

    def _corrupt(self, message: Publish) -> Publish:
        name = message.topic.rsplit("/", 1)[-1]
        wants = topics.NODE_MASK if self.kind == "random-mask" else topics.NODE_UPDATE
        if name != wants:
            return message
        env = decode_envelope(message.payload)
        unit_map, state = self.node._unit_map, self.node.state
        assert unit_map is not None and state is not None
        mask, published = self._inputs()
        if env.kind is Kind.LOCAL_MASK:
            local = decode_mask(env.codec, env.payload, unit_map.n_units, scope=mask)
            alive = np.flatnonzero(mask)
            fake = np.zeros_like(local)
            fake[self.rng.choice(alive, size=int(local.sum()), replace=False)] = True
            mask_codec, payload = encode_mask(fake, scope=mask)
            codec = int(mask_codec)
        else:
            samples, body = decode_update(env.payload)
            sizes = unit_map.layer_sizes(mask)
            base = published if state.delta else None
            values = decode_values(env.codec, body, sizes, base)
            values = (values * np.float32(VALUE_FACTORS[self.kind])).astype(np.float32)
            value_codec, coded = encode_values(values, sizes, state.value_codec, base)
            codec, payload = int(value_codec), encode_update(samples, coded)
        forged = Envelope(env.kind, env.round, env.fingerprint, env.node_id, codec, payload)
        return Publish(message.topic, encode_envelope(forged), message.retain, message.qos)
