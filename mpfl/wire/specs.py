"""The value objects the coordinator sends inside its state document: which model to
build (``ModelSpec``) and how to train it locally (``TrainSpec``).

Torch-free, so the config and the wire can hold and check them without importing the
model zoo. Both are frozen msgspec structs: decoding checks every type and range (see
``mpfl.wire.strict``); the constructor does not, so code that builds one from outside
input checks it with ``strict.checked``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec

from mpfl.choices import ModelName, Optimizer
from mpfl.errors import DocumentError, ModelError
from mpfl.wire.strict import convert_document

# Ranges a sane federation stays within: a learning rate of 1e6 or a million local epochs
# is a mistake or an attack on the nodes, never a setting.
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 1 << 20
MAX_LR = 10.0


class ModelSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A zoo architecture and its arguments: what travels instead of code.

    The name must be one of the zoo's (``ModelName``); the arguments are checked only when
    the zoo (torch) builds the model, which raises ``ModelError`` for bad ones.
    """

    name: ModelName
    args: dict[str, Any] = msgspec.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "args": self.args}, sort_keys=True)

    @staticmethod
    def from_dict(data: Any) -> ModelSpec:
        """A spec from a saved model's JSON; ``ModelError`` (naming the field) if malformed."""
        try:
            return convert_document(data, ModelSpec, "model spec")
        except DocumentError as exc:
            raise ModelError(str(exc)) from None


class TrainSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Local training settings: ``FederationConfig.train_spec`` makes them, the state
    document carries them, ``mpfl.ml.train.train_local`` follows them.

    Every field is required on the wire (a node never trains on a guessed learning rate);
    in code, start from ``DEFAULT_TRAIN`` and ``replace`` what differs.
    """

    epochs: Annotated[int, msgspec.Meta(ge=1, le=MAX_EPOCHS)]
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH_SIZE)]
    lr: Annotated[float, msgspec.Meta(gt=0.0, le=MAX_LR)]
    momentum: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)]
    weight_decay: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)]
    optimizer: Optimizer

    def replace(self, **changes: Any) -> TrainSpec:
        """The same settings with ``changes`` (e.g. a device's own batch size)."""
        return msgspec.structs.replace(self, **changes)


# The defaults of a federation's config keys (local_epochs, batch_size, lr, ...).
DEFAULT_TRAIN = TrainSpec(epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0,
                          optimizer=Optimizer.SGD)
