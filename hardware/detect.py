"""Which profile this machine is: the device tree's board name and the RAM the kernel sees;
and what the machine itself has (``read_machine``), shown beside the profile it matched.

Reads plain files (``/proc/device-tree/model``, ``/proc/meminfo``, ``/proc/cpuinfo``), so
tests point it at fake ones and it runs on a board with nothing but Python installed.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hardware.catalog import Profile, load_profiles

# Detection keeps a variant only if the kernel sees at least this share of its nominal RAM
# (MemTotal excludes the GPU split, firmware and kernel reservations).
_DETECT_RAM_SHARE = 0.75


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


# CPU features that decide how fast (and whether bit-exactly) torch and onnxruntime run:
# x86 vector widths and int8 dot products, ARM's NEON (asimd), dot product and fp16.
ML_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni",
                "amx_int8", "asimd", "asimddp", "asimdhp", "fphp", "sve", "i8mm")


@dataclass(frozen=True)
class Machine:
    """What this machine has, as the kernel reports it (None: not readable here)."""

    arch: str
    cores: int
    ram_mb: float | None
    cpu: str | None
    board: str | None
    flags: tuple[str, ...]  # every CPU flag the kernel lists

    @property
    def ml_flags(self) -> tuple[str, ...]:
        return tuple(f for f in ML_CPU_FLAGS if f in self.flags)


def _cpuinfo_field(text: str, *keys: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys and value.strip():
            return value.strip()
    return None


def read_machine(
    model_path: str | Path = "/proc/device-tree/model",
    meminfo_path: str | Path = "/proc/meminfo",
    cpuinfo_path: str | Path = "/proc/cpuinfo",
    *,
    machine: str | None = None,
    cores: int | None = None,
) -> Machine:
    """This machine: architecture, the cores this process may use, RAM, CPU and its flags
    (x86 ``flags``, ARM ``Features``)."""
    info = _read_text(cpuinfo_path) or ""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Machine(
        arch=platform.machine() if machine is None else machine,
        cores=cores if cores is not None else usable or 1,
        ram_mb=read_mem_total_mb(meminfo_path),
        cpu=_cpuinfo_field(info, "model name", "Model", "Hardware", "CPU part"),
        board=read_device_model(model_path),
        flags=tuple(sorted(set((_cpuinfo_field(info, "flags", "Features") or "").split()))),
    )


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
