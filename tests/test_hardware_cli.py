"""``mpfl hardware list|show|detect`` through click's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import hardware.cli
from hardware.catalog import get_profile, load_catalog, load_links, load_profiles
from hardware.cli import hardware_group
from hardware.detect import Machine, read_machine
from hardware.formatting import format_link_table, format_profile, format_profile_table
from mpfl.errors import ConfigError, HardwareError

ONE_PROFILE = """\
schema_version = 1

[links.wire]
description = "a test link"
uplink_kbps = 1000
downlink_kbps = 2000
latency_ms = 3
source = "test"

[profiles.board-a]
version = 2
description = "a test board"
arch = "aarch64"
cores = 2
ram_mb = 1024
torch_threads = 2
batch_size = 16
train_memory_budget_mb = 500
role = "train"
role_reason = "test"
link = "wire"
"""


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(hardware_group, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_list_prints_every_profile_link_and_alias() -> None:
    code, out, err = _run("list")
    assert code == 0 and err == ""
    assert format_profile_table(load_profiles()) in out
    assert format_link_table(load_links()) in out
    assert "rpi4 -> rpi4-4gb" in out


@pytest.mark.parametrize("name", ["rpi4", "RPI4-4GB", "rpi-zero2w", "x86", "jetson"])
def test_show_prints_the_profile_by_name_or_alias(name: str) -> None:
    code, out, _ = _run("show", name)
    profile = get_profile(name)
    assert code == 0
    assert out == format_profile(profile) + "\n"
    assert f"{profile.name} v{profile.version}" in out


def test_unknown_profile_is_one_line_and_the_hardware_exit_code() -> None:
    code, out, err = _run("show", "rpi9")
    assert code == HardwareError.exit_code
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("hardware: error: unknown hardware profile 'rpi9'")
    for known in ("rpi4-4gb", "rpi-zero2w", "jetson-nano", "x86", "rpi4"):
        assert known in lines[0]
    assert "Traceback" not in err


def test_a_profile_file_replaces_the_bundled_catalog(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(ONE_PROFILE)
    code, out, _ = _run("list", "--profiles", str(path))
    assert code == 0
    assert "board-a" in out and "rpi4-4gb" not in out
    code, out, _ = _run("show", "board-a", env={"MPFL_PROFILES": str(path)})
    assert code == 0
    assert out == format_profile(get_profile("board-a", path), load_catalog(path).links) + "\n"
    assert "wire (1000 kbit/s up, 2000 kbit/s down, 3 ms)" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [("not = [toml", "not valid TOML"), ("schema_version = 99\n", "unsupported profile schema")],
)
def test_a_broken_profile_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for args in (["list"], ["show", "rpi4"], ["detect"]):
        code, out, err = _run(*args, "--profiles", str(path))
        assert code == HardwareError.exit_code
        assert out == "" and len(err.strip().splitlines()) == 1 and message in err
    code, _, err = _run("list", "--profiles", str(tmp_path / "missing.toml"))
    assert code == HardwareError.exit_code and "cannot read profile file" in err


def _fake_machine(**_: object) -> Machine:
    return Machine(arch="aarch64", cores=3, ram_mb=3793.0, cpu="Cortex-A76",
                   board="Raspberry Pi 5 Model B Rev 1.0", flags=("asimd", "fp", "sha2"))


def test_detect_shows_this_machine_beside_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware.cli, "read_machine", _fake_machine)
    monkeypatch.setattr(hardware.cli, "detect_profile", lambda **_: get_profile("rpi5-4gb"))
    code, out, _ = _run("detect")
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["cores"] == ["3", "4"]  # the machine's, then the profile's declared figure
    assert rows["ram"] == ["3,793", "MB", "4096", "MB"]
    assert "rpi5-4gb v2" in out and "flags that matter for torch and onnxruntime: asimd (3" in out
    assert "mpfl-edge applies rpi5-4gb v2 here" in out


def test_detect_says_a_generic_match_is_not_this_machine() -> None:
    code, out, _ = _run("detect")  # the real machine this test runs on
    machine = read_machine()
    assert code == 0 and f"cores                {machine.cores:<19}" in out
    assert "matched on the architecture alone" in out


def test_detect_without_a_match_still_shows_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware.cli, "read_machine", _fake_machine)
    monkeypatch.setattr(hardware.cli, "detect_profile", lambda **_: None)
    code, out, err = _run("detect")
    assert code == HardwareError.exit_code and "no profile matches" in out
    cores = [line.split() for line in out.splitlines() if line.startswith("cores")]
    assert cores == [["cores", "3", "-"]]
    assert err.startswith("hardware: error: no profile matches this machine") and "rpi4-8gb" in err


def test_other_mpfl_errors_keep_their_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> None:
        raise ConfigError("bad flag", flag="--x")

    monkeypatch.setattr(hardware.cli, "load_catalog", broken)
    code, _, err = _run("list")
    assert code == ConfigError.exit_code and err == "hardware: error: bad flag (flag=--x)\n"
