"""``mpfl-export`` end to end: files, report, and one clear line per user mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _export_helpers import random_filter_mask
from click.testing import CliRunner, Result

from export import report as report_module
from export.cli import main
from export.report import Tolerance
from mpfl.ml.checkpoint import SavedModel, save_model
from mpfl.ml.masks import local_mask, unit_scores
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.units import build_unit_map, model_state

DIGITS_MLP = ModelSpec("mlp", {"image_size": 8, "hidden": [64, 32]})


def _checkpoint(directory: Path, granularity: str, meta: dict | None = None) -> Path:
    """A digits MLP at 50% (filters) or 90% (weights) sparsity, saved as a run would."""
    model = build_model(DIGITS_MLP, seed=0)
    unit_map = build_unit_map(model, DIGITS_MLP, granularity)
    state = model_state(model)
    if granularity == "filter":
        mask = random_filter_mask(unit_map.n_units, unit_map.slices, 0.5, seed=0)
    else:
        mask = local_mask(unit_scores(state, unit_map), unit_map.full_mask(), unit_map.slices, 0.9)
    saved = SavedModel(DIGITS_MLP, granularity, state, mask, meta or {"dataset": "digits"})
    save_model(directory, saved)
    return directory


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--latency-runs", "2"], prog_name="mpfl-export")


def test_export_from_a_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _checkpoint(run / "final", "filter")
    out = tmp_path / "deploy" / "model.onnx"
    result = _invoke(str(run), "--out", str(out), "--compress", "zstd", "--int8")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout and "digits test split" in result.stdout
    assert (tmp_path / "deploy" / "model.onnx.zst").is_file()
    doc = json.loads((tmp_path / "deploy" / "model.verify.json").read_text())
    assert doc["format"] == "pruned" and doc["precision"] == "int8" and doc["passed"]
    assert doc["accuracy_onnx"] is not None


def test_auto_reports_what_it_weighed(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt", "weight")
    result = _invoke(str(ckpt), "--out", str(tmp_path / "m.onnx"))
    assert result.exit_code == 0, result.output
    assert "auto chose packed" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--format", "pruned"], 7, "filter-granularity mask"),
        (["--opset", "9"], 2, "opset"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent/data"], 3, "does not exist"),
    ],
)
def test_user_mistakes_give_one_line_and_an_exit_code(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt", "weight")
    result = _invoke(str(ckpt), "--out", str(tmp_path / "m.onnx"), *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_missing_checkpoint(tmp_path: Path) -> None:
    result = _invoke(str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx"))
    assert result.exit_code == 4
    assert result.stderr.startswith("mpfl-export: error: no model.json")


def test_unavailable_run_dataset_falls_back_to_synthetic_inputs(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt", "weight", meta={"dataset": "mnist",
                                                          "data_dir": str(tmp_path / "gone")})
    result = _invoke(str(ckpt), "--out", str(tmp_path / "m.onnx"))
    assert result.exit_code == 0, result.output
    assert "synthetic" in result.stderr and "PASS" in result.stdout


def test_failed_verification_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    impossible = Tolerance(max_rel_diff=-1.0, tie_margin=0.0, min_top1_agreement=1.0,
                           max_accuracy_drop=0.0)
    monkeypatch.setitem(report_module.TOLERANCES, "fp32", impossible)
    ckpt = _checkpoint(tmp_path / "ckpt", "weight")
    result = _invoke(str(ckpt), "--out", str(tmp_path / "m.onnx"))
    assert result.exit_code == 7
    assert "FAIL" in result.stdout and "verification failed" in result.stderr
    assert json.loads((tmp_path / "m.verify.json").read_text())["passed"] is False


def test_console_script_runs_as_a_real_process(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt", "weight")
    script = Path(sys.executable).with_name("mpfl-export")
    done = subprocess.run(
        [str(script), str(ckpt), "--out", str(tmp_path / "m.onnx"), "--latency-runs", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "PASS" in done.stdout
    assert np.isfinite(json.loads((tmp_path / "m.verify.json").read_text())["max_abs_diff"])
