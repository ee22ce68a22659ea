"""Masked local training: pruned positions stay exactly zero, runs are reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mpfl.errors import ConfigError, ModelError
from mpfl.ml.data import Dataset
from mpfl.ml.models import ModelSpec, build_model
from mpfl.ml.train import MaskEnforcer, evaluate, load_state, train_local
from mpfl.ml.units import UnitMap, build_unit_map, model_state
from mpfl.wire.specs import DEFAULT_TRAIN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECS = {
    "mlp": ModelSpec("mlp", {"image_size": 6, "hidden": [16, 12], "num_classes": 4}),
    "resnet": ModelSpec("resnet8", {"widths": [4, 6, 8], "num_classes": 4}),
}
SHAPES = {"mlp": (1, 6, 6), "resnet": (3, 8, 8)}


def _data(key: str, n: int = 96, seed: int = 0) -> Dataset:
    """A learnable toy task: the class is which quarter of the image is brightest."""
    rng = np.random.default_rng(seed)
    c, h, w = SHAPES[key]
    y = rng.integers(0, 4, n)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    for i, label in enumerate(y):
        r, q = divmod(int(label), 2)
        x[i, :, r * h // 2 : (r + 1) * h // 2, q * w // 2 : (q + 1) * w // 2] += 2.0
    return Dataset("toy", x, y.astype(np.int64), 4)


def _pruned_model(key: str, granularity: str) -> tuple[nn.Module, UnitMap, np.ndarray]:
    spec = SPECS[key]
    model = build_model(spec, seed=0)
    umap = build_unit_map(model, spec, granularity)
    mask = np.random.default_rng(1).random(umap.n_units) < 0.5
    for s in umap.slices:  # every layer keeps a unit
        mask[s.start] = True
    return model, umap, mask


OPTIMISERS = {
    "sgd-momentum-wd": DEFAULT_TRAIN.replace(epochs=2, batch_size=16, lr=0.05, momentum=0.9,
                                             weight_decay=0.01, optimizer="sgd"),
    "adam-wd": DEFAULT_TRAIN.replace(epochs=2, batch_size=16, lr=0.01, weight_decay=0.01,
                                     optimizer="adam"),
}


@pytest.mark.parametrize("opt", list(OPTIMISERS))
@pytest.mark.parametrize("granularity", ["filter", "weight"])
@pytest.mark.parametrize("key", list(SPECS))
def test_pruned_positions_stay_exactly_zero_through_training(
    key: str, granularity: str, opt: str
) -> None:
    model, umap, mask = _pruned_model(key, granularity)
    before = model_state(model)
    tensor_masks = umap.tensor_masks(mask)
    # the initial weights are non-zero where the mask prunes: the enforcer must zero them
    assert all(np.any(before[name][~m] != 0) for name, m in tensor_masks.items()
               if name.endswith("weight") and (~m).any())
    enforcer = MaskEnforcer(model, umap, mask)
    train_local(model, _data(key, n=48), OPTIMISERS[opt], enforcer, seed=3)
    after = model_state(model)
    for name, m in tensor_masks.items():
        assert np.all(after[name][~m] == 0), name  # exactly, running BN statistics included
    changed = [name for name, m in tensor_masks.items()
               if name.endswith("weight") and not np.array_equal(after[name][m], before[name][m])]
    assert changed  # the alive weights did train


def test_without_the_enforcer_pruned_weights_move() -> None:
    """The check above can fail: plain training revives zeroed weights."""
    model, umap, mask = _pruned_model("mlp", "weight")
    load_state(model, umap.apply(model_state(model), mask))
    train_local(model, _data("mlp"), OPTIMISERS["sgd-momentum-wd"], None, seed=3)
    after = model_state(model)
    assert any(np.any(after[name][~m] != 0) for name, m in umap.tensor_masks(mask).items())


def test_mask_gradients_zero_the_pruned_gradients() -> None:
    model, umap, mask = _pruned_model("resnet", "filter")
    enforcer = MaskEnforcer(model, umap, mask)
    data = _data("resnet", n=8)
    loss = nn.functional.cross_entropy(model(torch.from_numpy(data.x)), torch.from_numpy(data.y))
    loss.backward()
    enforcer.mask_gradients()
    params = dict(model.named_parameters())
    for name, m in umap.tensor_masks(mask).items():
        if name in params:
            grad = params[name].grad
            assert grad is not None
            assert torch.all(grad[torch.from_numpy(~m)] == 0)


@pytest.mark.parametrize("key", list(SPECS))
def test_training_is_deterministic_under_a_seed(key: str) -> None:
    def run(seed: int) -> dict[str, np.ndarray]:
        model, umap, mask = _pruned_model(key, "filter")
        train_local(model, _data(key, n=48), OPTIMISERS["sgd-momentum-wd"],
                    MaskEnforcer(model, umap, mask), seed=seed)
        return model_state(model)

    a, b, c = run(7), run(7), run(8)
    assert list(a) == list(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)  # the seed does matter


def test_training_learns_the_toy_task_and_reports_it() -> None:
    model, umap, mask = _pruned_model("mlp", "filter")
    data = _data("mlp", n=256)
    enforcer = MaskEnforcer(model, umap, mask)
    loss0, acc0 = evaluate(model, data)
    cfg = DEFAULT_TRAIN.replace(epochs=8, batch_size=32, lr=0.05, momentum=0.9)
    result = train_local(model, data, cfg, enforcer, seed=0)
    loss1, acc1 = evaluate(model, data)
    assert result.samples == len(data)
    assert 0.0 <= result.accuracy <= 1.0 and result.loss > 0 and result.seconds >= 0
    assert loss1 < loss0 and acc1 > max(acc0, 0.6)


def test_evaluate_matches_a_direct_computation() -> None:
    model = build_model(SPECS["mlp"], seed=4)
    data = _data("mlp", n=50)
    loss, acc = evaluate(model, data, batch_size=7)
    with torch.no_grad():
        out = model(torch.from_numpy(data.x))
    y = torch.from_numpy(data.y)
    assert loss == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-5)
    assert acc == pytest.approx(float((out.argmax(1) == y).float().mean()))


def test_load_state_round_trips_and_refuses_wrong_shapes() -> None:
    source = build_model(SPECS["resnet"], seed=1)
    target = build_model(SPECS["resnet"], seed=2)
    state = model_state(source)
    load_state(target, state)
    got = model_state(target)
    assert all(np.array_equal(got[k], state[k]) for k in state)
    name = next(iter(state))
    with pytest.raises(ModelError):
        load_state(target, {name: np.zeros(1, dtype=np.float32)})


def test_unknown_optimizer_is_a_config_error() -> None:
    model = build_model(SPECS["mlp"])
    with pytest.raises(ConfigError):
        train_local(model, _data("mlp", n=4), DEFAULT_TRAIN.replace(optimizer="lbfgs"))
