"""``mpfl hardware``: list the device profiles and links, show one, detect this machine's.

Thin by design: it parses, calls the ``hardware`` modules and prints. A user mistake (an
unknown profile, a broken profile file) is one line on stderr and the error's exit code.
"""

from __future__ import annotations

from pathlib import Path

import click

from hardware.catalog import get_profile, load_catalog
from hardware.detect import detect_profile, read_machine
from hardware.formatting import (
    format_detection,
    format_link_table,
    format_profile,
    format_profile_table,
)
from mpfl.errors import HardwareError, reports_errors

_PROFILES_OPTION = click.option(
    "--profiles",
    "profiles_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="MPFL_PROFILES",
    default=None,
    help="A profile file in the format of hardware/profiles.toml (default: the bundled one).",
)


@click.group("hardware", context_settings={"show_default": True})
def hardware_group() -> None:
    """Device profiles (threads, batch size, memory budget, role) and network links."""


@hardware_group.command("list")
@_PROFILES_OPTION
@reports_errors
def list_command(profiles_path: Path | None) -> None:
    """Every profile, the links used for planning, and the short aliases."""
    catalog = load_catalog(profiles_path)
    click.echo(format_profile_table(catalog.profiles))
    click.echo()
    click.echo(format_link_table(catalog.links))
    if catalog.aliases:
        click.echo()
        aliases = ", ".join(f"{alias} -> {name}" for alias, name in catalog.aliases.items())
        click.echo(f"aliases: {aliases}")


@hardware_group.command("show")
@click.argument("name")
@_PROFILES_OPTION
@reports_errors
def show_command(name: str, profiles_path: Path | None) -> None:
    """One profile in full (NAME may be an alias such as rpi4)."""
    profile = get_profile(name, profiles_path)
    click.echo(format_profile(profile, load_catalog(profiles_path).links))


@hardware_group.command("detect")
@_PROFILES_OPTION
@reports_errors
def detect_command(profiles_path: Path | None) -> None:
    """This machine (cores, RAM, arch, CPU flags) beside the profile `mpfl-edge start` would
    pick without --hardware."""
    catalog = load_catalog(profiles_path)
    profile = detect_profile(profiles=catalog.profiles)
    click.echo(format_detection(read_machine(), profile))
    if profile is None:
        raise HardwareError(
            "no profile matches this machine; pick one with --hardware "
            f"(known: {', '.join(sorted([*catalog.profiles, *catalog.aliases]))})"
        )
