"""Federation configuration: one TOML file, every key overridable by env and by flag.

Precedence, lowest first: defaults, the TOML file, ``MPFL_<KEY>`` environment variables
(``final_sparsity`` -> ``MPFL_FINAL_SPARSITY``), command-line flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mpfl.choices import (
    AggregatorName,
    ConsensusName,
    Granularity,
    LayerSparsity,
    Mode,
    ModelName,
    Optimizer,
    ScheduleName,
    ServerOptimizerName,
    ValueCodecName,
    VoteWeighting,
    names,
)
from mpfl.errors import ConfigError, DocumentError
from mpfl.wire.specs import DEFAULT_TRAIN, ModelSpec, TrainSpec
from mpfl.wire.strict import checked
from mpfl.wire.topics import validate_name

# Keys whose value is one of a fixed set of names, and the enum that lists them.
CHOICES: dict[str, type[StrEnum]] = {
    "model": ModelName,
    "granularity": Granularity,
    "schedule": ScheduleName,
    "layer_sparsity": LayerSparsity,
    "consensus": ConsensusName,
    "vote_weighting": VoteWeighting,
    "mode": Mode,
    "optimizer": Optimizer,
    "value_codec": ValueCodecName,
    "aggregator": AggregatorName,
    "server_optimizer": ServerOptimizerName,
}
# TrainSpec's field names as config keys, so a range error names the key a user sets.
_TRAIN_KEYS = {"epochs": "local_epochs"}

KEY_HELP = {
    "federation": "Federation name: the MQTT topic prefix is mpfl/v1/<federation>.",
    "model": "Zoo model (see `mpfl models`).",
    "model_args": "Model arguments as JSON, e.g. '{\"image_size\": 8}'.",
    "granularity": "Prunable unit: a whole filter/neuron or a single weight.",
    "final_sparsity": "Fraction of units pruned after the last mask round.",
    "schedule": "Sparsity per mask round: linear, geometric or cubic.",
    "layer_sparsity": "How each round's sparsity is shared among layers: uniform, or "
                      "inverse-sqrt (small layers stay denser).",
    "consensus": "Rule turning the nodes' votes into the global mask.",
    "vote_weighting": "Weigh each node's vote equally or by its sample count.",
    "vote_agreement": "Down-weight voters whose mask disagrees with the round's majority.",
    "mask_rounds": "Rounds of mask consensus (phase M).",
    "train_rounds": "Rounds of masked federated training (phase T).",
    "mode": "rewind: mask rounds restart from w0 (reference); joint: they also average.",
    "local_epochs": "Local epochs per round on each node.",
    "batch_size": "Local batch size (a node's hardware profile may lower it).",
    "lr": "Local learning rate.",
    "momentum": "SGD momentum.",
    "weight_decay": "L2 weight decay.",
    "optimizer": "sgd or adam.",
    "value_codec": "How nodes send alive values: fp32, fp16, int8 or int4 per-layer scale, "
                   "or int4-deflate (int4 levels, entropy-coded).",
    "delta": "Send values as deltas from the global model.",
    "error_feedback": "Nodes add last round's quantisation error to their next upload.",
    "server_optimizer": "Training rounds: take the average (none) or step with momentum.",
    "server_momentum": "Momentum of the fedavgm server optimizer.",
    "aggregator": "fedavg (streaming); median, trimmed-mean, norm-clip, nearest-median, "
                  "median-outliers (buffered).",
    "trim": "Fraction of bad nodes tolerated (>= bad nodes / nodes): trimmed-mean cuts it "
            "on each side, nearest-median drops it farthest from the median, "
            "median-outliers drops up to it, only outliers in that distance.",
    "max_samples": "Cap on the sample count a node may claim (FedAvg and vote weight).",
    "min_nodes": "Nodes to wait for before round 1.",
    "quorum": "Fewest answers with which a round may close at its deadline.",
    "round_timeout": "Seconds a round waits for answers before its deadline.",
    "start_timeout": "Seconds to wait for min_nodes; then start with a quorum or fail.",
    "retries": "Times a round below quorum is extended before the run fails.",
    "seed": "Seed of the initial weights w0 (and of simulated partitions).",
    "eval_dataset": "Dataset whose test split the coordinator evaluates on.",
    "eval_data_dir": "Directory of that dataset.",
}


@dataclass(frozen=True)
class FederationConfig:
    """Every setting of a federation. Keys with a fixed set of names (``CHOICES``) hold the
    name as a plain string, as a TOML file spells it; ``validate`` checks it against its
    enum, and ``train_spec`` / ``model_spec`` give the typed values the wire carries."""

    federation: str = "default"
    # model and pruning
    model: str = ModelName.LENET5.value
    model_args: dict[str, Any] = field(default_factory=dict)
    granularity: str = Granularity.FILTER.value
    final_sparsity: float = 0.5
    # Joint mask rounds (mode) train as they prune, so training does not restart from w0 at
    # the final mask; the cubic schedule prunes most in the first rounds, so the values that
    # travel with each vote soon get few. inverse-sqrt keeps small layers denser (at 90%,
    # uniform leaves LeNet-5's first convolution 15 weights). See value_codec below.
    schedule: str = ScheduleName.CUBIC.value
    layer_sparsity: str = LayerSparsity.INVERSE_SQRT.value
    consensus: str = ConsensusName.TOP_VOTES.value
    vote_weighting: str = VoteWeighting.UNIFORM.value
    vote_agreement: bool = False
    mask_rounds: int = 5
    train_rounds: int = 5
    mode: str = Mode.JOINT.value
    # local training, sent to the nodes with every round (as a TrainSpec)
    local_epochs: int = DEFAULT_TRAIN.epochs
    batch_size: int = DEFAULT_TRAIN.batch_size
    lr: float = DEFAULT_TRAIN.lr
    momentum: float = DEFAULT_TRAIN.momentum
    weight_decay: float = DEFAULT_TRAIN.weight_decay
    optimizer: str = DEFAULT_TRAIN.optimizer.value
    # wire and aggregation. Deflated int4 deltas with error feedback and the mask rounds
    # above: under half a bit per parameter at 90% weight sparsity, within 1 pt of dense
    # FedAvg on MNIST and Fashion-MNIST over three seeds (BENCHMARKS.md, Learning).
    # PLAIN_MPFL undoes them.
    value_codec: str = ValueCodecName.INT4_DEFLATE.value
    delta: bool = True
    error_feedback: bool = True
    aggregator: str = AggregatorName.FEDAVG.value
    # A claim above it is clamped, not refused: an honest large node keeps taking part,
    # and no node weighs more than this many samples (a forged hello claimed 2^32 - 1).
    max_samples: int = 100_000
    trim: float = 0.1
    # Server momentum (fedavgm) bought nothing with joint mask rounds on LeNet-5 and, by
    # doubling the step, overfitted CIFAR-10 within 40 rounds; plain averaging is the default.
    server_optimizer: str = ServerOptimizerName.NONE.value
    server_momentum: float = 0.5
    # rounds
    min_nodes: int = 2
    quorum: int = 1
    round_timeout: float = 120.0
    start_timeout: float = 300.0
    retries: int = 2
    seed: int = 0
    # evaluation on the coordinator (optional)
    eval_dataset: str = ""
    eval_data_dir: str = ""

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec(ModelName(self.model), dict(self.model_args))

    @property
    def train_spec(self) -> TrainSpec:
        """The local training settings every node receives with each round."""
        return TrainSpec(epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr,
                         momentum=self.momentum, weight_decay=self.weight_decay,
                         optimizer=Optimizer(self.optimizer))

    def validate(self) -> FederationConfig:
        """Check every value now, so a bad one fails at start-up, not in round 3."""
        validate_name(self.federation, what="federation name")
        for key, choice in CHOICES.items():
            if getattr(self, key) not in names(choice):
                raise ConfigError(f"{key} must be one of {'|'.join(names(choice))}",
                                  value=getattr(self, key))
        try:  # the ranges a node accepts are TrainSpec's own
            checked(self.train_spec, "training settings")
        except DocumentError as exc:
            key = _TRAIN_KEYS.get(exc.field, exc.field)
            raise ConfigError(f"{key}: {exc.problem}") from None
        checks = [
            (0.0 <= self.final_sparsity < 1.0, "final_sparsity must be in [0, 1)"),
            (self.mask_rounds >= 0 and self.train_rounds >= 0, "rounds must be >= 0"),
            (self.mask_rounds + self.train_rounds > 0, "there must be at least one round"),
            (self.min_nodes >= 1, "min_nodes must be >= 1"),
            (1 <= self.quorum <= self.min_nodes, "quorum must be between 1 and min_nodes"),
            (self.round_timeout > 0, "round_timeout must be > 0"),
            (self.start_timeout > 0, "start_timeout must be > 0"),
            (self.retries >= 0, "retries must be >= 0"),
            (0.0 <= self.trim < 0.5, "trim must be in [0, 0.5)"),
            (0.0 <= self.server_momentum < 1.0, "server_momentum must be in [0, 1)"),
            (1 <= self.max_samples <= 0xFFFF_FFFF, "max_samples must be in [1, 2^32 - 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(FederationConfig)}

PLAIN_MPFL: dict[str, Any] = {
    "mode": Mode.REWIND.value, "schedule": ScheduleName.LINEAR.value,
    "layer_sparsity": LayerSparsity.UNIFORM.value, "delta": False, "error_feedback": False,
    "server_optimizer": ServerOptimizerName.NONE.value}
"""MPFL as the paper's reference code runs it: mask rounds rewind to w0 on a linear
schedule, every layer is pruned as far, and the values themselves are averaged (no
deltas, no error feedback, no server momentum). For runs that measure something else than
accuracy for bytes (round times, traffic, aggregation rules), so their figures do not move
with the defaults."""


def _field_name(key: str, source: str) -> str:
    name = key.replace("-", "_")
    if name not in _FIELDS:
        raise ConfigError(f"unknown config key '{key}'", source=source)
    return name


def _coerce(key: str, value: Any, source: str | None = None) -> Any:
    """Convert a TOML, env or flag value to the field's type, or say which key is wrong.

    Strings (env, flags) are parsed; typed TOML values must already have the right kind:
    ``true`` is not a round count and ``["a"]`` is not a model name.
    """
    default = _FIELDS[key].default
    if default is dataclasses.MISSING:  # model_args, a dict
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ConfigError(f"{key} must be a JSON object", value=value,
                                  source=source) from exc
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table / JSON object", value=value, source=source)
        return value
    kind = type(default)
    try:
        if isinstance(value, str):
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return kind(value.strip()) if kind is not str else value
        accepted = {bool: (bool,), int: (int,), float: (int, float), str: ()}[kind]
        if isinstance(value, bool) and kind is not bool or not isinstance(value, accepted):
            raise TypeError(value)
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} must be {kind.__name__}", value=value, source=source) from exc


class Origin(StrEnum):
    """Where a key's effective value came from, lowest precedence first."""

    DEFAULT = "default"
    FILE = "file"
    ENV = "env"
    FLAG = "flag"


