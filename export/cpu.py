"""Which CPU ran an export: its model and the flags that select onnxruntime's int8 kernels.

Reported beside every verification and benchmark, since the same int8 file runs through
different integer kernels on x86 with VNNI, x86 with AVX2 only, and ARM64. Standard
library only: the runner imports it on the device.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

# The x86 flags that decide onnxruntime's u8s8 MatMulInteger kernel.
X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


@dataclass(frozen=True)
class CpuInfo:
    machine: str  # x86_64, aarch64, ...
    model: str
    flags: tuple[str, ...]  # the relevant ones present: X86_FLAGS, or ARM features

    @property
    def kernel_class(self) -> str:
        """The int8 kernel family onnxruntime uses on this CPU."""
        if self.machine in ("x86_64", "AMD64", "i686"):
            if any(f in self.flags for f in VNNI_FLAGS):
                return "x86 with VNNI"
            return "x86 with AVX2, no VNNI" if "avx2" in self.flags else "x86 without AVX2"
        if self.machine in ("aarch64", "arm64"):
            return "ARM64"
        return self.machine

    @property
    def saturating_u8s8(self) -> bool:
        """True where u8 x s8 pair sums clip to int16 (VPMADDUBSW without VNNI)."""
        return self.kernel_class == "x86 with AVX2, no VNNI"

    def describe(self) -> str:
        flags = " ".join(self.flags) if self.flags else "none of the int8 flags"
        return f"{self.model} ({self.machine}; {flags}; {self.kernel_class})"


def _fields(text: str) -> dict[str, str]:
    """The first value of each ``key : value`` line (the first core describes them all)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip().lower(), value.strip())
    return out


def cpu_info(cpuinfo: str | None = None, machine: str | None = None) -> CpuInfo:
    """This CPU, from /proc/cpuinfo (or the given text, for tests)."""
    machine = machine or platform.machine()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = _fields(cpuinfo)
    if machine in ("aarch64", "arm64"):
        part = fields.get("cpu part", "?")
        model = fields.get("model") or f"ARM implementer {fields.get('cpu implementer', '?')} " \
                                       f"part {part}"
        features = tuple(fields.get("features", "").split())
        return CpuInfo(machine, f"{model} (CPU part {part})", features)
    present = set(fields.get("flags", "").split())
    model = fields.get("model name") or platform.processor() or "unknown CPU"
    return CpuInfo(machine, model, tuple(f for f in X86_FLAGS if f in present))
