"""Seeded splits of a dataset over nodes: IID, Dirichlet over labels, McMahan shards.

Every partition assigns each sample to exactly one node; the same seed gives the same
split on every machine, so a node can compute its own share from ``--partition i/N``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mpfl.errors import ConfigError


def iid(labels: np.ndarray, n_nodes: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, n_nodes)]


def dirichlet(
    labels: np.ndarray, n_nodes: int, seed: int, alpha: float, min_size: int = 10
) -> list[np.ndarray]:
    """Per class, node shares drawn from Dir(alpha); redrawn until every node has data."""
    if not (0 < alpha < math.inf):  # also refuses nan
        raise ConfigError("dirichlet alpha must be a finite number > 0", alpha=alpha)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    # At most half a fair share: demanding a full one would ask for a perfectly even split.
    min_size = min(min_size, max(1, len(labels) // (2 * n_nodes)))
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_nodes)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * n_nodes)) * len(idx)).astype(int)[:-1]
            for node, chunk in enumerate(np.split(idx, cuts)):
                parts[node].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ConfigError("dirichlet split left a node without data; raise alpha or lower nodes",
                      alpha=alpha, nodes=n_nodes)


def shards(
    labels: np.ndarray, n_nodes: int, seed: int, per_node: int = 2
) -> list[np.ndarray]:
    """McMahan et al.: sort by label, cut into shards, give each node ``per_node`` shards."""
    if per_node < 1:
        raise ConfigError("shards per node must be >= 1", per_node=per_node)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n_nodes * per_node)
    assignment = rng.permutation(len(pieces)).reshape(n_nodes, per_node)
    return [np.sort(np.concatenate([pieces[i] for i in row])) for row in assignment]


def parse_scheme(scheme: str) -> tuple[str, float | None]:
    """'iid', 'dirichlet:0.5' or 'shards[:2]' -> (name, parameter)."""
    name, _, arg = scheme.partition(":")
    if name not in ("iid", "dirichlet", "shards"):
        known = "iid, dirichlet:A, shards:K"
        raise ConfigError(f"unknown partition scheme '{scheme}' (known: {known})")
    if not arg:
        return name, {"dirichlet": 0.5, "shards": 2.0}.get(name)
    try:
        value = float(arg)
    except ValueError as exc:
        raise ConfigError(f"bad partition parameter in '{scheme}'") from exc
    if name == "dirichlet" and not (0 < value < math.inf):
        raise ConfigError(f"dirichlet alpha must be a finite number > 0 in '{scheme}'")
    if name == "shards" and (not value.is_integer() or value < 1):
        raise ConfigError(f"shards per node must be a whole number >= 1 in '{scheme}'")
    if name == "iid":
        raise ConfigError(f"iid takes no parameter, got '{scheme}'")
    return name, value


def partition(
    labels: np.ndarray, n_nodes: int, scheme: str = "iid", seed: int = 0
) -> list[np.ndarray]:
    if n_nodes < 1 or n_nodes > len(labels):
        raise ConfigError("number of nodes must be between 1 and the number of samples",
                          nodes=n_nodes)
    name, arg = parse_scheme(scheme)
    if name == "dirichlet":
        assert arg is not None
        return dirichlet(labels, n_nodes, seed, arg)
    if name == "shards":
        assert arg is not None
        return shards(labels, n_nodes, seed, int(arg))
    return iid(labels, n_nodes, seed)


def parse_share(text: str) -> tuple[int, int]:
    """'3/10' -> (3, 10): this node takes part 3 of a 10-way split (0-based)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise ConfigError(f"partition must look like i/N, got '{text}'") from exc
    if not 0 <= i < n:
        raise ConfigError(f"partition index out of range in '{text}' (0 <= i < N)")
    return i, n


def label_histogram(
    labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
