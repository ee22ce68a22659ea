"""Federation configuration: one TOML file, every key overridable by env and by flag.

Precedence, lowest first: defaults, the TOML file, ``MPFL_<KEY>`` environment variables
(``final_sparsity`` -> ``MPFL_FINAL_SPARSITY``), command-line flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from mpfl.errors import ConfigError
from mpfl.models import ModelSpec


@dataclass(frozen=True)
class FederationConfig:
    federation: str = "default"
    # model and pruning
    model: str = "lenet5"
    model_args: dict[str, Any] = field(default_factory=dict)
    granularity: str = "filter"
    final_sparsity: float = 0.5
    schedule: str = "linear"
    consensus: str = "top-votes"
    vote_weighting: str = "uniform"
    mask_rounds: int = 5
    train_rounds: int = 5
    mode: str = "rewind"
    # local training, sent to the nodes with every round
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    # wire and aggregation
    value_codec: str = "fp32"
    delta: bool = False
    aggregator: str = "fedavg"
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
        return ModelSpec(self.model, dict(self.model_args))

    def validate(self) -> FederationConfig:
        checks = [
            (self.granularity in ("filter", "weight"), "granularity must be filter or weight"),
            (0.0 <= self.final_sparsity < 1.0, "final_sparsity must be in [0, 1)"),
            (self.mask_rounds >= 0 and self.train_rounds >= 0, "rounds must be >= 0"),
            (self.mask_rounds + self.train_rounds > 0, "there must be at least one round"),
            (self.mode in ("rewind", "joint"), "mode must be rewind or joint"),
            (self.vote_weighting in ("uniform", "samples"), "vote_weighting: uniform|samples"),
            (self.value_codec in ("fp32", "fp16", "int8"), "value_codec must be fp32|fp16|int8"),
            (self.min_nodes >= 1, "min_nodes must be >= 1"),
            (1 <= self.quorum <= self.min_nodes, "quorum must be between 1 and min_nodes"),
            (self.round_timeout > 0, "round_timeout must be > 0"),
            (self.local_epochs >= 1 and self.batch_size >= 1, "epochs and batch size >= 1"),
            (self.lr > 0, "lr must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(FederationConfig)}


def _coerce(key: str, value: Any) -> Any:
    """Convert a TOML, env or flag value to the field's type, or say which key is wrong."""
    default = _FIELDS[key].default
    if default is dataclasses.MISSING:  # model_args, a dict
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ConfigError(f"{key} must be a JSON object", value=value) from exc
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table / JSON object", value=value)
        return value
    kind = type(default)
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        if kind is float and isinstance(value, bool) or kind is int and isinstance(value, float):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} must be {kind.__name__}", value=value) from exc


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FederationConfig:
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config: {exc.strerror}", path=str(p)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"bad TOML: {exc}", path=str(p)) from exc
        for key, value in doc.items():
            key = key.replace("-", "_")
            if key not in _FIELDS:
                raise ConfigError(f"unknown config key '{key}'", path=str(p))
            values[key] = _coerce(key, value)
    env = os.environ if environ is None else environ
    for key in _FIELDS:
        name = f"MPFL_{key.upper()}"
        if name in env:
            values[key] = _coerce(key, env[name])
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)
    return FederationConfig(**values).validate()
