"""``mpfl report``: a run directory turned into PNG plots and a markdown summary.

    rundir.py    the run directory read back into typed values (strict; changes nothing)
    series.py    the numbers every plot and table shows: pure functions of those values
    plots.py     the figures (matplotlib, an optional extra, headless)
    markdown.py  report.md
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apps.report.rundir import RunRecord, read_run
from mpfl.errors import DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Report", "RunRecord", "read_run", "write_report"]


@dataclass(frozen=True)
class Report:
    markdown: Path
    images: tuple[Path, ...]
    plots_note: str | None  # why there are no pictures, when there are none


def write_report(run_dir: str | Path, out_dir: str | Path | None = None,
                 baseline_dir: str | Path | None = None) -> Report:
    """Read the run (and the baseline run), write the plots and ``report.md`` into
    ``out_dir`` (default ``RUN_DIR/report``). Everything is read before anything is
    written, so a bad input leaves no half-written report."""
    from apps.report import markdown, plots

    run = read_run(run_dir)
    baseline = read_run(baseline_dir) if baseline_dir is not None else None
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    figures: dict[str, Figure] = {}
    note = None
    if not run.rounds:
        note = "No plots: no round has closed in this run yet."
    else:
        try:
            figures = plots.figures(run, baseline)
        except plots.PlotsUnavailable as exc:
            note = f"No plots: {exc}."
    path = out / "report.md"
    try:
        out.mkdir(parents=True, exist_ok=True)
        images = tuple(plots.save(figures, out)) if figures else ()
        path.write_text(markdown.render(run, baseline, [p.name for p in images], note),
                        encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot write the report: {exc.strerror or exc}",
                        path=exc.filename or str(out)) from None
    return Report(path, images, note)
