"""The model zoo: declarations of prunable layers, unit maps, fingerprints, sizes.

The key property: pruning a filter unit (zeroing its weight row and the coupled tensors)
must make that channel exactly zero where its consumers read it, in every zoo model,
including the residual net whose blocks add skip connections.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from mpfl.errors import ConfigError, ModelError
from mpfl.ml.models import ModelSpec, ZooModel, build_model, parameter_count, resolve_spec
from mpfl.ml.train import load_state
from mpfl.ml.units import build_unit_map, model_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Every zoo model, at a size that keeps the forward passes fast.
ZOO_SPECS = {
    "mlp": (ModelSpec("mlp", {"image_size": 8, "hidden": [12, 7]}), (1, 8, 8)),
    "lenet5": (ModelSpec("lenet5"), (1, 28, 28)),
    "cnn-cifar": (ModelSpec("cnn-cifar", {"image_size": 16, "widths": [4, 6, 8], "hidden": 9}),
                  (3, 16, 16)),
    "resnet8": (ModelSpec("resnet8", {"widths": [4, 6, 8]}), (3, 16, 16)),
}


def _module(model: nn.Module, tensor: str) -> nn.Module:
    return model.get_submodule(tensor.rsplit(".", 1)[0])


def _head(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1]


def _randomise(model: nn.Module, seed: int) -> None:
    """Every floating tensor non-zero and random (biases and BN too: their zero defaults
    would hide a tensor missing from ``coupled``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            r = torch.rand(t.shape, generator=gen) + 0.5
            t.copy_(r if name.endswith("running_var") else (r - 1.0) * 2.0)


@pytest.mark.parametrize("key", list(ZOO_SPECS))
def test_declarations_name_real_tensors_with_matching_sizes(key: str) -> None:
    spec, _ = ZOO_SPECS[key]
    model = build_model(spec)
    state = model.state_dict()
    for layer in model.prunable_layers():
        out = state[layer.weight].shape[0]
        assert isinstance(_module(model, layer.weight), nn.Conv2d | nn.Linear)
        for name in layer.coupled:
            assert state[name].shape == (out,), name
        assert layer.consumers, layer.weight
        for consumer in layer.consumers:
            assert state[consumer.tensor].shape[1] == out * consumer.per_channel


@pytest.mark.parametrize("key", list(ZOO_SPECS))
def test_filter_units_cover_the_declared_layers_only_and_never_the_head(key: str) -> None:
    spec, _ = ZOO_SPECS[key]
    model = build_model(spec)
    umap = build_unit_map(model, spec, "filter")
    declared = {layer.weight for layer in model.prunable_layers()}
    assert {layer.tensor for layer in umap.layers} == declared
    head = _head(model)
    head_names = {n for n, p in model.named_parameters() if p is head.weight or p is head.bias}
    assert head_names.isdisjoint({layer.tensor for layer in umap.layers})
    assert all(head_names.isdisjoint(layer.coupled) for layer in umap.layers)
    state = model.state_dict()
    for layer in umap.layers:
        assert layer.count == state[layer.tensor].shape[0]
    assert umap.n_units == sum(state[w].shape[0] for w in declared)


@pytest.mark.parametrize("key", list(ZOO_SPECS))
def test_weight_units_are_every_conv_and_linear_weight_and_nothing_else(key: str) -> None:
    spec, _ = ZOO_SPECS[key]
    model = build_model(spec)
    umap = build_unit_map(model, spec, "weight")
    expected = {f"{name}.weight": m.weight.numel() for name, m in model.named_modules()
                if isinstance(m, nn.Conv2d | nn.Linear)}
    assert {layer.tensor: layer.count for layer in umap.layers} == expected
    assert all(layer.coupled == () for layer in umap.layers)
    assert umap.n_units == sum(expected.values())


@pytest.mark.parametrize("granularity", ["filter", "weight"])
@pytest.mark.parametrize("key", list(ZOO_SPECS))
def test_unit_layers_are_contiguous_in_state_dict_order(key: str, granularity: str) -> None:
    spec, _ = ZOO_SPECS[key]
    model = build_model(spec)
    umap = build_unit_map(model, spec, granularity)
    names = list(model_state(model))
    positions = [names.index(layer.tensor) for layer in umap.layers]
    assert positions == sorted(positions)
    start = 0
    for layer in umap.layers:
        assert layer.start == start
        start += layer.count
    assert start == umap.n_units


@contextmanager
def _consumer_inputs(model: nn.Module, consumers: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record what each consumer module receives during one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for tensor in consumers:

        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], tensor: str = tensor) -> None:
            seen[tensor] = args[0].detach().clone()

        hooks.append(_module(model, tensor).register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("train_mode", [False, True])
@pytest.mark.parametrize("key", list(ZOO_SPECS))
def test_pruned_filter_is_exactly_zero_at_its_consumers(key: str, train_mode: bool) -> None:
    spec, shape = ZOO_SPECS[key]
    model = build_model(spec, seed=1)
    _randomise(model, seed=2)
    umap = build_unit_map(model, spec, "filter")
    rng = np.random.default_rng(3)
    mask = umap.full_mask()
    pruned: dict[str, list[int]] = {}
    for layer in umap.layers:  # prune about a third of every layer, never all of it
        drop = rng.choice(layer.count, size=max(1, layer.count // 3), replace=False)
        mask[layer.start + drop] = False
        pruned[layer.tensor] = sorted(int(c) for c in drop)
    load_state(model, umap.apply(model_state(model), mask))
    model.train(train_mode)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(4))
    by_weight = {layer.weight: layer for layer in model.prunable_layers()}
    consumers = [c.tensor for layer in by_weight.values() for c in layer.consumers]
    with _consumer_inputs(model, consumers) as seen, torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all()
    for weight, channels in pruned.items():
        for consumer in by_weight[weight].consumers:
            h = seen[consumer.tensor]
            n_out = model.state_dict()[weight].shape[0]
            alive = [c for c in range(n_out) if c not in channels]
            k = consumer.per_channel
            if h.dim() == 4:  # a convolution reads channels
                assert torch.count_nonzero(h[:, channels]) == 0
                assert torch.count_nonzero(h[:, alive]) > 0  # the hook sees real data
            else:  # a dense layer reads k features per channel (a flattened feature map)
                cols = [c * k + j for c in channels for j in range(k)]
                alive_cols = [c * k + j for c in alive for j in range(k)]
                assert torch.count_nonzero(h[:, cols]) == 0
                assert torch.count_nonzero(h[:, alive_cols]) > 0


@pytest.mark.parametrize("key", list(ZOO_SPECS))
def test_cutting_a_pruned_channel_out_of_its_consumers_changes_nothing(key: str) -> None:
    """The channel is dead: zeroing the consumers' columns for it leaves the output as is."""
    spec, shape = ZOO_SPECS[key]
    model = build_model(spec, seed=5)
    _randomise(model, seed=6)
    umap = build_unit_map(model, spec, "filter")
    mask = umap.full_mask()
    mask[[layer.start for layer in umap.layers]] = False  # channel 0 of every layer
    load_state(model, umap.apply(model_state(model), mask))
    model.eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = model(x)
        params = dict(model.named_parameters())
        for layer in model.prunable_layers():
            for consumer in layer.consumers:
                params[consumer.tensor][:, : consumer.per_channel] = 0.0
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_lenet5_has_61706_parameters_on_28x28() -> None:
    assert parameter_count(build_model(ModelSpec("lenet5"))) == 61_706


@pytest.mark.parametrize(("hidden", "image", "classes"), [((200, 100), 28, 10), ((5,), 8, 3)])
def test_mlp_parameter_count_matches_its_layer_sizes(
    hidden: tuple[int, ...], image: int, classes: int
) -> None:
    sizes = [image * image, *hidden, classes]
    expected = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    spec = ModelSpec("mlp", {"image_size": image, "hidden": list(hidden), "num_classes": classes})
    assert parameter_count(build_model(spec)) == expected


@pytest.mark.parametrize("key", list(ZOO_SPECS))
def test_every_zoo_model_maps_its_input_to_class_logits(key: str) -> None:
    spec, shape = ZOO_SPECS[key]
    model = build_model(spec)
    with torch.no_grad():
        assert model(torch.zeros(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("granularity", ["filter", "weight"])
@pytest.mark.parametrize("key", list(ZOO_SPECS))
def test_fingerprint_is_stable_across_builds_and_seeds(key: str, granularity: str) -> None:
    spec, _ = ZOO_SPECS[key]
    a = build_unit_map(build_model(spec, seed=0), spec, granularity)
    b = build_unit_map(build_model(spec, seed=99), spec, granularity)
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 8


def test_fingerprint_differs_across_granularity_arguments_and_architecture() -> None:
    def fp(spec: ModelSpec, granularity: str = "filter") -> bytes:
        return build_unit_map(build_model(spec), spec, granularity).fingerprint

    prints = [
        fp(ModelSpec("lenet5")),
        fp(ModelSpec("lenet5"), "weight"),
        fp(ModelSpec("lenet5", {"num_classes": 7})),
        fp(ModelSpec("mlp", {"image_size": 8})),
        fp(ModelSpec("mlp", {"image_size": 8, "hidden": [200, 99]})),
        fp(ModelSpec("cnn-cifar", {"image_size": 16})),
        fp(ModelSpec("resnet8")),
        fp(ModelSpec("resnet20")),
    ]
    assert len(set(prints)) == len(prints)


def test_presets_expand_with_explicit_arguments_kept() -> None:
    full = resolve_spec(ModelSpec("resnet20", {"widths": [4, 4, 4]}))
    assert full == ModelSpec("resnet", {"blocks_per_stage": 3, "widths": [4, 4, 4]})
    model = build_model(ModelSpec("resnet20", {"widths": [4, 4, 4]}))
    blocks = model.get_submodule("blocks")
    assert isinstance(model, ZooModel) and isinstance(blocks, nn.Sequential) and len(blocks) == 9
    assert resolve_spec(ModelSpec("mlp")) == ModelSpec("mlp")


def test_build_model_with_a_seed_is_reproducible() -> None:
    spec = ModelSpec("lenet5")
    a, b, c = (model_state(build_model(spec, seed=s)) for s in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_resnet_state_excludes_the_integer_batch_counters() -> None:
    model = build_model(ModelSpec("resnet8"))
    state = model_state(model)
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert all(v.dtype == np.float32 for v in state.values())


@pytest.mark.parametrize(
    "spec",
    [ModelSpec("vgg99"), ModelSpec("mlp", {"bogus": 1}), ModelSpec("lenet5", {"image_size": 8}),
     ModelSpec("cnn-cifar", {"image_size": 4})],
)
def test_bad_model_specs_raise_model_error(spec: ModelSpec) -> None:
    with pytest.raises(ModelError):
        build_model(spec)


def test_unknown_granularity_is_a_config_error() -> None:
    spec = ModelSpec("mlp", {"image_size": 8})
    with pytest.raises(ConfigError):
        build_unit_map(build_model(spec), spec, "channel")


@pytest.mark.parametrize("doc", [None, [], {"name": 3}, {"args": {}}, {"name": "mlp", "args": []}])
def test_spec_from_dict_refuses_malformed_documents(doc: object) -> None:
    with pytest.raises(ModelError):
        ModelSpec.from_dict(doc)  # type: ignore[arg-type]


def test_spec_json_round_trips() -> None:
    import json

    spec = ModelSpec("cnn-cifar", {"widths": [4, 8], "hidden": 3})
    assert ModelSpec.from_dict(json.loads(spec.to_json())) == spec


def test_resnet_declares_no_layer_that_feeds_a_skip_sum() -> None:
    """Zeroing a block's conv2 filter (and bn2) leaves the channel alive through the skip
    connection, which is why only conv1 of each block is a filter unit."""
    spec, shape = ZOO_SPECS["resnet8"]
    model = build_model(spec, seed=8)
    _randomise(model, seed=9)
    declared = {layer.weight for layer in model.prunable_layers()}
    assert declared == {f"blocks.{i}.conv1.weight" for i in range(3)}
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name in ("conv2.weight", "bn2.weight", "bn2.bias"):
            params[f"blocks.0.{name}"][0] = 0.0
        block = model.get_submodule("blocks.0")
        model.eval()
        seen: dict[str, torch.Tensor] = {}
        block.register_forward_hook(lambda _m, _a, out: seen.setdefault("out", out))
        model(torch.randn(2, *shape, generator=torch.Generator().manual_seed(10)))
    assert torch.count_nonzero(seen["out"][:, 0]) > 0
