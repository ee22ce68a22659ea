"""Local training and evaluation with a mask enforced: pruned weights stay exactly zero.

Enforcement is two-fold, as in the reference code: gradients of pruned positions are
zeroed before the step (so momentum never builds up there), and the mask is re-applied
after each step (weight decay or Adam's update would otherwise move them off zero).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mpfl.choices import Optimizer
from mpfl.errors import ModelError, lookup
from mpfl.ml.data import Dataset
from mpfl.ml.units import UnitMap
from mpfl.wire.specs import TrainSpec


def _sgd(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                           weight_decay=spec.weight_decay)


def _adam(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)


OPTIMIZERS: dict[Optimizer, Callable[[nn.Module, TrainSpec], torch.optim.Optimizer]] = {
    Optimizer.SGD: _sgd,
    Optimizer.ADAM: _adam,
}


def load_state(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Copy a numpy state into the model in place (the model's own buffers stay).

    Shapes must match exactly: torch would silently broadcast a (1,)-array over a tensor.
    """
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in state:
                value = np.asarray(state[name], dtype=np.float32)
                if value.shape != tuple(tensor.shape):
                    raise ModelError("state tensor does not fit the model", tensor=name,
                                     expected=tuple(tensor.shape), got=value.shape)
                tensor.copy_(torch.from_numpy(value))


class MaskEnforcer:
    """Holds a model's pruned positions at zero through training."""

    def __init__(self, model: nn.Module, unit_map: UnitMap, mask: np.ndarray) -> None:
        self.model = model
        tensors = dict(model.state_dict(keep_vars=True))
        self._masks = [
            (tensors[name], torch.from_numpy(np.ascontiguousarray(m)).to(torch.float32))
            for name, m in unit_map.tensor_masks(mask).items()
        ]
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for tensor, mask in self._masks:
            tensor.mul_(mask)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for tensor, mask in self._masks:
            if tensor.grad is not None:
                tensor.grad.mul_(mask)


@dataclass(frozen=True)
class TrainResult:
    loss: float
    accuracy: float
    samples: int
    seconds: float


def train_local(
    model: nn.Module,
    data: Dataset,
    cfg: TrainSpec,
    enforcer: MaskEnforcer | None = None,
    seed: int = 0,
    on_epoch: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train ``cfg.epochs`` epochs over ``data`` with the mask held; deterministic by seed.
    ``on_epoch(done, epochs)`` hears of each finished epoch (and of the start, done = 0)."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    opt = lookup(OPTIMIZERS, cfg.optimizer, "optimizer", "optimizer")(model, cfg)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    if on_epoch is not None:
        on_epoch(0, cfg.epochs)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=False)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            if enforcer is not None:
                enforcer.mask_gradients()
            opt.step()
            if enforcer is not None:
                enforcer.apply()
            total_loss += float(loss.detach()) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
        if on_epoch is not None:
            on_epoch(epoch + 1, cfg.epochs)
    return TrainResult(total_loss / max(seen, 1), correct / max(seen, 1), len(y),
                       time.perf_counter() - start)


@torch.no_grad()
def check_fits(model: nn.Module, data: Dataset, *, model_name: str | None = None,
               dataset: str | None = None) -> None:
    """ModelError unless ``model`` takes ``data``'s images and scores all its classes.

    The model a node trains is named by a message; one that does not fit the node's data
    must be refused when the message arrives, not fail (and end the process) inside torch.
    The coordinator and ``mpfl simulate`` call it before round 1 with the data they hold.
    Eval mode for the probe, so no batch-norm statistics move.
    """
    if len(data) == 0:
        return
    images = "x".join(map(str, data.shape))
    hint = "; pick a --model made for such images (`mpfl models` lists them)"
    was_training = model.training
    model.eval()
    try:
        out = model(torch.from_numpy(data.x[:1]))
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ModelError(f"the model does not take {images} images{hint}", model=model_name,
                         dataset=dataset, reason=str(exc).splitlines()[0][:120]) from None
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[1] < data.num_classes:
        raise ModelError(f"the model cannot score all {data.num_classes} classes of the "
                         f"data{hint}", model=model_name, dataset=dataset,
                         outputs=tuple(out.shape))


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) over ``data``."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, correct = 0.0, 0
    for i in range(0, len(data), batch_size):
        xb = torch.from_numpy(data.x[i : i + batch_size])
        yb = torch.from_numpy(data.y[i : i + batch_size])
        out = model(xb)
        total += float(loss_fn(out, yb))
        correct += int((out.argmax(1) == yb).sum())
    n = max(len(data), 1)
    return total / n, correct / n

