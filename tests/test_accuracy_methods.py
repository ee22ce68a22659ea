"""The methods that buy accuracy for bytes: error feedback on the nodes, the server
optimizer on the coordinator, and their config keys."""

from __future__ import annotations

import numpy as np
import pytest

from mpfl.config.settings import FederationConfig, load_config
from mpfl.errors import ConfigError
from mpfl.federation.feedback import ErrorFeedback
from mpfl.maths.server_optimizers import Momentum, TakeAverage, new_server_optimizer
from mpfl.wire import decode_values, encode_values


def test_error_feedback_sends_what_was_trained_over_rounds() -> None:
    """A value too small for int4 beside a large one is lost every round without feedback;
    with it, the sum of what the coordinator decodes tracks the sum of what was meant."""
    sizes = [2]
    meant = np.array([1.0, 0.03], dtype=np.float32)  # 0.03 rounds to 0 at scale 1/7
    plain = sum(decode_values(*encode_values(meant, sizes, "int4"), sizes) for _ in range(20))
    feedback = ErrorFeedback()
    sent = sum(decode_values(*feedback.encode(meant, sizes, "int4", None, 5), sizes)
               for _ in range(20))
    assert plain[1] == 0.0
    assert abs(sent[1] - 20 * 0.03) < 1.0 / 7  # off by at most the residual still held
    assert abs(sent[0] - 20.0) < 1e-4


def test_error_feedback_with_deltas_and_a_new_mask() -> None:
    base = np.array([0.5, -0.5, 0.25], dtype=np.float32)
    values = base + np.array([0.1, 0.001, -0.05], dtype=np.float32)
    feedback = ErrorFeedback()
    codec, payload = feedback.encode(values, [3], "int4", base, mask_round=5)
    assert codec.is_delta
    first = decode_values(codec, payload, [3], base)
    # The residual is exactly what was not sent.
    assert feedback._residual is not None
    assert np.allclose(feedback._residual, values - first, atol=1e-7)
    # A new mask (other round, other size) drops the residual instead of misapplying it.
    codec, payload = feedback.encode(values[:2], [2], "int4", base[:2], mask_round=6)
    assert decode_values(codec, payload, [2], base[:2]).shape == (2,)


def test_take_average_is_fedavg() -> None:
    current, average = np.zeros(3, np.float32), np.arange(3, dtype=np.float32)
    assert np.array_equal(TakeAverage().step(current, average), average)


def test_momentum_accumulates_agreeing_steps_and_restarts_on_a_new_size() -> None:
    opt = Momentum(0.5)
    w = np.zeros(2, np.float32)
    w = opt.step(w, w + 1.0)  # v = 1
    assert np.allclose(w, 1.0)
    w = opt.step(w, w + 1.0)  # v = 0.5 + 1
    assert np.allclose(w, 2.5)
    w = opt.step(w, w)  # no new update: the momentum alone moves on, v = 0.75
    assert np.allclose(w, 3.25)
    fresh = opt.step(np.zeros(3, np.float32), np.ones(3, np.float32))
    assert np.allclose(fresh, 1.0)


def test_momentum_zero_is_fedavg() -> None:
    opt = new_server_optimizer("fedavgm", 0.0)
    current = np.array([1.0, 2.0], np.float32)
    for target in (np.array([3.0, 0.0], np.float32), np.array([-1.0, 5.0], np.float32)):
        current = opt.step(current, target)
        assert np.allclose(current, target)


def test_server_optimizer_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="server optimizer"):
        new_server_optimizer("adamw", 0.9)
    with pytest.raises(ConfigError, match="server_optimizer"):
        FederationConfig(server_optimizer="adamw").validate()
    with pytest.raises(ConfigError, match="server_momentum"):
        FederationConfig(server_momentum=1.0).validate()
    with pytest.raises(ConfigError, match="value_codec"):
        FederationConfig(value_codec="int2").validate()


def test_new_keys_load_from_env_and_flags() -> None:
    cfg = load_config(overrides={"value_codec": "int4", "error_feedback": "true"},
                      environ={"MPFL_SERVER_OPTIMIZER": "fedavgm",
                               "MPFL_SERVER_MOMENTUM": "0.5"})
    assert (cfg.value_codec, cfg.error_feedback) == ("int4", True)
    assert (cfg.server_optimizer, cfg.server_momentum) == ("fedavgm", 0.5)
    with pytest.raises(ConfigError, match="error_feedback"):
        load_config(overrides={"error_feedback": "maybe"}, environ={})
