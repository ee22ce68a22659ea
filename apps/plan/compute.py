"""Training time on a device profile: the model's training FLOPs per sample over the
profile's declared throughput (``train_gflops`` in hardware/profiles.toml).

A run on this host measures this host's training time, which says nothing about a
Raspberry Pi's; the FLOPs of one training step are the same everywhere, so they are
counted here (torch's own ``FlopCounterMode``: convolutions and matrix products, forward
and backward) and divided by what the board sustains.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from mpfl.wire.specs import ModelSpec

_PROBE_BATCH = 8  # FLOPs scale with the batch; a few samples give the per-sample figure


def input_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """(channels, height, width) the named model is built for: its arguments, else the
    architecture's defaults."""
    from mpfl.ml.models import ZOO, resolve_spec

    full = resolve_spec(spec)
    parameters = inspect.signature(ZOO[full.name].__init__).parameters

    def argument(name: str, fallback: int) -> int:
        if name in full.args:
            return int(full.args[name])
        default = parameters[name].default if name in parameters else fallback
        return int(default) if isinstance(default, int) else fallback

    size = argument("image_size", 32)
    return argument("in_channels", 1), size, size


def train_flops_per_sample(spec: ModelSpec) -> float:
    """FLOPs of one training step per sample: forward, loss and backward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mpfl.ml.models import build_model

    model = build_model(spec, seed=0)
    x = torch.zeros((_PROBE_BATCH, *input_shape(spec)))
    y = torch.zeros(_PROBE_BATCH, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / _PROBE_BATCH


def largest_node_samples(run_dir: Path) -> int | None:
    """The most samples any node reported training on (node_metrics.jsonl), or None."""
    try:
        text = (run_dir / "node_metrics.jsonl").read_text(encoding="utf-8")
    except OSError:
        return None
    largest = 0
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        samples = doc.get("samples") if isinstance(doc, dict) else None
        if isinstance(samples, int) and not isinstance(samples, bool) and samples > largest:
            largest = samples
    return largest or None
