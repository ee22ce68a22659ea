"""Device profiles and network links, loaded from ``profiles.toml`` into frozen dataclasses.

A profile says what the toolkit should do on one kind of board (torch threads, default
batch size, memory budget for training, whether it trains at all); a link gives the
bandwidth and latency used to plan communication time. The figures live in the TOML file
so they can be read and versioned as data; this module only validates and uses them.

Nothing here imports torch except ``apply_threads`` (lazily): the memory guard works on
counts passed in, so it runs in the coordinator, in the simulator and in tests alike.
"""

from __future__ import annotations

import math
import os
import platform
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from mpfl.errors import ConfigError, HardwareError

SCHEMA_VERSION = 1
ROLES = ("train", "infer-only")

MIB = 1024 * 1024
BYTES_PER_FLOAT = 4

# Peak RSS of a torch process that has run one SGD step on LeNet-5 (batch 1), measured on
# x86-64 with the torch 2.13 CPU wheel: ~315 MB (`import torch` alone: ~225 MB; the first
# backward pass loads the rest). Charged once per training process.
# benchmarks/bench_edge.py re-measures it on the target board.
TORCH_TRAINING_OVERHEAD_MB = 315

# Extra float tensors per parameter kept by each optimizer, on top of weight + gradient.
OPTIMIZER_SLOTS: Mapping[str, int] = {"sgd": 0, "sgd-momentum": 1, "adam": 2, "adamw": 2}

# Used only when the caller cannot give activation bytes per sample: activations kept for
# the backward pass plus their gradients, as a multiple of the input size. LeNet-5 on
# 28x28 inputs is ~30x; VGG-style CIFAR models are higher. A crude, deliberately large guess.
DEFAULT_ACTIVATION_FACTOR = 64

# Detection keeps a variant only if the kernel sees at least this share of its nominal RAM
# (MemTotal excludes the GPU split, firmware and kernel reservations).
_DETECT_RAM_SHARE = 0.75


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
}
_LINK_TYPES: Mapping[str, type] = {
    "description": str,
    "uplink_kbps": float,
    "downlink_kbps": float,
    "latency_ms": float,
    "source": str,
}
_OPTIONAL = {"detect_models", "detect_machines"}


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


# ---------------------------------------------------------------------------- detection


def _read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


def read_device_model(model_path: str | Path = "/proc/device-tree/model") -> str | None:
    """The board name from the device tree (NUL-terminated there), or None."""
    raw = _read_text(model_path)
    if raw is None:
        return None
    model = raw.replace("\x00", " ").strip()
    return model or None


def read_mem_total_mb(meminfo_path: str | Path = "/proc/meminfo") -> float | None:
    """MemTotal in MiB from /proc/meminfo, or None when unreadable."""
    text = _read_text(meminfo_path)
    if text is None:
        return None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == "MemTotal":  # always in kB
            parts = rest.split()
            return int(parts[0]) / 1024 if parts and parts[0].isdigit() else None
    return None


def detect_profile(
    model_path: str | Path = "/proc/device-tree/model",
    meminfo_path: str | Path = "/proc/meminfo",
    *,
    machine: str | None = None,
    profiles: Mapping[str, Profile] | None = None,
) -> Profile | None:
    """Guess the profile of this machine; None when it is not one we know.

    Boards with a device tree match on its model string, then the RAM variant is the largest
    whose nominal RAM the kernel can account for (MemTotal >= 75 % of nominal); if MemTotal
    is unreadable, the smallest variant (the safe choice). Without a device tree, hosts match
    on ``platform.machine()`` (generic profiles, not tied to the host's RAM).
    """
    catalog = load_profiles() if profiles is None else profiles
    model = read_device_model(model_path)
    if model is not None:
        family = [p for p in catalog.values() if any(model.startswith(m) for m in p.detect_models)]
        if not family:
            return None
        family.sort(key=lambda p: p.ram_mb)
        mem_mb = read_mem_total_mb(meminfo_path)
        if mem_mb is None:
            return family[0]
        fitting = [p for p in family if p.ram_mb * _DETECT_RAM_SHARE <= mem_mb]
        return fitting[-1] if fitting else None
    arch = platform.machine() if machine is None else machine
    for profile in catalog.values():
        if arch in profile.detect_machines:
            return profile
    return None


# ------------------------------------------------------------------------- memory guard


