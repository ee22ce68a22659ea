"""Configuration: defaults < TOML < MPFL_* environment < overrides, with clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mpfl.config.settings import FederationConfig, load_config
from mpfl.errors import ConfigError
from mpfl.ml.models import ModelSpec


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fed.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_ignore_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MPFL_FINAL_SPARSITY", "0.8")
    assert load_config(environ={}) == FederationConfig()
    assert load_config().final_sparsity == 0.8  # environ=None reads os.environ


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'final_sparsity = 0.6\nmask_rounds = 7\nlr = 0.2\nmodel = "mlp"\n')
    env = {"MPFL_MASK_ROUNDS": "8", "MPFL_LR": "0.3", "MPFL_UNRELATED": "x"}
    cfg = load_config(path, overrides={"lr": 0.4, "seed": None}, environ=env)
    defaults = FederationConfig()
    assert cfg.final_sparsity == 0.6  # TOML over default
    assert cfg.mask_rounds == 8  # env over TOML
    assert cfg.lr == 0.4  # override over env
    assert cfg.model == "mlp"
    assert cfg.seed == defaults.seed  # a None override leaves the value alone
    assert cfg.train_rounds == defaults.train_rounds


def test_environment_strings_are_parsed_by_field_type() -> None:
    env = {"MPFL_DELTA": "yes", "MPFL_QUORUM": "2", "MPFL_ROUND_TIMEOUT": "2.5",
           "MPFL_MODEL_ARGS": '{"image_size": 8, "hidden": [4]}', "MPFL_FEDERATION": "lab-1"}
    cfg = load_config(environ=env)
    assert cfg.delta is True and cfg.quorum == 2 and cfg.round_timeout == 2.5
    assert cfg.model_args == {"image_size": 8, "hidden": [4]} and cfg.federation == "lab-1"
    assert cfg.model_spec == ModelSpec("lenet5", {"image_size": 8, "hidden": [4]})
    assert load_config(environ={"MPFL_DELTA": "0"}).delta is False


def test_toml_tables_dashes_and_overrides_with_dashes(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'final-sparsity = 0.25\n[model_args]\nimage_size = 8\n')
    cfg = load_config(path, overrides={"mask-rounds": "3"}, environ={})
    assert cfg.final_sparsity == 0.25 and cfg.model_args == {"image_size": 8}
    assert cfg.mask_rounds == 3


def test_every_field_round_trips_through_the_environment() -> None:
    """Each field can be set by MPFL_<KEY>; str() of a non-default value parses back."""
    changed = {"federation": "f2", "model": "mlp", "granularity": "weight",
               "final_sparsity": 0.7, "schedule": "geometric", "consensus": "majority",
               "vote_weighting": "samples", "mask_rounds": 3, "train_rounds": 4, "mode": "rewind",
               "local_epochs": 2, "batch_size": 8, "lr": 0.01, "momentum": 0.5,
               "weight_decay": 0.001, "optimizer": "adam", "value_codec": "int8", "delta": False,
               "aggregator": "median", "min_nodes": 3, "quorum": 2, "round_timeout": 9.0,
               "start_timeout": 8.0, "retries": 0, "seed": 5, "eval_dataset": "digits",
               "eval_data_dir": "/tmp/d", "vote_agreement": True, "max_samples": 500,
               "trim": 0.2, "error_feedback": False, "server_optimizer": "fedavgm",
               "server_momentum": 0.8, "layer_sparsity": "uniform"}
    names = {f.name for f in dataclasses.fields(FederationConfig)} - {"model_args"}
    assert set(changed) == names  # a new field needs a line here
    env = {f"MPFL_{k.upper()}": str(v) for k, v in changed.items()}
    cfg = load_config(environ=env)
    for key, value in changed.items():
        assert getattr(cfg, key) == value, key
    assert cfg.to_dict()["lr"] == 0.01


@pytest.mark.parametrize(
    "text",
    ["nonsense = 1\n", "[train]\nlr = 0.1\n", "final_sparsity = 1.0\n", "final_sparsity = -0.1\n",
     'final_sparsity = "lots"\n', "mask_rounds = 2.5\n", "mask_rounds = true\n",
     'model = ["mlp"]\n', "delta = 5\n", 'schedule = "exponential"\n', 'consensus = "vote"\n',
     'aggregator = "mean"\n', 'optimizer = "lbfgs"\n', 'model = "vgg99"\n',
     'granularity = "channel"\n', "quorum = 5\nmin_nodes = 2\n", "lr = 0\n",
     "mask_rounds = 0\ntrain_rounds = 0\n", "momentum = 1.0\n", "weight_decay = -1.0\n",
     'federation = "a/b"\n', 'mode = "other"\n', 'value_codec = "fp8"\n',
     "model_args = 3\n", "this is not toml\n", "batch_size = 0\n", "retries = -1\n"],
)
def test_bad_toml_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(_toml(tmp_path, text), environ={})


@pytest.mark.parametrize(
    ("name", "value"),
    [("MPFL_MASK_ROUNDS", "two"), ("MPFL_FINAL_SPARSITY", "abc"), ("MPFL_DELTA", "maybe"),
     ("MPFL_MODEL_ARGS", "{not json"), ("MPFL_MODEL_ARGS", "[1, 2]"), ("MPFL_QUORUM", "1.5")],
)
def test_bad_environment_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={name: value})
    assert name in str(info.value)


@pytest.mark.parametrize("overrides", [{"nope": 1}, {"lr": "fast"}, {"seed": 1.5}])
def test_bad_overrides_are_config_errors(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_config(overrides=overrides, environ={})


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml", environ={})
    assert "absent.toml" in str(info.value)


def test_error_exit_code_is_the_config_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_toml(tmp_path, "nonsense = 1\n"), environ={})
    assert info.value.exit_code == 2 and "nonsense" in str(info.value)
