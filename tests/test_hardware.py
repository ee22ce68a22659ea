"""Device profiles, detection from fake /proc files and link arithmetic (the memory guard's
tests are in test_hardware_memory.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware.catalog import (
    Link,
    get_link,
    get_profile,
    link_time,
    load_catalog,
    load_links,
    load_profiles,
    profile_aliases,
)
from hardware.detect import detect_profile
from hardware.formatting import format_link_table, format_profile, format_profile_table
from mpfl.errors import ConfigError, HardwareError

REQUIRED = [
    "rpi-zero2w",
    "rpi3b+",
    "rpi4-2gb",
    "rpi4-4gb",
    "rpi4-8gb",
    "rpi5-4gb",
    "rpi5-8gb",
    "jetson-nano",
    "x86",
]


# ----------------------------------------------------------------------------- catalog


def test_required_profiles_load_with_valid_links() -> None:
    profiles = load_profiles()
    links = load_links()
    assert set(REQUIRED) <= set(profiles)
    assert {"wifi", "ethernet", "lte-m"} <= set(links)
    for name, profile in profiles.items():
        assert profile.name == name
        assert profile.link in links
        assert profile.train_memory_budget_mb <= profile.ram_mb
        assert profile.torch_threads <= profile.cores
        assert profile.role_reason


def test_zero2w_is_infer_only_with_an_honest_reason() -> None:
    zero = get_profile("rpi-zero2w")
    assert zero.ram_mb == 512 and zero.cores == 4
    assert not zero.trains
    assert "estimate" in zero.role_reason and "bench_edge" in zero.role_reason


def test_aliases_resolve_to_canonical_profiles() -> None:
    aliases = profile_aliases()
    assert aliases["rpi4"] == "rpi4-4gb"
    assert aliases["rpi5"] == "rpi5-8gb"
    for alias, target in aliases.items():
        assert get_profile(alias) is get_profile(target)
    assert get_profile(" RPI4 ").name == "rpi4-4gb"


def test_unknown_profile_error_lists_known_names() -> None:
    with pytest.raises(HardwareError) as info:
        get_profile("rpi9")
    message = str(info.value)
    assert "rpi9" in message
    for name in [*REQUIRED, "rpi4", "rpi5"]:
        assert name in message
    assert info.value.exit_code == 8


def test_unknown_link_error_lists_known_links() -> None:
    with pytest.raises(HardwareError) as info:
        get_link("5g")
    assert all(name in str(info.value) for name in load_links())


def test_profiles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_profile("rpi4").batch_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"colour": "red"}, "unknown keys colour"),
        ({"cores": "four"}, "cores must be int"),
        ({"role": "gaming"}, "role must be one of"),
        ({"link": "carrier-pigeon"}, "unknown link"),
        ({"train_memory_budget_mb": 100_000}, "at most ram_mb"),
    ],
)
def test_custom_profile_file_is_validated(tmp_path: Path, patch: dict, needle: str) -> None:
    fields = {
        "version": 1,
        "description": "d",
        "arch": "aarch64",
        "cores": 4,
        "ram_mb": 1024,
        "torch_threads": 4,
        "batch_size": 8,
        "train_memory_budget_mb": 512,
        "role": "train",
        "role_reason": "r",
        "link": "wifi",
    }
    fields.update(patch)
    body = "\n".join(
        f"{k} = {v}" if isinstance(v, int) else f'{k} = "{v}"' for k, v in fields.items()
    )
    path = tmp_path / "p.toml"
    path.write_text(
        "schema_version = 1\n[links.wifi]\ndescription = 'w'\nuplink_kbps = 1\n"
        f"downlink_kbps = 1\nlatency_ms = 1\nsource = 's'\n[profiles.board]\n{body}\n"
    )
    with pytest.raises(HardwareError, match=needle):
        load_catalog(path)


def test_custom_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("schema_version = [")
    with pytest.raises(HardwareError, match="not valid TOML") as info:
        load_catalog(path)
    assert str(path) in str(info.value)
    with pytest.raises(HardwareError, match="cannot read"):
        load_catalog(tmp_path / "missing.toml")


def test_formatting_lists_every_profile_and_field() -> None:
    profiles = load_profiles()
    table = format_profile_table(profiles)
    lines = table.splitlines()
    assert len(lines) == len(profiles) + 1
    for name, line in zip(profiles, lines[1:], strict=True):
        assert line.split()[0] == name
    assert format_profile_table(list(profiles.values())) == table
    shown = format_profile(get_profile("rpi4"))
    assert "rpi4-4gb v2" in shown and "train memory budget" in shown and "wifi (" in shown
    assert len(format_link_table(load_links()).splitlines()) == len(load_links()) + 1


# --------------------------------------------------------------------------- detection


def _fake_board(tmp_path: Path, model: str | None, mem_kb: int | None) -> tuple[Path, Path]:
    model_path = tmp_path / "model"
    meminfo_path = tmp_path / "meminfo"
    if model is not None:
        model_path.write_bytes(model.encode() + b"\x00")  # the device tree NUL-terminates
    if mem_kb is not None:
        lines = [f"MemTotal: {mem_kb:>14} kB", "MemFree:  123456 kB", "MemAvailable: 234567 kB"]
        meminfo_path.write_text("\n".join(lines) + "\n")
    return model_path, meminfo_path


@pytest.mark.parametrize(
    ("model", "mem_kb", "expected"),
    [
        ("Raspberry Pi 4 Model B Rev 1.4", 3_884_376, "rpi4-4gb"),
        ("Raspberry Pi 4 Model B Rev 1.2", 1_917_292, "rpi4-2gb"),
        ("Raspberry Pi 4 Model B Rev 1.4", 7_999_784, "rpi4-8gb"),
        ("Raspberry Pi 5 Model B Rev 1.0", 8_245_328, "rpi5-8gb"),
        ("Raspberry Pi 5 Model B Rev 1.0", 4_144_304, "rpi5-4gb"),
        ("Raspberry Pi Zero 2 W Rev 1.0", 438_948, "rpi-zero2w"),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", 948_084, "rpi3b+"),
        ("NVIDIA Jetson Nano Developer Kit", 4_059_712, "jetson-nano"),
    ],
)
def test_detects_boards_from_device_tree(
    tmp_path: Path, model: str, mem_kb: int, expected: str
) -> None:
    model_path, meminfo_path = _fake_board(tmp_path, model, mem_kb)
    found = detect_profile(model_path, meminfo_path, machine="aarch64")
    assert found is not None and found.name == expected


def test_detects_x86_host_without_device_tree(tmp_path: Path) -> None:
    model_path, meminfo_path = _fake_board(tmp_path, None, 16_000_000)
    found = detect_profile(model_path, meminfo_path, machine="x86_64")
    assert found is not None and found.name == "x86"


@pytest.mark.parametrize(
    ("model", "mem_kb", "machine"),
    [
        ("Raspberry Pi Compute Module 4 Rev 1.0", 3_884_376, "aarch64"),  # unknown board
        ("Raspberry Pi 4 Model B Rev 1.1", 945_000, "aarch64"),  # 1 GB variant: no profile
        ("Raspberry Pi 5 Model B Rev 1.0", 2_000_000, "aarch64"),  # 2 GB variant: no profile
        (None, 4_000_000, "aarch64"),  # ARM host without a device tree
        (None, 4_000_000, "riscv64"),
    ],
)
def test_unknown_machines_give_none(
    tmp_path: Path, model: str | None, mem_kb: int, machine: str
) -> None:
    model_path, meminfo_path = _fake_board(tmp_path, model, mem_kb)
    assert detect_profile(model_path, meminfo_path, machine=machine) is None


def test_unreadable_meminfo_picks_the_smallest_variant(tmp_path: Path) -> None:
    model_path, meminfo_path = _fake_board(tmp_path, "Raspberry Pi 4 Model B Rev 1.4", None)
    found = detect_profile(model_path, meminfo_path)
    assert found is not None and found.name == "rpi4-2gb"


# --------------------------------------------------------------------------- link time


def test_link_time_arithmetic() -> None:
    link = Link("slow", "test", uplink_kbps=8, downlink_kbps=16, latency_ms=100, source="t")
    # 1000 B up at 8 kbit/s = 1 s; 2000 B down at 16 kbit/s = 1 s; 3 messages x 0.1 s.
    assert link_time(1000, 2000, link, n_messages=3) == pytest.approx(2.3)
    assert link_time(0, 0, link, n_messages=0) == 0


@given(
    up=st.integers(min_value=0, max_value=10**9),
    down=st.integers(min_value=0, max_value=10**9),
    n=st.integers(min_value=0, max_value=10_000),
)
def test_link_time_is_additive(up: int, down: int, n: int) -> None:
    link = get_link("lte-m")
    whole = link_time(up, down, link, n_messages=n)
    parts = link_time(up, 0, link, 0) + link_time(0, down, link, 0) + link_time(0, 0, link, n)
    assert whole == pytest.approx(parts)
    assert link_time(up, down, get_link("ethernet"), n) <= whole


def test_link_time_rejects_negative_input() -> None:
    with pytest.raises(ConfigError):
        link_time(-1, 0, get_link("wifi"))


def test_links_reject_nonsense_figures() -> None:
    with pytest.raises(HardwareError):
        Link("x", "x", uplink_kbps=0, downlink_kbps=1, latency_ms=1, source="s")


def test_only_hosts_recognised_by_architecture_alone_are_generic() -> None:
    assert get_profile("x86").generic
    assert not get_profile("rpi4").generic and not get_profile("jetson-nano").generic