@dataclass(frozen=True)
class ValueSource:
    origin: Origin
    where: str = ""  # the file, variable or flag that set it

    def __str__(self) -> str:
        return f"{self.origin} {self.where}".strip()


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FederationConfig:
    return load_config_with_sources(path, overrides, environ)[0]


def load_config_with_sources(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[FederationConfig, dict[str, ValueSource]]:
    """The effective config and, for each key, what set it (``mpfl config show``)."""
    values: dict[str, Any] = {}
    sources = {key: ValueSource(Origin.DEFAULT) for key in _FIELDS}
    if path is not None:
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config: {exc.strerror}", path=str(p)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"bad TOML: {exc}", path=str(p)) from exc
        for key, value in doc.items():
            name = _field_name(key, str(p))
            values[name] = _coerce(name, value, str(p))
            sources[name] = ValueSource(Origin.FILE, str(p))
    env = os.environ if environ is None else environ
    for key in _FIELDS:
        name = f"MPFL_{key.upper()}"
        if name in env:
            values[key] = _coerce(key, env[name], name)
            sources[key] = ValueSource(Origin.ENV, name)
    for key, value in (overrides or {}).items():
        name = _field_name(key, "overrides")
        if value is not None:
            values[name] = _coerce(name, value, "overrides")
            sources[name] = ValueSource(Origin.FLAG, "--" + name.replace("_", "-"))
    return FederationConfig(**values).validate(), sources
