"""Physical filter pruning keeps the function and drops the parameters."""

from __future__ import annotations

import numpy as np
import pytest
from _export_helpers import ZOO_MODELS, sample_inputs, saved_model, torch_logits
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from export.onnx_export import reference_model
from export.prune import kept_indices, prune_filters
from mpfl.errors import ExportError
from mpfl.ml.models import parameter_count
from mpfl.ml.train import load_state


@pytest.mark.parametrize("name", [*ZOO_MODELS, "resnet20"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_pruned_model_computes_the_masked_model(name: str, sparsity: float) -> None:
    saved = saved_model(name, "filter", sparsity)
    model, unit_map = reference_model(saved)
    pruned = prune_filters(model, unit_map, saved.mask)
    x = sample_inputs(name)
    expected, got = torch_logits(model, x), torch_logits(pruned, x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert parameter_count(pruned) < parameter_count(model)
    # Every prunable layer keeps exactly its surviving rows (one when all are pruned).
    kept = kept_indices(unit_map, saved.mask)
    weights = dict(pruned.state_dict())
    for layer in unit_map.layers:
        assert weights[layer.tensor].shape[0] == len(kept[layer.tensor])


def test_resnet_skip_path_keeps_its_width() -> None:
    saved = saved_model("resnet8", "filter", 0.5)
    model, unit_map = reference_model(saved)
    pruned = prune_filters(model, unit_map, saved.mask)
    before, after = dict(model.state_dict()), dict(pruned.state_dict())
    for name, tensor in before.items():
        if tensor.ndim and (".conv2." in name or ".shortcut." in name or ".bn2." in name):
            # conv2 loses input channels only; the residual sum keeps its width.
            assert after[name].shape[0] == tensor.shape[0]
    assert after["blocks.0.conv2.weight"].shape[1] < before["blocks.0.conv2.weight"].shape[1]
    assert after["blocks.0.bn1.running_var"].shape == after["blocks.0.bn1.weight"].shape


def test_original_model_is_untouched() -> None:
    saved = saved_model("lenet5", "filter", 0.5)
    model, unit_map = reference_model(saved)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    prune_filters(model, unit_map, saved.mask)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


def test_weight_masks_cannot_be_pruned_physically() -> None:
    saved = saved_model("mlp", "weight", 0.5)
    model, unit_map = reference_model(saved)
    with pytest.raises(ExportError, match="filter"):
        prune_filters(model, unit_map, saved.mask)


@settings(max_examples=15)
@given(bits=st.lists(st.booleans(), min_size=300, max_size=300))
def test_any_filter_mask_on_the_mlp(bits: list[bool]) -> None:
    saved = saved_model("mlp", "filter", 0.0)
    mask = np.asarray(bits, dtype=bool)
    model, unit_map = reference_model(saved)
    load_state(model, unit_map.apply(saved.state, mask))
    pruned = prune_filters(model, unit_map, mask)
    x = sample_inputs("mlp", n=4)
    np.testing.assert_allclose(torch_logits(pruned, x), torch_logits(model, x), atol=1e-5)
    linears = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    assert linears[0].out_features == max(1, int(mask[:200].sum()))
    assert linears[1].out_features == max(1, int(mask[200:].sum()))
