"""The coordinator's checkpoint: what a closed round leaves behind, to arrays and back.

:class:`Saved` is everything a restarted coordinator needs to go on (mask, vote history,
global values, the server optimizer's momentum, nodes, counters, the round log).
``encode_snapshot`` turns it into plain arrays (saved with ``np.savez``, no pickle) and a
JSON-able dict; ``decode_snapshot``
checks them against the model and turns them back, or raises ModelError naming what
does not fit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpfl.choices import Phase
from mpfl.errors import ModelError
from mpfl.federation.metrics import RoundLog
from mpfl.federation.rounds import NodeInfo
from mpfl.ml.units import UnitMap

SNAPSHOT_VERSION = 1
FINISHED = (Phase.DONE, Phase.FAILED)


@dataclass
class Saved:
    run_id: str
    status: str  # running, done or failed
    round: int
    error: str | None
    mask: np.ndarray
    history: np.ndarray
    global_values: np.ndarray | None
    server_state: np.ndarray | None  # the server optimizer's (FedAvgM's momentum)
    nodes: dict[str, NodeInfo]
    dropped: Counter[str]
    uplink: int
    downlink: int
    log: list[RoundLog]

    @property
    def closed_round(self) -> int:
        return self.log[-1].round if self.log else 0


def encode_snapshot(
    saved: Saved, config: dict[str, Any], fingerprint: bytes
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {"mask": saved.mask.astype(bool), "history": np.asarray(saved.history)}
    if saved.global_values is not None:
        arrays["global_values"] = np.asarray(saved.global_values, dtype=np.float32)
    if saved.server_state is not None:
        arrays["server_state"] = np.asarray(saved.server_state, dtype=np.float32)
    meta = {
        "version": SNAPSHOT_VERSION,
        "config": config,
        "fingerprint": fingerprint.hex(),
        "run_id": saved.run_id,
        "status": saved.status,
        "round": saved.round,
        "closed_round": saved.closed_round,
        "error": saved.error,
        "nodes": {n: {"samples": info.samples, "hardware": info.hardware, "online": info.online}
                  for n, info in sorted(saved.nodes.items())},
        "dropped": dict(sorted(saved.dropped.items())),
        "uplink": saved.uplink,
        "downlink": saved.downlink,
        "log": [entry.to_dict() for entry in saved.log],
    }
    return arrays, meta


def decode_snapshot(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], unit_map: UnitMap
) -> Saved:
    """What ``encode_snapshot`` wrote, checked against ``unit_map``; ModelError if unfit."""
    if meta.get("version") != SNAPSHOT_VERSION:
        raise ModelError("unsupported checkpoint version", version=meta.get("version"))
    if meta.get("fingerprint") != unit_map.fingerprint.hex():
        raise ModelError("checkpoint is for another model or granularity",
                         fingerprint=meta.get("fingerprint"))
    try:
        mask = np.asarray(arrays["mask"]).astype(bool)
        history = np.asarray(arrays["history"], dtype=np.float64)
        unit_map.check_mask(mask)
        if history.shape != mask.shape:
            raise ModelError("checkpoint vote history does not match the mask")
        values = None
        if "global_values" in arrays:
            values = np.asarray(arrays["global_values"], dtype=np.float32)
            if values.shape != (sum(unit_map.layer_sizes(mask)),):
                raise ModelError("checkpoint values do not match the mask")
        server_state = None
        if "server_state" in arrays:
            server_state = np.asarray(arrays["server_state"], dtype=np.float32)
            if values is None or server_state.shape != values.shape:
                raise ModelError("checkpoint server optimizer state does not match the values")
        saved = Saved(
            run_id=str(meta["run_id"]),
            status=str(meta["status"]),
            round=int(meta["round"]),
            error=meta.get("error"),
            mask=mask,
            history=history,
            global_values=values,
            server_state=server_state,
            nodes={str(n): NodeInfo(int(d["samples"]), str(d.get("hardware", "unknown")),
                                    bool(d.get("online", True)))
                   for n, d in dict(meta.get("nodes", {})).items()},
            dropped=Counter({str(k): int(v) for k, v in meta["dropped"].items()}),
            uplink=int(meta["uplink"]),
            downlink=int(meta["downlink"]),
            log=[RoundLog.from_dict(d) for d in meta["log"]],
        )
        closed = int(meta["closed_round"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"malformed checkpoint: {exc}") from exc
    if closed != saved.closed_round:
        raise ModelError("checkpoint round log is inconsistent", closed_round=closed)
    return saved
