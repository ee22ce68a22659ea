"""Typed protocol documents: the state document and the training and model specs inside
it decode strictly, and every defect is a DocumentError naming the field, in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from mpfl.choices import (
    Granularity,
    LayerSparsity,
    Mode,
    ModelName,
    ModelScope,
    Optimizer,
    Phase,
)
from mpfl.choices import ValueCodecName as Codec
from mpfl.config.settings import FederationConfig
from mpfl.errors import DocumentError, ModelError, WireError
from mpfl.wire.protocol import StateDocument, decode_state
from mpfl.wire.specs import DEFAULT_TRAIN, ModelSpec, TrainSpec
from mpfl.wire.strict import checked

GOOD = StateDocument(
    protocol=1, federation="orchard", session="a1b2c3d4", run="0011223344556677",
    phase=Phase.MASK, round=2, mask_rounds=3, train_rounds=2, target_sparsity=0.25,
    layer_sparsity=LayerSparsity.UNIFORM,
    deadline=1700000000.5, model=ModelSpec(ModelName.MLP, {"image_size": 8}),
    granularity=Granularity.WEIGHT, fingerprint="0102030405060708",
    model_scope=ModelScope.DENSE, train=DEFAULT_TRAIN, value_codec=Codec.INT8,
    mode=Mode.REWIND, delta=False, error_feedback=True, error=None,
)

# Written out by hand: canonical JSON, keys sorted, no spaces; enum members as their names.
GOLDEN = (
    b'{"deadline":1700000000.5,"delta":false,"error":null,"error_feedback":true,'
    b'"federation":"orchard",'
    b'"fingerprint":"0102030405060708","granularity":"weight","layer_sparsity":"uniform",'
    b'"mask_rounds":3,'
    b'"mode":"rewind","model":{"args":{"image_size":8},"name":"mlp"},"model_scope":"dense",'
    b'"phase":"mask","protocol":1,"round":2,"run":"0011223344556677","session":"a1b2c3d4",'
    b'"target_sparsity":0.25,"train":{"batch_size":32,"epochs":1,"lr":0.05,"momentum":0.9,'
    b'"optimizer":"sgd","weight_decay":0.0},"train_rounds":2,"value_codec":"int8"}'
)


def test_state_document_golden_bytes_and_round_trip() -> None:
    assert GOOD.encode() == GOLDEN
    decoded = decode_state(GOLDEN)
    assert decoded == GOOD
    assert decoded.phase is Phase.MASK and decoded.train.optimizer is Optimizer.SGD
    assert decoded.mask_in_force == 1


def test_documents_are_frozen() -> None:
    with pytest.raises(AttributeError):
        GOOD.round = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        GOOD.train.lr = 1.0  # type: ignore[misc]


def _with(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, leaf = path.split(".")

    def change(doc: dict[str, Any]) -> None:
        for key in parents:
            doc = doc[key]
        doc[leaf] = value

    return change


def _without(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, leaf = path.split(".")

    def change(doc: dict[str, Any]) -> None:
        for key in parents:
            doc = doc[key]
        del doc[leaf]

    return change


DEFECTS = [
    (_with("round", "x"), "round: expected int, got str", "wrong-type"),
    (_with("round", True), "round: expected int, got bool", "wrong-type"),
    (_with("round", 1.0), "round: expected int, got float", "wrong-type"),
    (_with("round", -1), "round: expected int >= 0", "out-of-range"),
    (_with("round", 9), "round 9 is past the last round (5)", "invalid"),
    (_with("round", 0), "a mask phase needs a round >= 1", "invalid"),
    (_without("round"), "round: missing", "missing-field"),
    (_without("train.lr"), "train.lr: missing", "missing-field"),
    (_with("colour", "red"), "colour: unknown field", "unknown-field"),
    (_with("train.nesterov", True), "train.nesterov: unknown field", "unknown-field"),
    (_with("phase", "pause"), "phase: unknown value 'pause'", "unknown-value"),
    (_with("model.name", "vgg99"), "model.name: unknown value 'vgg99'", "unknown-value"),
    (_with("model.args", [1]), "model.args: expected object, got array", "wrong-type"),
    (_with("granularity", "channel"), "granularity: unknown value 'channel'",
     "unknown-value"),
    (_with("value_codec", "fp8"), "value_codec: unknown value 'fp8'", "unknown-value"),
    (_with("train.lr", 1e9), "train.lr: expected float <= 10.0", "out-of-range"),
    (_with("train.lr", 0), "train.lr: expected float > 0.0", "out-of-range"),
    (_with("train.epochs", 10**6), "train.epochs: expected int <= 1000", "out-of-range"),
    (_with("train.batch_size", 0), "train.batch_size: expected int >= 1", "out-of-range"),
    (_with("train.momentum", 1.0), "train.momentum: expected float < 1.0", "out-of-range"),
    (_with("train.optimizer", "lbfgs"), "train.optimizer: unknown value 'lbfgs'",
     "unknown-value"),
    (_with("target_sparsity", 1.0), "target_sparsity: expected float < 1.0", "out-of-range"),
    (_with("fingerprint", "xyz"),
     "fingerprint: expected str matching regex '^[0-9a-f]{16}$'", "out-of-range"),
    (_with("federation", "a/b"),
     "federation: expected str matching regex '^[A-Za-z0-9_-]{1,64}$'", "out-of-range"),
    (_with("delta", 1), "delta: expected bool, got int", "wrong-type"),
    (_with("protocol", 2), "protocol: version 2, this build speaks 1", "protocol-version"),
    (_without("protocol"), "protocol: version None, this build speaks 1",
     "protocol-version"),
    (_without("error"), "error: missing", "missing-field"),
]


@pytest.mark.parametrize(("change", "message", "reason"), DEFECTS)
def test_each_defect_is_a_document_error_naming_the_field(
    change: Callable[[dict[str, Any]], None], message: str, reason: str
) -> None:
    doc = json.loads(GOLDEN)
    change(doc)
    with pytest.raises(DocumentError) as info:
        decode_state(json.dumps(doc).encode())
    assert str(info.value) == f"server state: {message}"
    assert info.value.reason == reason and isinstance(info.value, WireError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"", "not-json"), (b"{", "not-json"), (b"\xff\xfe", "not-json"),
     (b'{"round": NaN}', "not-json"), (b"[" * 100_000 + b"]" * 100_000, "wrong-type"),
     (b'{"protocol": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not-json"),
     (b'{"protocol": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not-json"),
     (b"[1, 2]", "wrong-type"), (b"null", "wrong-type")],
)
def test_what_is_not_a_json_object_is_a_document_error(payload: bytes, reason: str) -> None:
    with pytest.raises(DocumentError) as info:
        decode_state(payload)
    assert info.value.reason == reason and str(info.value).startswith("server state: ")


def test_the_config_makes_the_train_spec_nodes_receive() -> None:
    cfg = FederationConfig(local_epochs=3, batch_size=16, lr=0.1, momentum=0.5,
                           weight_decay=1e-4, optimizer="adam")
    spec = cfg.train_spec
    assert spec == TrainSpec(3, 16, 0.1, 0.5, 1e-4, Optimizer.ADAM)
    assert checked(spec, "training settings") == spec
    assert spec.replace(batch_size=4) == TrainSpec(3, 4, 0.1, 0.5, 1e-4, Optimizer.ADAM)
    assert FederationConfig().train_spec == DEFAULT_TRAIN
    assert msgspec.json.decode(msgspec.json.encode(spec), type=TrainSpec) == spec


@pytest.mark.parametrize("doc", [None, [], {"name": 3}, {"args": {}}, {"name": "vgg99"},
                                 {"name": "mlp", "args": []}, {"name": "mlp", "extra": 1}])
def test_model_spec_from_saved_json_is_strict_too(doc: object) -> None:
    with pytest.raises(ModelError):
        ModelSpec.from_dict(doc)
