"""Device profiles and network links: the catalog in ``profiles.toml``, parsed and looked up.

A profile says what the toolkit should do on one kind of board (torch threads, default
batch size, memory budget for training, whether it trains at all); a link gives the
bandwidth and latency used to plan communication time. The figures live in the TOML file
so they can be read and versioned as data; this module only validates and serves them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from mpfl.errors import ConfigError, HardwareError

SCHEMA_VERSION = 1
ROLES = ("train", "infer-only")


@dataclass(frozen=True)
class Link:
    """A network link for planning: effective throughput (kbit/s) and one-way latency."""

    name: str
    description: str
    uplink_kbps: float
    downlink_kbps: float
    latency_ms: float
    source: str

    def __post_init__(self) -> None:
        if not (self.uplink_kbps > 0 and self.downlink_kbps > 0):
            raise HardwareError("link bandwidth must be positive", link=self.name)
        if not self.latency_ms >= 0:
            raise HardwareError("link latency must not be negative", link=self.name)


@dataclass(frozen=True)
class Profile:
    """What the toolkit does on one kind of device. Frozen: change figures via ``version``."""

    name: str
    version: int
    description: str
    arch: str
    cores: int
    ram_mb: int
    torch_threads: int
    batch_size: int
    train_memory_budget_mb: int
    role: str
    role_reason: str
    link: str
    detect_models: tuple[str, ...] = ()
    detect_machines: tuple[str, ...] = ()
    # Sustained fp32 throughput of a training step (forward and backward), in GFLOP/s: the
    # link planner's training time on this board. None: not declared.
    train_gflops: float | None = None

    @property
    def generic(self) -> bool:
        """A class of host recognised by its CPU architecture alone, not a known board."""
        return not self.detect_models

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise HardwareError(
                f"role must be one of {', '.join(ROLES)}", profile=self.name, role=self.role
            )
        for attr in ("version", "cores", "ram_mb", "torch_threads", "batch_size"):
            if getattr(self, attr) < 1:
                raise HardwareError(f"{attr} must be at least 1", profile=self.name)
        if self.train_gflops is not None and not self.train_gflops > 0:
            raise HardwareError("train_gflops must be positive", profile=self.name)
        if not 0 < self.train_memory_budget_mb <= self.ram_mb:
            raise HardwareError(
                "train_memory_budget_mb must be positive and at most ram_mb", profile=self.name
            )

    @property
    def trains(self) -> bool:
        return self.role == "train"

    @property
    def label(self) -> str:
        """Name and version, as recorded in run directories and node hellos."""
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class Catalog:
    profiles: Mapping[str, Profile]
    links: Mapping[str, Link]
    aliases: Mapping[str, str]


# ------------------------------------------------------------------------------ loading

_PROFILE_TYPES: Mapping[str, type] = {
    "version": int,
    "description": str,
    "arch": str,
    "cores": int,
    "ram_mb": int,
    "torch_threads": int,
    "batch_size": int,
    "train_memory_budget_mb": int,
    "role": str,
    "role_reason": str,
    "link": str,
    "detect_models": tuple,
    "detect_machines": tuple,
    "train_gflops": float,
}
_LINK_TYPES: Mapping[str, type] = {
    "description": str,
    "uplink_kbps": float,
    "downlink_kbps": float,
    "latency_ms": float,
    "source": str,
}
_OPTIONAL = {"detect_models", "detect_machines", "train_gflops"}


def _typed_fields(
    table: Any, types: Mapping[str, type], *, where: str, source: str
) -> dict[str, Any]:
    """Check one TOML table against the expected keys and types; return converted values."""
    if not isinstance(table, dict):
        raise HardwareError(f"{where} must be a table", file=source)
    unknown = sorted(set(table) - set(types))
    if unknown:
        raise HardwareError(f"{where}: unknown keys {', '.join(unknown)}", file=source)
    missing = sorted(set(types) - set(table) - _OPTIONAL)
    if missing:
        raise HardwareError(f"{where}: missing keys {', '.join(missing)}", file=source)
    out: dict[str, Any] = {}
    for key, value in table.items():
        want = types[key]
        if want is tuple:
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise HardwareError(f"{where}.{key} must be a list of strings", file=source)
            out[key] = tuple(value)
        elif want is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise HardwareError(f"{where}.{key} must be a number", file=source)
            out[key] = float(value)
        elif isinstance(value, bool) or not isinstance(value, want):
            raise HardwareError(f"{where}.{key} must be {want.__name__}", file=source)
        else:
            out[key] = value
    return out


def _section(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    section = data.get(key, {})
    if not isinstance(section, dict):
        raise HardwareError(f"{key} must be a table", file=source)
    return section


def parse_catalog(data: Mapping[str, Any], *, source: str = "<data>") -> Catalog:
    """Validate parsed TOML and build the catalog; every problem is a HardwareError."""
    if data.get("schema_version") != SCHEMA_VERSION:
        raise HardwareError(
            f"unsupported profile schema (want {SCHEMA_VERSION})",
            file=source,
            schema_version=data.get("schema_version"),
        )
    unknown = sorted(set(data) - {"schema_version", "aliases", "links", "profiles"})
    if unknown:
        raise HardwareError(f"unknown top-level keys {', '.join(unknown)}", file=source)

    links: dict[str, Link] = {}
    for name, table in _section(data, "links", source).items():
        values = _typed_fields(table, _LINK_TYPES, where=f"links.{name}", source=source)
        links[name] = Link(name=name, **values)
    profiles: dict[str, Profile] = {}
    for name, table in _section(data, "profiles", source).items():
        values = _typed_fields(table, _PROFILE_TYPES, where=f"profiles.{name}", source=source)
        profile = Profile(name=name, **values)
        if profile.link not in links:
            raise HardwareError(
                "profile names an unknown link", profile=name, link=profile.link, file=source
            )
        profiles[name] = profile
    if not profiles:
        raise HardwareError("no profiles defined", file=source)

    aliases: dict[str, str] = {}
    for alias, target in _section(data, "aliases", source).items():
        if not isinstance(target, str) or target not in profiles:
            raise HardwareError("alias points to an unknown profile", alias=alias, file=source)
        if alias in profiles:
            raise HardwareError("alias shadows a profile name", alias=alias, file=source)
        aliases[alias] = target
    return Catalog(profiles=profiles, links=links, aliases=aliases)


@lru_cache(maxsize=1)
def _packaged_catalog() -> Catalog:
    text = resources.files("hardware").joinpath("profiles.toml").read_text(encoding="utf-8")
    return parse_catalog(tomllib.loads(text), source="hardware/profiles.toml")


def load_catalog(path: Path | None = None) -> Catalog:
    """The packaged catalog, or one read from ``path`` (same format as profiles.toml)."""
    if path is None:
        return _packaged_catalog()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise HardwareError(f"cannot read profile file: {exc.strerror}", file=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise HardwareError(f"profile file is not valid TOML: {exc}", file=str(path)) from exc
    return parse_catalog(data, source=str(path))


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    """All profiles by canonical name, in file order."""
    return dict(load_catalog(path).profiles)


def load_links(path: Path | None = None) -> dict[str, Link]:
    """All links by name, in file order."""
    return dict(load_catalog(path).links)


def profile_aliases(path: Path | None = None) -> dict[str, str]:
    """Alias -> canonical profile name (e.g. ``rpi4`` -> ``rpi4-4gb``)."""
    return dict(load_catalog(path).aliases)


def get_profile(name: str, path: Path | None = None) -> Profile:
    """Look a profile up by name or alias; an unknown name lists the known ones."""
    catalog = load_catalog(path)
    key = name.strip().lower()
    key = catalog.aliases.get(key, key)
    if key in catalog.profiles:
        return catalog.profiles[key]
    known = sorted([*catalog.profiles, *catalog.aliases])
    raise HardwareError(f"unknown hardware profile {name!r}; known: {', '.join(known)}")


def get_link(name: str, path: Path | None = None) -> Link:
    """Look a link up by name; an unknown name lists the known ones."""
    catalog = load_catalog(path)
    key = name.strip().lower()
    if key in catalog.links:
        return catalog.links[key]
    raise HardwareError(f"unknown link {name!r}; known: {', '.join(sorted(catalog.links))}")


# ---------------------------------------------------------------------------- link time


def link_time(bytes_up: int, bytes_down: int, link: Link, n_messages: int = 1) -> float:
    """Seconds to move the bytes over ``link``: latency per message + bytes / bandwidth.

    ``n_messages`` counts messages in both directions; each pays the one-way latency once.
    """
    if bytes_up < 0 or bytes_down < 0 or n_messages < 0:
        raise ConfigError(
            "bytes and message count must not be negative",
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            n_messages=n_messages,
        )
    up = bytes_up * 8 / (link.uplink_kbps * 1000)
    down = bytes_down * 8 / (link.downlink_kbps * 1000)
    return n_messages * link.latency_ms / 1000 + up + down

