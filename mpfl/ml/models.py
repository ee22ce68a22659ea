"""The model zoo: architectures named with their arguments, never shipped as code.

Each model declares its prunable layers (``PrunableLayer``): the weight whose output
channels or neurons are filter units, the tensors coupled to that channel (bias, batch-norm
affine and statistics: zeroing them makes the channel output exactly zero), and the
consumers that read the channel (so an export can cut them out physically). The
classifier head is never a filter unit. Residual nets declare only the inner convolution of
each block: the others feed a skip sum, where a removed channel would not be zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mpfl.choices import ModelName
from mpfl.errors import ModelError
from mpfl.wire.specs import ModelSpec

__all__ = ["PRESETS", "ZOO", "ModelSpec", "ZooModel", "build_model", "parameter_count",
           "resolve_spec"]


@dataclass(frozen=True)
class Consumer:
    """A tensor whose input dimension (dim 1) reads a prunable layer's channels.

    ``per_channel`` input features belong to each channel (e.g. H*W after a flatten).
    """

    tensor: str
    per_channel: int = 1


@dataclass(frozen=True)
class PrunableLayer:
    weight: str
    coupled: tuple[str, ...] = ()
    consumers: tuple[Consumer, ...] = ()


class ZooModel(nn.Module):
    """Base of every zoo model: knows its prunable layers."""

    def prunable_layers(self) -> list[PrunableLayer]:
        raise NotImplementedError


def _conv_out(size: int, kernel: int, padding: int = 0, stride: int = 1) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class MLP(ZooModel):
    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: tuple[int, ...] | list[int] = (200, 100),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        sizes = [in_channels * image_size * image_size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def prunable_layers(self) -> list[PrunableLayer]:
        linears = [i for i, m in enumerate(self.net) if isinstance(m, nn.Linear)]
        return [
            PrunableLayer(f"net.{i}.weight", (f"net.{i}.bias",), (Consumer(f"net.{j}.weight"),))
            for i, j in zip(linears[:-1], linears[1:], strict=True)
        ]


class LeNet5(ZooModel):
    """LeNet-5 as in most FL papers: 61,706 parameters on 28x28 inputs."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        padding = 2 if image_size == 28 else 0
        s = _conv_out(image_size, 5, padding) // 2
        s = _conv_out(s, 5) // 2
        if s < 1:
            raise ModelError("lenet5 needs images of at least 16x16", image_size=image_size)
        self.spatial = s
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * s * s, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out

    def prunable_layers(self) -> list[PrunableLayer]:
        area = self.spatial * self.spatial
        return [
            PrunableLayer("features.0.weight", ("features.0.bias",),
                          (Consumer("features.3.weight"),)),
            PrunableLayer("features.3.weight", ("features.3.bias",),
                          (Consumer("classifier.1.weight", area),)),
            PrunableLayer("classifier.1.weight", ("classifier.1.bias",),
                          (Consumer("classifier.3.weight"),)),
            PrunableLayer("classifier.3.weight", ("classifier.3.bias",),
                          (Consumer("classifier.5.weight"),)),
        ]


class CnnCifar(ZooModel):
    """A small VGG-style net: three conv stages and one hidden dense layer."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        widths: tuple[int, ...] | list[int] = (32, 64, 128),
        hidden: int = 256,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.spatial = image_size // 2 ** len(widths)
        if self.spatial < 1:
            raise ModelError("cnn-cifar: image too small for its stages", image_size=image_size)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * self.spatial**2, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out

    def prunable_layers(self) -> list[PrunableLayer]:
        convs = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        out = [
            PrunableLayer(f"features.{i}.weight", (f"features.{i}.bias",),
                          (Consumer(f"features.{j}.weight"),))
            for i, j in zip(convs[:-1], convs[1:], strict=True)
        ]
        last = convs[-1]
        out.append(PrunableLayer(f"features.{last}.weight", (f"features.{last}.bias",),
                                 (Consumer("classifier.1.weight", self.spatial**2),)))
        out.append(PrunableLayer("classifier.1.weight", ("classifier.1.bias",),
                                 (Consumer("classifier.3.weight"),)))
        return out


def _bn_coupled(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{t}" for t in ("weight", "bias", "running_mean", "running_var"))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        out: torch.Tensor = torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))
        return out


class ResNet(ZooModel):
    """CIFAR-style ResNet (ResNet-8 with one block per stage, ResNet-20 with three)."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        blocks_per_stage: int = 1,
        widths: tuple[int, ...] | list[int] = (16, 32, 64),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        del image_size  # global pooling makes the net size-agnostic
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, 2 if stage > 0 and b == 0 else 1))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(torch.relu(self.bn(self.conv(x))))
        out: torch.Tensor = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))
        return out

    def prunable_layers(self) -> list[PrunableLayer]:
        return [
            PrunableLayer(f"blocks.{i}.conv1.weight", _bn_coupled(f"blocks.{i}.bn1"),
                          (Consumer(f"blocks.{i}.conv2.weight"),))
            for i in range(len(self.blocks))
        ]


ZOO: dict[ModelName, type[ZooModel]] = {
    ModelName.MLP: MLP,
    ModelName.LENET5: LeNet5,
    ModelName.CNN_CIFAR: CnnCifar,
    ModelName.RESNET: ResNet,
}

# Named presets: a short name expands to an architecture and default arguments.
PRESETS: dict[ModelName, ModelSpec] = {
    ModelName.RESNET8: ModelSpec(ModelName.RESNET, {"blocks_per_stage": 1}),
    ModelName.RESNET20: ModelSpec(ModelName.RESNET, {"blocks_per_stage": 3}),
}


def resolve_spec(spec: ModelSpec) -> ModelSpec:
    """Expand a preset name into its architecture, keeping explicit arguments."""
    preset = PRESETS.get(spec.name)
    if preset is None:
        return spec
    return ModelSpec(preset.name, {**preset.args, **spec.args})


def build_model(spec: ModelSpec, seed: int | None = None) -> ZooModel:
    """Instantiate a zoo model; with ``seed`` its initial weights are reproducible."""
    full = resolve_spec(spec)
    cls = ZOO.get(full.name)
    if cls is None:
        known = ", ".join(sorted([*ZOO, *PRESETS]))
        raise ModelError(f"unknown model '{spec.name}' (known: {known})")
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return cls(**full.args)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        # Arguments come from a config file or the wire: torch's own complaints about a
        # negative size or a string width are a bad spec too, not a crash.
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"bad arguments for model '{spec.name}': {first_line}") from exc


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
