"""No hidden defaults: --help shows each one, and `mpfl config show` says where every
effective value came from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from apps.cli import main as mpfl
from coordinator.cli import main as coordinator
from mpfl.config.settings import FederationConfig, Origin, load_config_with_sources


def _help(group: object, *args: str) -> str:
    result = CliRunner().invoke(group, [*args, "--help"], terminal_width=200)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # click wraps long help lines


@pytest.mark.parametrize(("group", "args"), [(coordinator, ("run",)), (mpfl, ("simulate",))])
def test_help_shows_the_default_of_every_config_key(group: object, args: tuple[str]) -> None:
    text = _help(group, *args)
    for f in dataclasses.fields(FederationConfig):
        if f.name in ("eval_dataset", "eval_data_dir"):
            continue
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        default = f.default
        shown = ("{}" if default is dataclasses.MISSING else
                 (flag[2:] if default else f"no-{flag[2:]}") if isinstance(default, bool)
                 else str(default))
        last = f"--no-{flag[2:]}" if isinstance(default, bool) else flag
        after = text.split(f"{last} ", 1)[1]
        assert f"[default: {shown}]" in after.split(" --", 1)[0], flag


def test_help_shows_plain_option_defaults_too() -> None:
    assert "[default: 30.0;" in _help(coordinator, "run").split("--connect-timeout", 1)[1]
    assert "[default: 0]" in _help(mpfl, "data", "split").split("--seed", 1)[1]


def test_config_show_names_the_source_of_each_value(tmp_path: Path) -> None:
    toml = tmp_path / "federation.toml"
    toml.write_text('federation = "orchard"\nmin_nodes = 4\nfinal_sparsity = 0.7\n')
    result = CliRunner().invoke(
        mpfl, ["config", "show", "--config", str(toml), "--final-sparsity", "0.9"],
        env={"MPFL_MIN_NODES": "6"})
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[1:]}
    assert rows["federation"] == ['"orchard"', "file", str(toml)]
    assert rows["min_nodes"] == ["6", "env", "MPFL_MIN_NODES"]  # env over the file
    assert rows["final_sparsity"] == ["0.9", "flag", "--final-sparsity"]  # flag over all
    assert rows["model"] == ['"lenet5"', "default"]
    assert set(rows) == {f.name for f in dataclasses.fields(FederationConfig)}


def test_config_sources_agree_with_the_config_they_describe(tmp_path: Path) -> None:
    toml = tmp_path / "f.toml"
    toml.write_text("mask_rounds = 3\n")
    cfg, sources = load_config_with_sources(toml, {"quorum": 2}, {"MPFL_SEED": "7"})
    assert (cfg.mask_rounds, cfg.quorum, cfg.seed) == (3, 2, 7)
    assert [sources[k].origin for k in ("mask_rounds", "seed", "quorum", "lr")] == [
        Origin.FILE, Origin.ENV, Origin.FLAG, Origin.DEFAULT]


def test_config_show_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("min_nodes = 'four'\n")
    result = CliRunner().invoke(mpfl, ["config", "show", "--config", str(toml)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        line for line in result.output.strip().splitlines() if "min_nodes must be int" in line]
