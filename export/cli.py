"""``mpfl-export``: a run's final model to a small ONNX file, verified before it is trusted.

Only parses options and calls ``export.verify.export_and_verify``; prints the report and
exits non-zero (ExportError's code) when a check fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from export.options import COMPRESSIONS, DEFAULT_OPSET, FORMATS, ExportOptions
from mpfl.errors import ExportError, MpflError, reports_errors
from mpfl.ml.data import DATASETS

PROG = "mpfl-export"


def _verification_source(
    meta: dict[str, object], dataset: str | None, data_dir: Path | None
) -> tuple[str | None, str | Path | None, bool]:
    """(dataset, data dir, chosen by the user) for the check: flags first, then the run's."""
    if dataset is not None:
        return dataset, data_dir, True
    from_run = meta.get("dataset")
    run_dir = meta.get("data_dir")
    return (
        str(from_run) if isinstance(from_run, str) else None,
        data_dir if data_dir is not None else (str(run_dir) if isinstance(run_dir, str) else None),
        False,
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Where to write the model (model.onnx; .zst is added with --compress zstd).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="auto: pruned for filter masks, else the smallest of packed/sparse/dense.")
@click.option("--int8", is_flag=True, help="Quantize weights to int8.")
@click.option("--compress", type=click.Choice(COMPRESSIONS), default="none", show_default=True)
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True)
@click.option("--dataset", type=click.Choice(DATASETS), default=None,
              help="Test set to verify on (default: the run's own dataset).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              envvar="MPFL_DATA_DIR", help="Dataset directory (env MPFL_DATA_DIR).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Compare on the first N test images only (default: all).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="onnxruntime threads while timing.")
@click.option("--latency-runs", type=click.IntRange(min=0), default=20, show_default=True,
              help="Timed runs per batch size (0: skip timing).")
@reports_errors
def main(
    source: Path, out: Path, fmt: str, int8: bool, compress: str, opset: int,
    dataset: str | None, data_dir: Path | None, limit: int | None, threads: int,
    latency_runs: int,
) -> None:
    """Export the model of SOURCE (a run directory or checkpoint) to ONNX and verify it."""
    # torch loads here, not at import: a spawned verification worker re-imports this
    # module as its __main__ and needs none of it.
    from export.verify import export_and_verify, verification_data
    from mpfl.ml.checkpoint import load_model

    options = ExportOptions(format=fmt, int8=int8, compress=compress, opset=opset)
    saved = load_model(source)
    name, directory, explicit = _verification_source(saved.meta, dataset, data_dir)
    try:
        data = verification_data(saved.spec, name, directory, limit)
    except MpflError as exc:
        if explicit:
            raise
        click.echo(f"{PROG}: note: the run's test set is not available ({exc}); "
                   "verifying on synthetic inputs", err=True)
        name = None
        data = verification_data(saved.spec, None, None, limit)
    result, report = export_and_verify(saved, out, options, data, dataset=name,
                                       threads=threads, latency_runs=latency_runs)
    click.echo(report.table())
    if result.note:
        click.echo(f"note: {result.note}")
    if result.candidates:
        weighed = ", ".join(f"{f} {n / 1024:.1f} KiB" for f, n in result.candidates)
        click.echo(f"auto chose {result.format} from: {weighed}")
    click.echo(f"wrote {result.path}")
    if not report.passed:
        raise ExportError("verification failed", failures=len(report.failures))


if __name__ == "__main__":
    sys.exit(main())