def estimate_training_bytes(
    model_param_count: int,
    sample_shape: Sequence[int],
    batch_size: int,
    optimizer: str = "sgd-momentum",
    *,
    activation_bytes_per_sample: int | None = None,
    dataset_bytes: int = 0,
) -> int:
    """Peak bytes of a training process, by a simple additive model (fp32 everywhere).

    runtime overhead (TORCH_TRAINING_OVERHEAD_MB)
    + params * 4 * (weight + gradient + optimizer slots)
    + batch * (input bytes + activation bytes per sample)
    + dataset_bytes (the local partition held in memory, if any)

    ``activation_bytes_per_sample`` is what the forward pass keeps for backward plus its
    gradients; without it, DEFAULT_ACTIVATION_FACTOR times the input size is assumed.
    """
    if optimizer not in OPTIMIZER_SLOTS:
        raise ConfigError(
            f"unknown optimizer; known: {', '.join(OPTIMIZER_SLOTS)}", optimizer=optimizer
        )
    if model_param_count < 0 or dataset_bytes < 0:
        raise ConfigError("parameter count and dataset bytes must not be negative")
    if batch_size < 1:
        raise ConfigError("batch size must be at least 1", batch_size=batch_size)
    if not sample_shape or any(int(d) < 1 for d in sample_shape):
        raise ConfigError("sample shape must be positive dimensions", shape=tuple(sample_shape))
    input_bytes = math.prod(int(d) for d in sample_shape) * BYTES_PER_FLOAT
    if activation_bytes_per_sample is None:
        activation_bytes_per_sample = DEFAULT_ACTIVATION_FACTOR * input_bytes
    elif activation_bytes_per_sample < 0:
        raise ConfigError("activation bytes per sample must not be negative")
    state = model_param_count * BYTES_PER_FLOAT * (2 + OPTIMIZER_SLOTS[optimizer])
    batch = batch_size * (input_bytes + activation_bytes_per_sample)
    return TORCH_TRAINING_OVERHEAD_MB * MIB + state + batch + dataset_bytes


def memory_guard(
    profile: Profile,
    model_param_count: int,
    sample_shape: Sequence[int],
    batch_size: int,
    optimizer: str = "sgd-momentum",
    *,
    activation_bytes_per_sample: int | None = None,
    dataset_bytes: int = 0,
    force: bool = False,
) -> int:
    """The largest batch size (``batch_size`` halved until it fits) within the budget.

    Raises HardwareError when the profile is infer-only (unless ``force``, for measuring
    whether the decision still holds) or when even batch size 1 does not fit.
    """
    if batch_size < 1:
        raise ConfigError("batch size must be at least 1", batch_size=batch_size)
    if not profile.trains and not force:
        raise HardwareError(
            f"profile {profile.name} is inference-only ({profile.role_reason}); export the "
            "model and run it with mpfl-infer, or choose another profile",
            profile=profile.label,
        )
    budget = profile.train_memory_budget_mb * MIB
    candidate = batch_size
    needed = 0
    while candidate >= 1:
        needed = estimate_training_bytes(
            model_param_count,
            sample_shape,
            candidate,
            optimizer,
            activation_bytes_per_sample=activation_bytes_per_sample,
            dataset_bytes=dataset_bytes,
        )
        if needed <= budget:
            return candidate
        candidate //= 2
    raise HardwareError(
        f"training does not fit on {profile.name} even with batch size 1: needs "
        f"{needed / MIB:.0f} MB, budget {profile.train_memory_budget_mb} MB",
        profile=profile.label,
        params=model_param_count,
        optimizer=optimizer,
    )


def apply_threads(profile: Profile) -> int:
    """Set torch's intra-op threads from the profile, capped at the CPUs present."""
    import torch  # lazy: the rest of this module must stay torch-free

    threads = max(1, min(profile.torch_threads, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    return threads


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


# ---------------------------------------------------------------------------- printing


def format_profile(profile: Profile, links: Mapping[str, Link] | None = None) -> str:
    """A multi-line description of one profile, for ``mpfl hardware show``."""
    links = _packaged_catalog().links if links is None else links
    link = links.get(profile.link)
    link_text = profile.link
    if link is not None:
        link_text += (
            f" ({link.uplink_kbps:g} kbit/s up, {link.downlink_kbps:g} kbit/s down, "
            f"{link.latency_ms:g} ms)"
        )
    rows = [
        ("profile", profile.label),
        ("description", profile.description),
        ("arch", profile.arch),
        ("cores", str(profile.cores)),
        ("ram", f"{profile.ram_mb} MB"),
        ("torch threads", str(profile.torch_threads)),
        ("batch size", str(profile.batch_size)),
        ("train memory budget", f"{profile.train_memory_budget_mb} MB"),
        ("role", profile.role),
        ("why", profile.role_reason),
        ("default link", link_text),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    body = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in body
    )


def format_profile_table(profiles: Iterable[Profile] | Mapping[str, Profile]) -> str:
    """One line per profile, for ``mpfl hardware list``."""
    items = profiles.values() if isinstance(profiles, Mapping) else profiles
    header = (
        "NAME",
        "VER",
        "ARCH",
        "CORES",
        "RAM MB",
        "THREADS",
        "BATCH",
        "BUDGET MB",
        "ROLE",
        "LINK",
    )
    rows = [
        (
            p.name,
            str(p.version),
            p.arch,
            str(p.cores),
            str(p.ram_mb),
            str(p.torch_threads),
            str(p.batch_size),
            str(p.train_memory_budget_mb),
            p.role,
            p.link,
        )
        for p in items
    ]
    return _table(header, rows)


def format_link_table(links: Iterable[Link] | Mapping[str, Link]) -> str:
    """One line per link (effective planning figures)."""
    items = links.values() if isinstance(links, Mapping) else links
    header = ("LINK", "UP KBIT/S", "DOWN KBIT/S", "LATENCY MS", "DESCRIPTION")
    rows = [
        (k.name, f"{k.uplink_kbps:g}", f"{k.downlink_kbps:g}", f"{k.latency_ms:g}", k.description)
        for k in items
    ]
    return _table(header, rows)
