"""``mpfl data split``: each node's share of a dataset as the ``train.npz`` a node reads.

A node on a real fleet holds only its own data, as arrays ``x`` (N x C x H x W float32,
normalised exactly as the toolkit's loaders do) and ``y`` (int64 labels), read by
``mpfl-edge start --dataset npz --data-dir DIR``. The shares are the ones
``mpfl-edge start --partition I/N`` would take, so a fleet trained from these files sees
the same data as ``mpfl simulate`` with the same scheme and seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_node.agent import load_node_data
from mpfl.errors import ConfigError, DataError
from mpfl.wire.topics import validate_name


def split_for_nodes(
    dataset: str,
    data_dir: str | None,
    node_ids: Sequence[str],
    out: Path,
    *,
    scheme: str = "iid",
    seed: int = 0,
    limit: int | None = None,
) -> dict[str, Path]:
    """Write ``out/<node id>/train.npz`` for every node; their paths by node id."""
    ids = [validate_name(n, what="node id") for n in node_ids]
    if not ids or len(set(ids)) != len(ids):
        raise ConfigError("give distinct node ids, e.g. --nodes pi-01,pi-02")
    written: dict[str, Path] = {}
    for index, node_id in enumerate(ids):
        data, _ = load_node_data(dataset, data_dir, f"{index}/{len(ids)}", scheme, seed, limit)
        if len(data) == 0:
            raise DataError(f"{scheme} left node {node_id} without samples; use fewer nodes "
                            "or another --partition-scheme", node=node_id)
        path = out / node_id / "train.npz"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, x=data.x.astype(np.float32), y=data.y.astype(np.int64))
        except OSError as exc:
            raise DataError(f"cannot write {path}: {exc.strerror}", path=str(path)) from None
        written[node_id] = path
    return written
