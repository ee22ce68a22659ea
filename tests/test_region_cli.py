"""``mpfl-coordinator`` as a region: the bridge it prints, and one line (exit 2) for every
flag that cannot work, before anything connects."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from coordinator.cli import main


def test_bridge_config_carries_server_topics_down_and_the_regions_own_up(tmp_path: Path) -> None:
    env = tmp_path / "east.env"
    env.write_text("MPFL_USERNAME=east\nMPFL_PASSWORD=s3cret\n")
    result = CliRunner().invoke(main, ["bridge-config", "--federation", "fed", "--region",
                                       "east", "--upstream", "mqtts://root.lan:8883",
                                       "--ca-file", "/etc/mpfl/ca.crt", "--password-file",
                                       str(env)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for expected in ("connection mpfl-fed-east", "address root.lan:8883",
                     "topic mpfl/v1/fed/server/# in 1", "topic mpfl/v1/fed/nodes/east/# out 1",
                     "remote_username east", "remote_password s3cret",
                     "bridge_cafile /etc/mpfl/ca.crt"):
        assert expected in lines, expected
    assert not any(line.startswith("topic") and "nodes/#" in line for line in lines)


def _one_line_error(args: list[str], match: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert match in result.output and "Traceback" not in result.output


def test_flags_that_cannot_work_are_one_line_each(tmp_path: Path) -> None:
    _one_line_error(["bridge-config", "--federation", "fed", "--region", "east",
                     "--upstream", "mqtts://root.lan:8883"], "needs --ca-file")
    _one_line_error(["bridge-config", "--federation", "fed", "--region", "no such",
                     "--upstream", "mqtt://root.lan"], "invalid node id")
    run = ["run", "--federation", "fed", "--run-dir", str(tmp_path / "run")]
    _one_line_error([*run, "--upstream", "mqtt://root.lan"], "add --region")
    _one_line_error([*run, "--region", "east", "--broker", "mqtt://a", "--upstream",
                     "mqtt://b"], "not both")
    _one_line_error([*run, "--region", "east"], "either --broker")
    _one_line_error([*run, "--region", "east", "--broker", "mqtt://a", "--key",
                     str(tmp_path / "k")], "together")
    _one_line_error([*run, "--region", "east", "--broker", "mqtt://a", "--aggregator",
                     "median"], "cannot run aggregator 'median'")
