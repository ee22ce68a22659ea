"""The reference code's faulty nodes, as options of `mpfl simulate` and `mpfl-edge`."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from apps.cli import main
from apps.launcher import SimulationPlan
from mpfl.config.settings import FederationConfig
from mpfl.errors import ConfigError


def test_only_the_chosen_nodes_are_started_faulty(tmp_path: Path) -> None:
    plan = SimulationPlan(FederationConfig(), 3, "digits", tmp_path,
                          corrupt={0: "noise", 1: "permuted-labels"})
    commands = [plan.node_command(i, "mqtt://127.0.0.1:1883") for i in range(3)]
    kinds = [c[c.index("--corrupt") + 1] if "--corrupt" in c else None for c in commands]
    assert kinds == ["noise", "permuted-labels", None]


def test_more_faulty_nodes_than_nodes_is_one_line() -> None:
    result = CliRunner().invoke(main, ["simulate", "--nodes", "2", "--noise-nodes", "2",
                                       "--permuted-nodes", "1"], prog_name="mpfl")
    assert result.exit_code == ConfigError.exit_code
    assert result.output == "mpfl: error: more faulty nodes than nodes (nodes=2, faulty=3)\n"
