"""Every named choice of mpfl, one ``StrEnum`` each: the one source of their names.

Config validation, command-line ``click.Choice`` lists, the protocol documents and the
registries of variants (consensus rules, aggregators, schedules, optimizers, the model
zoo) all derive from these enums, so a name is spelled once. A ``StrEnum`` member *is*
its string (``Phase.MASK == "mask"``, ``json.dumps`` writes ``"mask"``), which keeps
the wire format and the config files unchanged.

Enums whose plain name is taken by the callable they select are called ``...Name``
(``ConsensusName`` picks a ``ConsensusRule``). Standard library only: every layer may
import this module, a Pi Zero running only inference included.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AggregatorName",
    "ConsensusName",
    "Granularity",
    "LogFormat",
    "Mode",
    "ModelName",
    "ModelScope",
    "Optimizer",
    "Phase",
    "ScheduleName",
    "ServerOptimizerName",
    "ValueCodecName",
    "VoteWeighting",
    "names",
]


class Phase(StrEnum):
    """Where a federation is: the coordinator's state machine, as the state document says."""

    WAITING = "waiting"
    MASK = "mask"
    TRAIN = "train"
    DONE = "done"
    FAILED = "failed"

    @property
    def is_round(self) -> bool:
        """A phase in which nodes train and upload."""
        return self in (Phase.MASK, Phase.TRAIN)

    @property
    def is_final(self) -> bool:
        return self in (Phase.DONE, Phase.FAILED)


class Mode(StrEnum):
    """rewind: mask rounds restart from w0 (reference code); joint: they also average."""

    REWIND = "rewind"
    JOINT = "joint"


class Granularity(StrEnum):
    """The prunable unit: a whole filter/neuron, or a single weight."""

    FILTER = "filter"
    WEIGHT = "weight"


class ConsensusName(StrEnum):
    """Rules turning the nodes' votes into the global mask (``mpfl.maths.consensus``)."""

    TOP_VOTES = "top-votes"
    THRESHOLD_SCAN = "threshold-scan"
    MAJORITY = "majority"


class AggregatorName(StrEnum):
    """How the coordinator combines the nodes' values (``mpfl.maths.aggregate``)."""

    FEDAVG = "fedavg"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed-mean"
    NORM_CLIP = "norm-clip"
    NEAREST_MEDIAN = "nearest-median"
    MEDIAN_OUTLIERS = "median-outliers"


class ScheduleName(StrEnum):
    """Target sparsity per mask round (``mpfl.maths.schedules``)."""

    LINEAR = "linear"
    GEOMETRIC = "geometric"
    CUBIC = "cubic"


class LayerSparsity(StrEnum):
    """How a round's sparsity is shared among layers (``mpfl.maths.layer_sparsity``)."""

    UNIFORM = "uniform"
    INVERSE_SQRT = "inverse-sqrt"


class ValueCodecName(StrEnum):
    """How nodes send alive values; ``mpfl.wire.values.ValueCodec`` holds their wire ids."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"
    INT4_DEFLATE = "int4-deflate"


class ServerOptimizerName(StrEnum):
    """How the coordinator steps from the global values to the nodes' average in training
    rounds (``mpfl.maths.server_optimizers``): take it (FedAvg), or with momentum."""

    NONE = "none"
    FEDAVGM = "fedavgm"


class Optimizer(StrEnum):
    SGD = "sgd"
    ADAM = "adam"


class VoteWeighting(StrEnum):
    """Each node's vote counts the same, or by its sample count."""

    UNIFORM = "uniform"
    SAMPLES = "samples"


class LogFormat(StrEnum):
    """How log records look: plain or rich text, or one JSON object per line."""

    TEXT = "text"
    JSON = "json"


class ModelScope(StrEnum):
    """What ``server/model`` holds: the dense w0, or the alive values under the mask."""

    DENSE = "dense"
    MASK = "mask"


class ModelName(StrEnum):
    """The model zoo's names: architectures and presets (``mpfl.ml.models``, torch).

    Kept here so config and the wire can check a name without importing torch; a test
    checks that the zoo and these names agree.
    """

    MLP = "mlp"
    LENET5 = "lenet5"
    CNN_CIFAR = "cnn-cifar"
    RESNET = "resnet"
    RESNET8 = "resnet8"
    RESNET20 = "resnet20"


def names(choice: type[StrEnum]) -> tuple[str, ...]:
    """The names of a choice, in declaration order (for help texts and ``click.Choice``)."""
    return tuple(member.value for member in choice)
