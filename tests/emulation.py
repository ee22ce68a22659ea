"""Run the torch-free runner on CPUs this machine does not have, under qemu-user.

Two targets, set up by ``make emulators`` (tests/setup_export_emulators.sh), used by
the export tests and the export benchmarks:

- ``haswell``: this venv's own Python under ``qemu-x86_64-static -cpu Haswell``: AVX2
  without AVX-512 or VNNI. onnxruntime picks its x86 kernels from CPUID, which qemu
  emulates, so its int8 MatMul takes the saturating u8s8 path of such CPUs.
- ``cortex-a72``: an arm64 Python 3.11 in a sysroot with aarch64 wheels under
  ``qemu-aarch64-static -cpu cortex-a72``: a Raspberry Pi 4's core.

qemu-user leaves /proc/cpuinfo describing the host, which crashes onnxruntime's ARM
detection and misleads ``export.cpu``; each run therefore bind-mounts the target's
cpuinfo in a private mount namespace (``unshare -m``, root only). Timings under
emulation mean nothing; outputs and accuracy do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / ".venv" / "emulators"

# Logits of each model on one .npz's ``x``, written as .npy: one process for all models,
# since starting Python under emulation costs seconds.
_LOGITS = (
    "import sys, numpy as np\n"
    "from export.runner import Runner\n"
    "x = np.load(sys.argv[1])['x']\n"
    "for model, out in zip(sys.argv[2::2], sys.argv[3::2]):\n"
    "    np.save(out, Runner(model, threads=1).predict(x))\n"
)


@dataclass(frozen=True)
class Target:
    name: str
    qemu: str
    cpu: str
    python: str
    cpuinfo: Path
    env: dict[str, str]


def emulators_root() -> Path:
    return Path(os.environ.get("MPFL_EMULATORS", DEFAULT_ROOT))


def target(name: str, root: Path | None = None) -> Target:
    root = root or emulators_root()
    if name == "haswell":
        return Target(name, "qemu-x86_64-static", "Haswell", sys.executable,
                      root / "cpuinfo-haswell", {"PYTHONPATH": str(REPO)})
    if name == "cortex-a72":
        sysroot = root / "sysroot"
        return Target(name, "qemu-aarch64-static", "cortex-a72",
                      str(sysroot / "usr" / "bin" / "python3.11"), root / "cpuinfo",
                      {"QEMU_LD_PREFIX": str(sysroot),
                       "PYTHONPATH": f"{root / 'site'}{os.pathsep}{REPO}"})
    raise ValueError(f"unknown emulation target {name!r} (known: haswell, cortex-a72)")


def unavailable(t: Target) -> str | None:
    """Why ``t`` cannot run here, or None."""
    if shutil.which(t.qemu) is None:
        return f"{t.qemu} is not installed (make emulators)"
    if not Path(t.python).is_file() or not t.cpuinfo.is_file():
        return f"the {t.name} emulator is not set up under {t.cpuinfo.parent} (make emulators)"
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return "binding a cpuinfo for the emulated CPU needs root and unshare"
    return None


def command(t: Target, args: list[str]) -> list[str]:
    """``python ARGS`` on the emulated CPU, with its cpuinfo bound over /proc/cpuinfo."""
    script = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(t.cpuinfo),
            t.qemu, "-cpu", t.cpu, t.python, *args]


def run(t: Target, args: list[str], timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **t.env}
    done = subprocess.run(command(t, args), capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)
    if done.returncode != 0:
        # qemu warns about every CPUID feature TCG lacks; keep the real error visible.
        tail = [line for line in done.stderr.splitlines() if "TCG doesn't support" not in line]
        raise RuntimeError(f"{t.name}: exit {done.returncode}: " + "\n".join(tail[-15:]))
    return done


def logits(t: Target, data: Path, models: list[Path], out_dir: Path,
           timeout: float = 600.0) -> list[Path]:
    """Each model's logits on ``data``'s ``x`` (an .npz), computed on the emulated CPU."""
    outs = [out_dir / f"{m.name}.{t.name}.npy" for m in models]
    pairs = [str(p) for m, o in zip(models, outs, strict=True) for p in (m, o)]
    run(t, ["-c", _LOGITS, str(data), *pairs], timeout)
    return outs


def infer_json(t: Target, model: Path, data: Path, timeout: float = 600.0) -> dict[str, object]:
    """``mpfl-infer MODEL --input DATA --json`` on the emulated CPU."""
    done = run(t, ["-m", "export.infer_cli", str(model), "--input", str(data), "--json",
                   "--show", "0", "--threads", "1"], timeout)
    doc: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return doc


def describe(t: Target) -> str:
    """``export.cpu``'s description of the emulated CPU, as the runner there sees it."""
    code = "from export.cpu import cpu_info; print(cpu_info().describe())"
    return run(t, ["-c", code], timeout=120).stdout.strip()
