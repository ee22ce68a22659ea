"""Command lines start without torch: help and the device commands import only what they use.

Each case runs in a fresh interpreter (torch, once imported, cannot be unloaded): a small
wrapper calls the command's click entry point with the arguments, catches the SystemExit
click ends with, and reports whether ``torch`` is in ``sys.modules`` and the exit code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpfl.errors import HardwareError

ROOT = Path(__file__).resolve().parents[1]

WRAPPER = """
import contextlib, importlib, io, json, sys
module, attribute, *args = sys.argv[1:]
command = getattr(importlib.import_module(module), attribute)
code = 0
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        command(args, prog_name="mpfl")
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
print(json.dumps({"torch": "torch" in sys.modules, "code": code}))
"""

CASES = [
    pytest.param("apps.cli", "main", ["--help"], id="mpfl --help"),
    pytest.param("apps.cli", "main", ["hardware", "detect"], id="mpfl hardware detect"),
    pytest.param("apps.cli", "main", ["hardware", "list"],
                 id="mpfl hardware list"),
    pytest.param("apps.cli", "main", ["hardware", "show", "rpi4"],
                 id="mpfl hardware show"),
    pytest.param("apps.cli", "main", ["simulate", "--help"],
                 id="mpfl simulate --help"),
    pytest.param("coordinator.cli", "main", ["--help"],
                 id="mpfl-coordinator --help"),
    pytest.param("coordinator.cli", "main", ["run", "--help"],
                 id="mpfl-coordinator run --help"),
    # what `mpfl hardware` runs, without the umbrella command around it
    pytest.param("hardware.cli", "hardware_group", ["detect"], id="hardware detect"),
    pytest.param("hardware.cli", "hardware_group", ["list"], id="hardware list"),
    pytest.param("coordinator.provision.cli", "provision_command", ["--help"],
                 id="provision --help"),
    pytest.param("export.cli", "main", ["--help"], id="mpfl-export --help"),
    pytest.param("export.infer_cli", "main", ["--help"], id="mpfl-infer --help"),
    pytest.param("edge_node.cli", "main", ["--help"], id="mpfl-edge --help"),
    pytest.param("edge_node.cli", "main", ["start", "--help"], id="mpfl-edge start --help"),
]


def _run(module: str, attribute: str, args: list[str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, module, attribute, *args],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("module", "attribute", "args"), CASES)
def test_command_starts_without_torch(module: str, attribute: str, args: list[str]) -> None:
    result = _run(module, attribute, args)
    # detect exits with HardwareError's code on a machine no profile describes
    allowed = {0, HardwareError.exit_code} if "detect" in args else {0}
    assert result["code"] in allowed
    assert result["torch"] is False, f"{' '.join(args)} imported torch"


def test_the_wrapper_sees_torch_when_a_command_loads_it() -> None:
    """The check can fail: a command that builds a model is seen importing torch."""
    result = _run("apps.cli", "main", ["models"])
    assert result == {"torch": True, "code": 0}
