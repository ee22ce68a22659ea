"""Shared builders for the export tests: zoo models with masks and lively batch norms."""

from __future__ import annotations

import numpy as np
import torch

from export.onnx_export import input_shape
from mpfl.ml.checkpoint import SavedModel
from mpfl.ml.masks import local_mask, unit_scores
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.units import build_unit_map, model_state

ZOO_MODELS = ("mlp", "lenet5", "cnn-cifar", "resnet8")


def random_filter_mask(n_units: int, layers: list[slice], sparsity: float, seed: int) -> np.ndarray:
    """Each layer loses ``sparsity`` of its units at random; the first layer loses all of them
    at high sparsity (an edge case the pruned format must survive)."""
    rng = np.random.default_rng(seed)
    mask = np.ones(n_units, dtype=bool)
    for s in layers:
        n = s.stop - s.start
        drop = rng.choice(n, size=min(n - 1, round(sparsity * n)), replace=False)
        mask[s.start + drop] = False
    if sparsity >= 0.9 and layers:
        mask[layers[0]] = False
    return mask


def saved_model(
    name: str, granularity: str, sparsity: float, seed: int = 0, meta: dict | None = None
) -> SavedModel:
    """A zoo model with a mask at ``sparsity``: random filters, or magnitude weights."""
    spec = ModelSpec(name)
    model = build_model(spec, seed=seed)
    state = model_state(model)
    rng = np.random.default_rng(seed)
    for key, value in state.items():
        # Batch norms with non-trivial statistics, so a mis-sliced one shows in the outputs.
        if "bn" in key or "shortcut.1" in key:
            if key.endswith("running_var"):
                state[key] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
            else:
                state[key] = rng.normal(0, 0.5, value.shape).astype(np.float32)
    unit_map = build_unit_map(model, spec, granularity)
    if granularity == "filter":
        mask = random_filter_mask(unit_map.n_units, unit_map.slices, sparsity, seed)
    else:
        scores = unit_scores(state, unit_map)
        mask = local_mask(scores, unit_map.full_mask(), unit_map.slices, sparsity)
    return SavedModel(spec, granularity, unit_map.apply(state, mask), mask, meta or {})


def sample_inputs(name: str, n: int = 16, seed: int = 1) -> np.ndarray:
    shape = input_shape(ModelSpec(name))
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()
