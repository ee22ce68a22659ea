"""Joint mode: mask rounds also average the nodes' masked weights, so each round starts
from the aggregate instead of rewinding to w0."""

from __future__ import annotations

import numpy as np
import pytest

from mpfl.config.settings import FederationConfig
from mpfl.federation.evaluation import dataset_evaluator
from mpfl.federation.server import FederationServer
from mpfl.federation.simulation import run_in_process
from mpfl.maths.partition import partition
from mpfl.ml.data import load_dataset


def _run(mode: str) -> FederationServer:
    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    parts = partition(train.y, 4, "dirichlet:0.5", seed=0)
    cfg = FederationConfig(federation="joint", model="mlp",
                           model_args={"image_size": 8, "hidden": [64, 32]},
                           granularity="weight", final_sparsity=0.8, mask_rounds=3,
                           train_rounds=4, local_epochs=2, value_codec="int8", min_nodes=4,
                           quorum=3, mode=mode)
    return run_in_process(cfg, [train.subset(p) for p in parts],
                          dataset_evaluator(cfg.model_spec, test))


@pytest.fixture(scope="module")
def runs() -> dict[str, FederationServer]:
    return {mode: _run(mode) for mode in ("rewind", "joint")}


def test_joint_mask_rounds_carry_values_and_train_the_model(
    runs: dict[str, FederationServer],
) -> None:
    rewind, joint = runs["rewind"], runs["joint"]
    for r, j in zip(rewind.log[:3], joint.log[:3], strict=True):
        assert r.accuracy is None and j.accuracy is not None  # a model exists after each
        assert j.uplink_bytes > r.uplink_bytes  # masks plus alive values
        assert j.sparsity == pytest.approx(r.target_sparsity, abs=1e-3)
    assert joint.log[2].accuracy is not None and joint.log[2].accuracy > 0.5
    # Training starts from the aggregate, not from w0 * C: it begins ahead and stays ahead.
    assert joint.log[3].accuracy is not None and rewind.log[3].accuracy is not None
    assert joint.log[3].accuracy > rewind.log[3].accuracy
    assert joint.log[-1].accuracy > rewind.log[-1].accuracy  # type: ignore[operator]


def test_joint_final_model_keeps_pruned_weights_at_zero(
    runs: dict[str, FederationServer],
) -> None:
    joint = runs["joint"]
    masks = joint.unit_map.tensor_masks(joint.mask)
    state = joint.final_state()
    for name, keep in masks.items():
        assert np.all(state[name][~keep] == 0)
