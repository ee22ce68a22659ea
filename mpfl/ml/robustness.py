"""The reference code's robustness switches: nodes that hold useless or hostile data.

- A *noise* node keeps its labels but sees every image with its pixels shuffled within
  each channel (each image by its own permutation), so its inputs carry the dataset's
  pixel statistics and no spatial structure: its local masks are noise.
- A *permuted* node keeps its images but relabels every class by one fixed permutation
  with no fixed point, so each of its samples is mislabelled and it pulls the vote and
  the average towards a consistently wrong classifier.

Both are seeded: the same seed corrupts the same node the same way on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpfl.errors import ConfigError
from mpfl.ml.data import Dataset


def shuffle_pixels(data: Dataset, seed: int) -> Dataset:
    """Each image's pixels shuffled within each channel, labels untouched."""
    n, c, h, w = data.x.shape
    rng = np.random.default_rng(seed)
    flat = data.x.reshape(n * c, h * w)
    shuffled = rng.permuted(flat, axis=1)  # an independent permutation per image-channel
    return Dataset(data.name, shuffled.reshape(n, c, h, w), data.y.copy(), data.num_classes)


def label_derangement(num_classes: int, seed: int) -> np.ndarray:
    """A seeded class permutation that moves every class (one cycle through all)."""
    if num_classes < 2:
        raise ConfigError("permuting labels needs at least two classes", classes=num_classes)
    order = np.random.default_rng(seed).permutation(num_classes)
    mapping = np.empty(num_classes, dtype=np.int64)
    mapping[order] = np.roll(order, -1)
    return mapping


def permute_labels(data: Dataset, seed: int) -> Dataset:
    """Every label replaced through :func:`label_derangement`, images untouched."""
    mapping = label_derangement(data.num_classes, seed)
    return Dataset(data.name, data.x, mapping[data.y], data.num_classes)


def corrupt_nodes(
    node_data: Sequence[Dataset],
    noise_nodes: Sequence[int] = (),
    permuted_nodes: Sequence[int] = (),
    seed: int = 0,
) -> list[Dataset]:
    """The node datasets with the chosen nodes turned into noise or permuted-label nodes.

    A node listed in both gets both (shuffled pixels and wrong labels). Node ``i`` is
    corrupted with seed ``seed + i``, so which node is chosen does not change the others.
    """
    out = list(node_data)
    for kind, chosen in (("noise", noise_nodes), ("permuted", permuted_nodes)):
        for i in chosen:
            if not 0 <= i < len(out):
                raise ConfigError(f"{kind} node index out of range", node=i, nodes=len(out))
            corrupt = shuffle_pixels if kind == "noise" else permute_labels
            out[i] = corrupt(out[i], seed + i)
    return out
