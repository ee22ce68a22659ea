"""One source of names: every registry, click option and config check derives from the
enums in mpfl/choices.py; and the config and the wire load without torch."""

from __future__ import annotations

import subprocess
import sys
from enum import StrEnum

import click
import pytest

from mpfl.choices import (
    AggregatorName,
    ConsensusName,
    Granularity,
    ModelName,
    Optimizer,
    Phase,
    ScheduleName,
    ValueCodecName,
    names,
)
from mpfl.config.flags import config_options
from mpfl.config.settings import CHOICES, FederationConfig
from mpfl.errors import ConfigError
from mpfl.maths.aggregate import AGGREGATORS
from mpfl.maths.consensus import RULES
from mpfl.maths.schedules import SCHEDULES
from mpfl.wire import ValueCodec
from mpfl.wire.protocol import PHASES


@pytest.mark.parametrize(
    ("registry", "choice"),
    [(RULES, ConsensusName), (AGGREGATORS, AggregatorName), (SCHEDULES, ScheduleName)],
)
def test_numpy_registries_are_keyed_by_their_enum(registry: object, choice: type[StrEnum]
                                                  ) -> None:
    assert list(registry) and all(type(key) is choice for key in registry)  # type: ignore
    assert set(registry) == set(choice)  # type: ignore[call-overload]


def test_torch_registries_agree_with_the_names() -> None:
    from mpfl.ml.models import PRESETS, ZOO
    from mpfl.ml.train import OPTIMIZERS
    from mpfl.ml.units import GRANULARITIES

    assert set(OPTIMIZERS) == set(Optimizer)
    assert tuple(Granularity) == GRANULARITIES
    assert not set(ZOO) & set(PRESETS)
    assert set(ZOO) | set(PRESETS) == set(ModelName)  # a new zoo model needs its name
    assert all(spec.name in ZOO for spec in PRESETS.values())


def test_value_codec_names_are_the_wire_codecs_without_delta() -> None:
    assert names(ValueCodecName) == tuple(c.name.lower().replace("_", "-") for c in ValueCodec
                                          if not c.is_delta)


def test_phases_of_the_protocol_are_the_enum() -> None:
    assert tuple(Phase) == PHASES
    assert [p for p in Phase if p.is_round] == [Phase.MASK, Phase.TRAIN]
    assert [p for p in Phase if p.is_final] == [Phase.DONE, Phase.FAILED]


def test_every_choice_flag_offers_exactly_the_enum_names() -> None:
    @click.command()
    @config_options()
    def command(**_: object) -> None: ...

    offered = {p.name: tuple(p.type.choices) for p in command.params
               if isinstance(p.type, click.Choice)}
    assert offered == {key: names(choice) for key, choice in CHOICES.items()}


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_config_accepts_each_name_and_refuses_others_listing_them(key: str) -> None:
    for name in names(CHOICES[key]):
        FederationConfig(**{key: name}).validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        FederationConfig(**{key: "bogus"}).validate()  # type: ignore[arg-type]
    assert "|".join(names(CHOICES[key])) in str(info.value)


def test_config_wire_and_maths_import_no_torch() -> None:
    code = ("import sys, mpfl.config.settings, mpfl.config.flags, mpfl.wire, mpfl.maths, "
            "mpfl.choices, mpfl.wire.protocol; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
