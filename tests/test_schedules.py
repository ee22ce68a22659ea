from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpfl.errors import ConfigError
from mpfl.maths.schedules import DEFAULT_SCHEDULE, SCHEDULES, get_schedule, keep_count

rounds = st.integers(min_value=1, max_value=300)
sparsities = st.floats(min_value=0.0, max_value=0.999, allow_nan=False)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@given(total=rounds, final=sparsities)
def test_every_schedule_rises_to_exactly_the_final_sparsity(
    name: str, total: int, final: float
) -> None:
    schedule = get_schedule(name)
    values = [schedule(t, total, final) for t in range(1, total + 1)]
    assert values[-1] == final
    assert all(0.0 <= v < 1.0 for v in values)
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    # Rounds past the last hold the final sparsity.
    assert schedule(total + 5, total, final) == final


@given(total=rounds, final=sparsities, data=st.data())
def test_linear_is_the_reference_q_times_t(total: int, final: float, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=1, max_value=total))
    q = final / total
    assert get_schedule("linear")(t, total, final) == pytest.approx(q * t, abs=1e-12)


@given(total=rounds, final=sparsities, data=st.data())
def test_geometric_prunes_a_fixed_fraction_of_the_alive_units(
    total: int, final: float, data: st.DataObject
) -> None:
    t = data.draw(st.integers(min_value=1, max_value=total))
    q = 1.0 - (1.0 - final) ** (1.0 / total)
    assert 1.0 - (1.0 - q) ** total == pytest.approx(final, abs=1e-9)
    assert get_schedule("geometric")(t, total, final) == pytest.approx(
        1.0 - (1.0 - q) ** t, abs=1e-9
    )


def test_cubic_follows_zhu_and_gupta() -> None:
    cubic = get_schedule("cubic")
    assert cubic(1, 4, 0.8) == pytest.approx(0.8 * (1 - 0.75**3))
    assert cubic(2, 4, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    # Front-loaded: ahead of linear before the end.
    assert cubic(2, 4, 0.8) > get_schedule("linear")(2, 4, 0.8)


def test_default_schedule_is_linear() -> None:
    assert get_schedule(DEFAULT_SCHEDULE) is SCHEDULES["linear"]


def test_unknown_schedule_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        get_schedule("exponential")
    for name in SCHEDULES:
        assert name in str(err.value)
    assert err.value.context["schedule"] == "exponential"


@pytest.mark.parametrize(
    ("t", "total", "final"), [(0, 10, 0.5), (1, 0, 0.5), (1, 10, 1.0), (1, 10, -0.1)]
)
def test_bad_arguments_are_config_errors(t: int, total: int, final: float) -> None:
    with pytest.raises(ConfigError):
        get_schedule("linear")(t, total, final)


@given(
    n_units=st.integers(min_value=0, max_value=50_000_000),
    numerator=st.integers(min_value=0, max_value=999),
    denominator=st.integers(min_value=1, max_value=1000),
)
def test_keep_count_is_the_exact_ceiling_despite_float_noise(
    n_units: int, numerator: int, denominator: int
) -> None:
    sparsity = Fraction(numerator % denominator, denominator)
    exact = -((sparsity - 1) * n_units // 1)  # ceil((1 - r) * n) in exact arithmetic
    assert keep_count(n_units, float(sparsity)) == exact


def test_keep_count_known_float_traps() -> None:
    assert keep_count(100, 0.29) == 71
    assert keep_count(10, 0.7) == 3
    assert keep_count(10, 0.25) == 8
    # Large layers: a fractional part of 0.002 is real, not float noise.
    assert keep_count(3_000_007, 0.714) == 858_003
    assert keep_count(10_000_000, 0.941) == 590_000
    with pytest.raises(ConfigError):
        keep_count(10, 1.0)
