"""The run directory: config, per-round metrics, the resumable checkpoint, the final model.

    <run_dir>/config.json            the federation config this run uses
    <run_dir>/checkpoint/state.json  the latest snapshot's description, written last
    <run_dir>/checkpoint/round-NNNN.npz   its arrays (np.savez, read with allow_pickle=False)
    <run_dir>/metrics.jsonl          one closed round per line (RoundLog), rewritten whole
    <run_dir>/node_metrics.jsonl     what known nodes reported about their training (capped)
    <run_dir>/summary.json           totals: phase, dropped by reason, bytes by kind
    <run_dir>/final/                 the final model (``mpfl.ml.checkpoint.save_model``)

Every file is written atomically (temp file, fsync, rename). A snapshot's arrays go to a
new file named by round before ``state.json`` points at them, so a crash at any moment
leaves the previous consistent checkpoint in place. metrics.jsonl is regenerated from the
checkpoint's round log, so each round appears exactly once even across restarts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from mpfl.config.settings import FederationConfig
from mpfl.errors import ConfigError, ForeignRunDir, ModelError
from mpfl.federation.server import FederationServer
from mpfl.ml.checkpoint import SavedModel, atomic_write, read_npz, save_model, write_json, write_npz

# Fault injection for benchmarks/bench_faults.py: with this set to a path, every checkpoint
# write stops with its bytes written and synced, right before the rename that commits them,
# creates that file (holding "arrays|state <round>") and waits until it is removed; so a
# `kill -9` sent while the file exists provably lands inside the write. Unset: no cost.
PAUSE_ENV = "MPFL_FAULT_PAUSE_FILE"
PAUSE_MAX_S = 60.0

# Keys a resumed run may change: they steer the round timing, not its results.
# node_metrics.jsonl stops growing here (a run of 1,000 rounds x 100 nodes x ~300 B fits).
NODE_METRICS_LIMIT = 64 << 20

OPERATIONAL_KEYS = frozenset({"round_timeout", "start_timeout", "retries", "quorum", "min_nodes"})


class RunStore:
    def __init__(self, run_dir: Path, node_metrics_limit: int = NODE_METRICS_LIMIT) -> None:
        self.root = run_dir
        self.checkpoint_dir = run_dir / "checkpoint"
        self.node_metrics_limit = node_metrics_limit
        self._metrics_size: int | None = None  # node_metrics.jsonl's, read once

    @property
    def state_path(self) -> Path:
        return self.checkpoint_dir / "state.json"

    def has_checkpoint(self) -> bool:
        return self.state_path.is_file()

    def check_config(self, cfg: FederationConfig) -> None:
        """Refuse to resume a run under a config that changes its results."""
        path = self.root / "config.json"
        if not path.is_file():
            return
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable config.json in the run directory: {exc}",
                              path=str(path)) from exc
        current = cfg.to_dict()
        theirs = stored.get("federation") if isinstance(stored, dict) else None
        if theirs is not None and theirs != cfg.federation:
            raise ForeignRunDir(f"the run directory belongs to federation {theirs!r}, not "
                                f"{cfg.federation!r}; use another --run-dir (or "
                                f"--federation {theirs} to resume that run)", path=str(self.root))
        changed = sorted(k for k in current if k not in OPERATIONAL_KEYS
                         and k in stored and stored[k] != current[k])
        if changed:
            raise ConfigError("the run directory holds a run with another config; use a new "
                              f"--run-dir or the same settings (differs: {', '.join(changed)})",
                              path=str(self.root))

    def write_config(self, cfg: FederationConfig) -> None:
        write_json(self.root / "config.json", cfg.to_dict())

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self.discard_partial_writes()
        try:
            meta = json.loads(self.state_path.read_text())
            arrays_name = str(meta["arrays"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"unreadable checkpoint: {exc}", path=str(self.state_path)) from exc
        if "/" in arrays_name or arrays_name.startswith("."):
            raise ModelError("checkpoint points outside its directory", path=str(self.state_path))
        return read_npz(self.checkpoint_dir / arrays_name), meta

    def discard_partial_writes(self) -> list[Path]:
        """Remove the temp files of writes that a killed coordinator never renamed.

        ``atomic_write`` writes ``.<name>.<random>`` beside its target and renames it; a
        kill between the two leaves the temp file, which nothing reads and each such kill
        would add to. A run directory has one coordinator, so on resume none is in flight.
        """
        stale = [p for p in self.checkpoint_dir.glob(".*") if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def save(self, server: FederationServer, extra: dict[str, Any]) -> None:
        """Checkpoint, then the files derived from it (metrics, summary)."""
        arrays, meta = server.snapshot()
        name = f"round-{server.closed_round:04d}.npz"
        if os.environ.get(PAUSE_ENV):
            self._save_pausing(server.closed_round, name, arrays, {**meta, "arrays": name})
        else:
            write_npz(self.checkpoint_dir / name, arrays)
            # One line: a checkpoint of 10,000 nodes is written before every round opens.
            write_json(self.state_path, {**meta, "arrays": name}, indent=None)
        for old in self.checkpoint_dir.glob("round-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)
        self.write_metrics(server)
        self.write_summary(server, extra)

    def _save_pausing(self, closed: int, name: str, arrays: dict[str, np.ndarray],
                      meta: dict[str, Any]) -> None:
        """``save``'s two writes, each pausing before its rename (see ``PAUSE_ENV``)."""
        state = json.dumps(meta, sort_keys=True).encode()

        def arrays_then_pause(f: IO[bytes]) -> None:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            _pause_before_rename(f, f"arrays {closed}")

        def state_then_pause(f: IO[bytes]) -> None:
            f.write(state)
            _pause_before_rename(f, f"state {closed}")

        atomic_write(self.checkpoint_dir / name, arrays_then_pause)
        atomic_write(self.state_path, state_then_pause)

    def write_metrics(self, server: FederationServer) -> None:
        lines = "".join(json.dumps(e.to_dict(), sort_keys=True) + "\n" for e in server.log)
        # Derived from the checkpoint: atomic, but not worth an fsync on the round's path.
        atomic_write(self.root / "metrics.jsonl", lambda f: f.write(lines.encode()), False)

    def write_summary(self, server: FederationServer, extra: dict[str, Any]) -> None:
        last = server.log[-1] if server.log else None
        write_json(self.root / "summary.json", {
            "federation": server.cfg.federation,
            "phase": server.phase,
            "error": server.error,
            "rounds_closed": server.closed_round,
            "rounds_total": server.total_rounds,
            "sparsity": server.sparsity(),
            "accuracy": last.accuracy if last else None,
            "uplink_bytes": sum(e.uplink_bytes for e in server.log),
            "downlink_bytes": sum(e.downlink_bytes for e in server.log),
            "dense_uplink_bytes": sum(e.dense_uplink_bytes for e in server.log),
            "dropped": dict(sorted(server.dropped.items())),
            **extra,
        }, durable=False)

    def append_node_metrics(self, node_id: str, doc: dict[str, Any]) -> bool:
        """One line for a node's report; False (nothing written) once the file would pass
        ``node_metrics_limit`` bytes."""
        path = self.root / "node_metrics.jsonl"
        # The topic's node id wins over any "node" key the document carries.
        line = (json.dumps({**doc, "node": node_id}, sort_keys=True) + "\n").encode()
        if self._metrics_size is None:
            self._metrics_size = path.stat().st_size if path.is_file() else 0
        if self._metrics_size + len(line) > self.node_metrics_limit:
            return False
        with path.open("ab") as f:
            f.write(line)
        self._metrics_size += len(line)
        return True

    def save_final(self, server: FederationServer, meta: dict[str, Any]) -> Path:
        cfg = server.cfg
        last = server.log[-1] if server.log else None
        saved = SavedModel(cfg.model_spec, cfg.granularity, server.final_state(), server.mask, {
            "dataset": cfg.eval_dataset or None,
            "data_dir": cfg.eval_data_dir or None,
            "accuracy": last.accuracy if last else None,
            "loss": last.loss if last else None,
            "sparsity": server.sparsity(),
            "federation": cfg.federation,
            "rounds": server.closed_round,
            **meta,
        })
        save_model(self.root / "final", saved)
        return self.root / "final"


def _pause_before_rename(f: IO[bytes], what: str) -> None:
    f.flush()
    os.fsync(f.fileno())  # what is left of the write is the rename (and a no-op flush)
    marker = Path(os.environ[PAUSE_ENV])
    marker.write_text(what)
    deadline = time.monotonic() + PAUSE_MAX_S
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
