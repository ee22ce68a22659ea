"""``mpfl report`` on real run directories: a short ``mpfl demo`` (4 edge processes, an
embedded broker, the export) and a dense FedAvg ``mpfl simulate``. What the plots draw is
read back from matplotlib's own artists and compared with the run's files, parsed here
independently of the report's code; bad inputs are one line and an exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from apps.cli import main
from apps.report import plots, read_run, write_report
from apps.report.series import node_totals
from mpfl.federation.metrics import RoundLog

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 300.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MPFL = Path(sys.executable).parent / "mpfl"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def _mpfl(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``mpfl`` command (beside this interpreter), as a user runs it."""
    return subprocess.run([str(MPFL), *args], capture_output=True, text=True, env=_env(),
                          timeout=RUN_TIMEOUT_S, check=False)


def _report(*args: str | Path) -> Result:
    """``mpfl report ARGS`` in this process (stderr and stdout both in ``output``)."""
    return CliRunner().invoke(main, ["report", *map(str, args)], prog_name="mpfl")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real runs on the bundled digits: MPFL (with its export) and dense FedAvg."""
    root = tmp_path_factory.mktemp("report-runs")
    mpfl = _mpfl("demo", "--nodes", "2", "--rounds", "2", "3", "--run-dir", str(root / "mpfl"))
    assert mpfl.returncode == 0, mpfl.stdout + mpfl.stderr
    dense = _mpfl("simulate", "--nodes", "2", "--run-dir", str(root / "dense"),
                  "--federation", "dense", "--mask-rounds", "0", "--train-rounds", "4",
                  "--final-sparsity", "0", "--value-codec", "fp32")
    assert dense.returncode == 0, dense.stdout + dense.stderr
    assert f"mpfl report {root / 'dense'}" in dense.stdout  # the next command, suggested
    return {"mpfl": root / "mpfl", "dense": root / "dense"}


@pytest.fixture
def close_figures() -> Iterator[None]:
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _parameters(run_dir: Path) -> tuple[int, dict[str, int], np.ndarray]:
    """(float values in the model, units per weight tensor, mask) from final/model.npz."""
    with np.load(run_dir / "final" / "model.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    mask = arrays.pop("__mask__")
    units = {k: v.size for k, v in arrays.items() if k.endswith("weight") and v.ndim > 1}
    return sum(a.size for a in arrays.values()), units, mask


def _drawn(fig: Any) -> dict[str, tuple[list[float], list[float]]]:
    """Every labelled line of every axes of ``fig``: label -> (x, y)."""
    return {line.get_label(): ([float(v) for v in line.get_xdata()],
                               [float(v) for v in line.get_ydata()])
            for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_the_plotted_series_are_the_runs_metrics(runs: dict[str, Path],
                                                 close_figures: None) -> None:
    run_dir = runs["mpfl"]
    metrics = _lines(run_dir / "metrics.jsonl")
    parameters, units, mask = _parameters(run_dir)
    run = read_run(run_dir)
    figs = plots.figures(run, None)

    evaluated = [m for m in metrics if m["accuracy"] is not None]
    # joint mask rounds (the default) average values too, so every round has a model
    assert len(evaluated) == len(metrics) == 5
    drawn = _drawn(figs["accuracy.png"])
    assert drawn[f"MPFL ({run_dir.name})"] == (
        [float(m["round"]) for m in evaluated],
        pytest.approx([100 * m["accuracy"] for m in evaluated]),
    )

    cumulative = np.cumsum([m["uplink_bytes"] for m in metrics]) / 1e6
    dense = np.cumsum([4 * parameters * len(m["participants"]) for m in metrics]) / 1e6
    # the dense equivalent from the model's size is the coordinator's own dense figure
    assert [4 * parameters * len(m["participants"]) for m in metrics] == \
        [m["dense_uplink_bytes"] for m in metrics]
    at = [i for i, m in enumerate(metrics) if m["accuracy"] is not None]
    accuracy = [100 * metrics[i]["accuracy"] for i in at]
    drawn = _drawn(figs["accuracy_vs_uplink.png"])
    assert drawn[f"MPFL ({run_dir.name}, measured)"] == (
        pytest.approx(list(cumulative[at])), pytest.approx(accuracy))
    assert drawn["dense FedAvg equivalent (same rounds, fp32)"] == (
        pytest.approx(list(dense[at])), pytest.approx(accuracy))
    assert figs["accuracy_vs_uplink.png"].axes[0].get_xscale() == "log"

    bars = [p.get_height() for p in figs["uplink_bits.png"].axes[0].containers[0]]
    assert bars == pytest.approx(
        [8 * m["uplink_bytes"] / (parameters * len(m["participants"])) for m in metrics])
    assert all(b < 32 for b in bars)

    # weight granularity: one unit per element of each weight matrix, in model order
    assert sum(units.values()) == mask.size
    bounds = np.cumsum([0, *units.values()])
    expected = [100 * (1 - mask[a:b].mean()) for a, b in zip(bounds, bounds[1:], strict=False)]
    widths = [p.get_width() for p in figs["layer_sparsity.png"].axes[0].containers[0]]
    assert widths == pytest.approx(expected)

    answered, reported = figs["nodes.png"].axes[:2]
    nodes = sorted({n for m in metrics for n in m["participants"]})
    assert [t.get_text() for t in answered.get_yticklabels()] == nodes
    assert [p.get_width() for p in answered.containers[0]] == \
        [sum(n in m["participants"] for m in metrics) for n in nodes]
    own = _lines(run_dir / "node_metrics.jsonl")
    assert [p.get_width() for p in reported.containers[0]] == pytest.approx(
        [sum(r["upload_bytes"] for r in own if r["node"] == n) / 1e3 for n in nodes])


def test_what_the_nodes_report_adds_up_to_what_the_coordinator_counted(
        runs: dict[str, Path]) -> None:
    run = read_run(runs["mpfl"])
    totals = node_totals(run.rounds, run.node_reports)
    assert run.skipped_node_lines == ()
    assert sum(t.reported_upload_bytes for t in totals) == sum(r.uplink_bytes for r in run.rounds)


def test_the_report_command_writes_the_plots_and_the_summary(runs: dict[str, Path],
                                                             tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs["mpfl"], run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    done = _mpfl("report", str(run_dir))
    assert done.returncode == 0, done.stderr
    out = run_dir / "report"
    names = {"accuracy.png", "accuracy_vs_uplink.png", "uplink_bits.png", "nodes.png",
             "layer_sparsity.png", "report.md"}
    assert {p.name for p in out.iterdir()} == names
    for name in names - {"report.md"}:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
        assert f"wrote {out / name}" in done.stdout
    text = (out / "report.md").read_text()
    metrics = _lines(run_dir / "metrics.jsonl")
    assert f"| final accuracy | {100 * metrics[-1]['accuracy']:.2f}% |" in text
    verify = json.loads((run_dir / "model.verify.json").read_text())
    assert f"| {verify['file_bytes']:,} | {verify['dense_bytes']:,} |" in text
    for name in names - {"report.md"}:
        assert f"]({name})" in text
    rows = [line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and line.split(" | ")[1] in ("mask", "train")]
    assert [(int(r[0].lstrip("| ")), r[1], int(r[6].replace(",", ""))) for r in rows] == \
        [(m["round"], m["phase"], m["uplink_bytes"]) for m in metrics]
    # a report reads the run; it changes nothing in it
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")
            if out not in (p, *p.parents)} == before


def test_a_dense_baseline_is_drawn_as_measured(runs: dict[str, Path], tmp_path: Path,
                                               close_figures: None) -> None:
    run, dense = read_run(runs["mpfl"]), read_run(runs["dense"])
    assert dense.is_dense and not run.is_dense
    figs = plots.figures(run, dense)
    metrics = _lines(runs["dense"] / "metrics.jsonl")
    label = f"dense FedAvg ({runs['dense'].name}, measured)"
    drawn = _drawn(figs["accuracy_vs_uplink.png"])
    assert drawn[label] == (
        pytest.approx(list(np.cumsum([m["uplink_bytes"] for m in metrics]) / 1e6)),
        pytest.approx([100 * m["accuracy"] for m in metrics]))
    assert "dense FedAvg equivalent (same rounds, fp32)" not in drawn
    assert _drawn(figs["accuracy.png"])[label][0] == [float(m["round"]) for m in metrics]
    ratio = sum(m["uplink_bytes"] for m in metrics) / sum(r.uplink_bytes for r in run.rounds)
    assert f"{ratio:.1f}x less than {runs['dense'].name}" in \
        figs["accuracy_vs_uplink.png"].axes[0].get_title()

    result = _report(runs["mpfl"], "--baseline", runs["dense"], "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert f"| baseline `{runs['dense'].name}` | accuracy " in \
        (tmp_path / "r" / "report.md").read_text()


def test_without_matplotlib_the_markdown_is_written_and_says_how_to_get_plots(
        runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = _report(runs["mpfl"], "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "pip install 'mpfl[report]'" in result.output.splitlines()[0]
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
    assert "pip install 'mpfl[report]'" in (tmp_path / "report.md").read_text()


def test_a_stopped_run_reports_the_last_checkpoints_mask(runs: dict[str, Path],
                                                         tmp_path: Path) -> None:
    run_dir = tmp_path / "stopped"
    shutil.copytree(runs["mpfl"], run_dir)
    shutil.rmtree(run_dir / "final")
    stopped, finished = read_run(run_dir), read_run(runs["mpfl"])
    assert stopped.mask_source.startswith("checkpoint/round-")
    assert stopped.layers == finished.layers  # the training rounds keep the mask fixed
    report = write_report(run_dir, tmp_path / "out")
    assert "## Final mask per layer\n\nFrom `checkpoint/round-" in report.markdown.read_text()


def test_a_node_that_said_hello_and_never_answered_is_shown(runs: dict[str, Path],
                                                            tmp_path: Path,
                                                            close_figures: None) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs["mpfl"], run_dir)
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    state["nodes"]["node-9"] = {"samples": 10, "hardware": "rpi4", "online": False}
    (run_dir / "checkpoint" / "state.json").write_text(json.dumps(state))
    run = read_run(run_dir)
    answered = plots.figures(run, None)["nodes.png"].axes[0]
    labels = [t.get_text() for t in answered.get_yticklabels()]
    assert labels[-1] == "node-9" and answered.containers[0][-1].get_width() == 0
    text = write_report(run_dir, tmp_path / "out").markdown.read_text()
    assert f"| `node-9` | rpi4 | 10 | no | 0 / {len(run.rounds)} | 0 | 0 |" in text


def test_forged_node_reports_are_left_out_and_listed(runs: dict[str, Path],
                                                     tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs["mpfl"], run_dir)
    with (run_dir / "node_metrics.jsonl").open("a") as f:
        f.write('{"node": "node-0", "round": "7", "samples": 1, "upload_bytes": 1}\n')
        f.write('{"node": "node-9", "round": 1, "samples": -5, "upload_bytes": 1}\n')
        f.write("not json\n")
    run = read_run(run_dir)
    assert len(run.skipped_node_lines) == 3
    text = write_report(run_dir, tmp_path / "out").markdown.read_text()
    assert "3 line(s) of node_metrics.jsonl are not node reports" in text
    assert "$.round" in text  # the field that was wrong


def _corrupt(run_dir: Path, name: str, content: bytes | None) -> None:
    path = run_dir / name
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)


@pytest.mark.parametrize(("name", "content", "code", "says"), [
    ("config.json", None, 3, "not a run directory: no config.json"),
    ("metrics.jsonl", b'{"round": 1}\n', 3, "metrics line lacks a valid"),
    ("metrics.jsonl", b"\x00garbage\n", 3, "metrics line is not JSON"),
    ("config.json", b'{"mask_rounds": "five"}', 3, "mask_rounds must be int"),
    ("config.json", b'{"colour": "blue"}', 3, "unknown config key 'colour'"),
    ("config.json", b"[1, 2]", 3, "not a JSON object"),
    ("config.json", b'{"model": "mlp", "granularity": "filter"}', 3, "another model"),
    ("summary.json", b'{"phase": 7}', 3, "unexpected content"),
    ("model.verify.json", b'{"format": "packed"}', 3, "unexpected content"),
    ("final/model.npz", b"PK\x03\x04 truncated", 4, "cannot read arrays"),
    ("checkpoint/state.json", b'{"arrays": "../../elsewhere.npz"}', 3, "outside its directory"),
    ("checkpoint/state.json", b'{"arrays": "r.npz", "nodes": {"n": {}}}', 3,
     "missing required field `samples`"),
])
def test_a_bad_run_directory_is_one_line_naming_the_file(
        runs: dict[str, Path], tmp_path: Path, name: str, content: bytes | None, code: int,
        says: str) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs["mpfl"], run_dir)
    _corrupt(run_dir, name, content)
    result = _report(run_dir)
    assert result.exit_code == code, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert result.output.startswith("mpfl: error: ") and says in result.output
    assert str(run_dir) in result.output
    assert not (run_dir / "report").exists()  # nothing half-written


def test_a_missing_or_wrong_directory_is_one_line_from_the_real_command(
        tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    for target, says in [(tmp_path / "nope", "run directory does not exist"),
                         (tmp_path / "a-file", "run directory is not a directory"),
                         (tmp_path / "empty", "not a run directory: no config.json")]:
        done = _mpfl("report", str(target))
        assert done.returncode == 3, done.stderr
        assert done.stderr.startswith(f"mpfl: error: {says}")
        assert done.stderr.endswith(f" (path={target})\n") and done.stderr.count("\n") == 1
        assert done.stdout == ""


def test_a_run_before_its_first_round_is_reported_as_such(runs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    run_dir = tmp_path / "waiting"
    run_dir.mkdir()
    shutil.copy(runs["mpfl"] / "config.json", run_dir)  # all a coordinator writes up front
    result = _report(run_dir)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "No plots: no round has closed in this run yet."
    assert [p.name for p in (run_dir / "report").iterdir()] == ["report.md"]
    assert "| rounds closed | 0 of 5 (2 mask + 3 train) |" in \
        (run_dir / "report" / "report.md").read_text()


def test_an_output_that_cannot_be_written_is_one_line(runs: dict[str, Path],
                                                      tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    result = _report(runs["mpfl"], "--out", tmp_path / "a-file" / "report")
    assert result.exit_code == 3, result.output
    assert result.output.startswith("mpfl: error: cannot write the report: ")
    assert result.output.count("\n") == 1 and str(tmp_path / "a-file") in result.output


def test_a_bad_baseline_is_named(runs: dict[str, Path], tmp_path: Path) -> None:
    result = _report(runs["mpfl"], "--baseline", tmp_path / "missing", "--out", tmp_path / "o")
    assert result.exit_code == 3
    assert result.output == f"mpfl: error: run directory does not exist " \
                            f"(path={tmp_path / 'missing'})\n"
    assert not (tmp_path / "o").exists()


def test_node_totals_count_answers_and_reports_separately() -> None:
    from apps.report.rundir import KnownNode, NodeReport

    rounds = [RoundLog(1, "mask", 0.5, 0.5, ["a", "b"], 10, 0, 80),
              RoundLog(2, "train", 0.5, 0.5, ["a"], 6, 0, 40)]
    reports = [NodeReport("a", 1, 5, 4), NodeReport("a", 2, 5, 6), NodeReport("a", 2, 5, 6),
               NodeReport("b", 1, 9, 6), NodeReport("b", 2, 9, 7), NodeReport("c", 1, 3, 2)]
    known = {"a": KnownNode(50, "rpi4"), "d": KnownNode(7, online=False)}
    totals = {t.node: t for t in node_totals(rounds, reports, known)}
    assert (totals["a"].rounds_answered, totals["a"].reported_upload_bytes) == (2, 10)
    assert (totals["a"].samples, totals["a"].hardware, totals["b"].samples) == (50, "rpi4", 9)
    assert (totals["d"].rounds_answered, totals["d"].online, totals["c"].online) == (0, False,
                                                                                     None)
    # b reported round 2 but was late: answered once, reported twice
    assert (totals["b"].rounds_answered, totals["b"].rounds_reported) == (1, 2)
    assert (totals["c"].rounds_answered, totals["c"].samples) == (0, 3)
