"""Per-block rates and random curvatures of the comparison with BP."""

import pytest

from backmatch.backmatching.comparison import per_block_rates, random_steps


def test_rates_multiply_input_steps_above():
    rates = per_block_rates(0.6, [2.0, 3.0, 4.0], [5.0, 6.0, 7.0])

    assert rates[2] == pytest.approx(0.6 / 4.0)
    assert rates[1] == pytest.approx(0.6 / (3.0 * 7.0))
    assert rates[0] == pytest.approx(0.6 / (2.0 * 6.0 * 7.0))


def test_unit_steps_give_eta():
    assert per_block_rates(0.1, [1.0] * 3, [1.0] * 3) == [0.1, 0.1, 0.1]


def test_random_steps_in_range():
    weights, inputs = random_steps(50, seed=4)

    assert len(weights) == 50
    assert min(weights + inputs) >= 0.5
    assert max(weights + inputs) <= 2.0


def test_random_steps_follow_seed():
    assert random_steps(5, seed=1) == random_steps(5, seed=1)
    assert random_steps(5, seed=1) != random_steps(5, seed=2)


def test_invalid_step_range_is_rejected():
    with pytest.raises(ValueError, match="step range"):
        random_steps(3, seed=0, low=0.0, high=1.0)
