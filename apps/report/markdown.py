"""``report.md``: the run's figures as tables, beside the pictures when there are any."""

from __future__ import annotations

import json
from collections.abc import Sequence

from apps.report import series as S
from apps.report.rundir import RunRecord


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _mb(n: float) -> str:
    return f"{n / S.MB:.3f}"


def _saving(ratio: float | None) -> str:
    if ratio is None:
        return ""
    if ratio >= 1.05:
        return f" ({ratio:.1f}x what this run sent)"
    return f" ({ratio:.2f}x what this run sent: no saving)"


def _overview(run: RunRecord, baseline: RunRecord | None) -> str:
    cfg = run.config
    sent = sum(r.uplink_bytes for r in run.rounds)
    dense = sum(S.dense_bytes(run.rounds, run.parameters))
    ratio = S.savings(run)
    rows = [
        ["federation", f"`{cfg.federation}`"],
        ["model", f"{cfg.model}{' ' + json.dumps(cfg.model_args) if cfg.model_args else ''}, "
                  f"{run.parameters:,} values, {cfg.granularity} masks"],
        ["rounds closed", f"{len(run.rounds)} of {cfg.mask_rounds + cfg.train_rounds} "
                          f"({cfg.mask_rounds} mask + {cfg.train_rounds} train)"],
        ["final accuracy", _pct(S.final_accuracy(run))],
        ["final sparsity", _pct(run.rounds[-1].sparsity if run.rounds else None)
         + f" (target {_pct(cfg.final_sparsity)})"],
        ["uplink, all nodes", f"{_mb(sent)} MB"],
        ["same rounds as dense fp32", f"{_mb(dense)} MB" + _saving(ratio)],
        ["downlink, all nodes", f"{_mb(sum(r.downlink_bytes for r in run.rounds))} MB"],
    ]
    if run.summary is not None:
        rows.append(["state", run.summary.phase + (f": {run.summary.error}"
                                                    if run.summary.error else "")])
        dropped = ", ".join(f"{k} {v}" for k, v in run.summary.dropped.items()) or "none"
        rows.append(["messages dropped", dropped])
    if baseline is not None:
        base_sent = sum(r.uplink_bytes for r in baseline.rounds)
        rows.append([f"baseline `{baseline.name}`",
                     f"accuracy {_pct(S.final_accuracy(baseline))}, uplink {_mb(base_sent)} MB"
                     + (f" ({base_sent / sent:.1f}x this run's)" if sent else "")])
        if baseline.config.model_spec != cfg.model_spec:
            rows.append(["note", f"the baseline trains another model ({baseline.config.model} "
                                 f"{json.dumps(baseline.config.model_args)})"])
    return _table(["", ""], rows)


def _rounds(run: RunRecord) -> str:
    cumulative = S.cumulative_uplink_mb(run.rounds)
    dense = S.dense_bytes(run.rounds, run.parameters)
    series = S.bits_per_parameter(run.rounds, run.parameters)
    per_round = dict(zip(series.x, series.y, strict=True))
    rows = []
    for r, total, d in zip(run.rounds, cumulative, dense, strict=True):
        bits = per_round.get(float(r.round))
        rows.append([str(r.round), r.phase, _pct(r.target_sparsity), _pct(r.sparsity),
                     _pct(r.accuracy), f"{len(r.participants)}", f"{r.uplink_bytes:,}",
                     f"{d:,}", f"{total:.3f}", "-" if bits is None else f"{bits:.3f}"])
    return _table(["round", "phase", "target", "sparsity", "accuracy", "answers",
                   "uplink B", "dense B", "cum. uplink MB", "bits/param/node"], rows)


def _layers(run: RunRecord) -> str:
    if not run.layers:
        return f"No mask on disk: {run.mask_source}."
    rows = [[f"`{layer.tensor}`", f"{layer.units:,}", f"{layer.pruned:,}",
             _pct(layer.sparsity)] for layer in run.layers]
    return (f"From `{run.mask_source}` ({run.config.granularity} units).\n\n"
            + _table(["tensor", "units", "pruned", "sparsity"], rows))


def _nodes(run: RunRecord) -> str:
    totals = S.node_totals(run.rounds, run.node_reports, run.known_nodes)
    if not totals:
        return "No node said hello."
    online = {True: "yes", False: "no", None: "-"}
    rows = [[f"`{t.node}`", t.hardware, f"{t.samples:,}", online[t.online],
             f"{t.rounds_answered} / {len(run.rounds)}", str(t.rounds_reported),
             f"{t.reported_upload_bytes:,}"] for t in totals]
    text = ("Hardware, samples, online (at the last checkpoint) and rounds answered are the "
            "coordinator's; rounds reported and upload bytes are what each node said of "
            "itself (`node_metrics.jsonl`).\n\n"
            + _table(["node", "hardware", "samples", "online", "rounds answered",
                      "rounds reported", "uplink B (reported)"], rows))
    if run.skipped_node_lines:
        shown = "\n".join(f"- {line}" for line in run.skipped_node_lines[:5])
        more = len(run.skipped_node_lines) - 5
        text += (f"\n\n{len(run.skipped_node_lines)} line(s) of node_metrics.jsonl are not "
                 f"node reports and were left out:\n{shown}"
                 + (f"\n- ... and {more} more" if more > 0 else ""))
    return text


def _exports(run: RunRecord) -> str:
    if not run.exports:
        return "Not exported in this directory (`mpfl-export RUN_DIR --out RUN_DIR/model.onnx`)."
    rows = [[f"`{e.model}`", e.format, e.precision, f"{e.file_bytes:,}", f"{e.dense_bytes:,}",
             f"{e.dense_bytes / e.file_bytes:.1f}x" if e.file_bytes else "-",
             _pct(e.accuracy_onnx), "passed" if e.passed else "FAILED"] for e in run.exports]
    return _table(["file", "format", "precision", "bytes", "dense ONNX bytes", "smaller by",
                   "accuracy (onnxruntime)", "verification"], rows)


def render(run: RunRecord, baseline: RunRecord | None, images: Sequence[str],
           plots_note: str | None) -> str:
    parts = [f"# Run report: `{run.name}`", _overview(run, baseline)]
    if not run.rounds:
        return "\n\n".join([*parts, f"*{plots_note}*"]) + "\n"
    if images:
        parts += [f"![{name.removesuffix('.png')}]({name})" for name in images]
    if plots_note:
        parts.append(f"*{plots_note}*")
    parts += ["## Rounds",
              "Bytes are the coordinator's counts of accepted uploads; dense B is what the "
              "answering nodes would have sent as fp32 updates of every model value "
              f"({run.parameters:,} x 4 B each); 32 bits per parameter is dense.",
              _rounds(run),
              "## Final mask per layer", _layers(run),
              "## Nodes", _nodes(run),
              "## Export", _exports(run)]
    return "\n\n".join(parts) + "\n"
