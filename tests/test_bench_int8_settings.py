"""The int8 settings benchmark's table: a setting gets a cell per CPU only when some CPU
computed other integers, and those cells are the bold ones. (The benchmark itself needs
MNIST and the emulators and takes minutes: BENCHMARKS.md runs it.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest


def _bench_module() -> Any:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_int8_settings.py"
    spec = importlib.util.spec_from_file_location("bench_int8_settings", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_int8_settings"] = module
    spec.loader.exec_module(module)
    return module


def _result(rel: float, agree: float, gap: float) -> dict[str, Any]:
    return {"rel_max_diff": rel, "top1_agreement": agree, "accuracy_delta": None,
            "rel_max_diff_to_native": gap, "same_as_native": gap <= 1e-4}


def test_only_settings_that_differ_between_cpus_get_a_cell_per_cpu() -> None:
    bench = _bench_module()
    cpus = bench.CPUS
    rows = []
    for setting in bench.SETTINGS:
        clips = setting.key == "qint8"
        per_cpu = {c: _result(0.115 if clips and c == "haswell" else 0.006,
                              0.953 if clips and c == "haswell" else 1.0,
                              0.1 if clips and c == "haswell" else 0.0) for c in cpus}
        rows.append({"case": "m", "model": "an MLP", "setting": setting.key, "cpus": per_cpu,
                     "same_on_every_cpu": all(r["same_as_native"] for r in per_cpu.values())})
    header, _, line = bench.markdown(rows, cpus).splitlines()
    assert "QInt8 (old): this CPU / AVX2 only / A72 |" in header
    assert "QInt8 7-bit per column (new) |" in header
    assert line == ("| an MLP | 0.006 100% / **0.115 95.3%** / 0.006 100% | 0.006 100% "
                    "| 0.006 100% | 0.006 100% |")


def test_bench_requires_a_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPFL_DATA_DIR", raising=False)
    with pytest.raises(SystemExit):
        _bench_module().main(["--native-only"])
