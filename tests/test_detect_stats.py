"""The statistics behind the detectors, against values worked out by hand."""

from __future__ import annotations

import math
import random

import pytest

from monitor.detect.stats import (
    chi_square_sf,
    homogeneity_p_value,
    mann_whitney_greater,
    percentile,
    percentile_plans,
)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        pytest.param(0, 1.0, id="min"),
        pytest.param(50, 2.5, id="median-between-ranks"),
        pytest.param(95, 3.85, id="p95-interpolated"),
        pytest.param(100, 4.0, id="max"),
    ],
)
def test_percentile_interpolates_between_closest_ranks(q: float, expected: float) -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], q) == pytest.approx(expected)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.0], 95) == 7.0


def test_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_mann_whitney_without_ties() -> None:
    # ranks of x = 3, 4, 5 -> R = 12, U = 12 - 3*4/2 = 6; mean 3*2/2 = 3; var 3*2*6/12 = 3;
    # z = (6 - 3 - 0.5) / sqrt(3) = 1.4434 -> p = 0.0745
    assert mann_whitney_greater([3, 4, 5], [1, 2]) == pytest.approx(0.0744573366, rel=1e-8)


def test_mann_whitney_with_ties() -> None:
    # pooled 1, 2, 2, 2, 3: the three 2s share rank 3, so R_x = 3 + 3 + 5 = 11, U = 5;
    # tie term 3^3 - 3 = 24; var = 3*2/12 * (6 - 24/(5*4)) = 2.4; z = 1.5 / sqrt(2.4) = 0.9682
    assert mann_whitney_greater([2, 2, 3], [1, 2]) == pytest.approx(0.1664608040, rel=1e-8)


def test_mann_whitney_matches_scipy_documentation_example() -> None:
    # scipy's mannwhitneyu docs: these samples give a two-sided asymptotic p of 0.1113468865.
    males, females = [19, 22, 16, 29, 24], [20, 11, 17, 12]
    assert mann_whitney_greater(males, females) == pytest.approx(0.11134688653314041 / 2)


def test_mann_whitney_is_one_sided() -> None:
    slow, fast = [400.0 + i for i in range(10)], [200.0 + i for i in range(60)]
    assert mann_whitney_greater(slow, fast) < 1e-6
    assert mann_whitney_greater(fast, slow) > 0.999


def test_mann_whitney_all_tied_points_nowhere() -> None:
    assert mann_whitney_greater([5, 5], [5, 5, 5]) == 1.0


@pytest.mark.parametrize(
    ("statistic", "df"),
    [
        pytest.param(3.841458820694124, 1, id="df1"),
        pytest.param(5.991464547107979, 2, id="df2"),
        pytest.param(7.814727903251178, 3, id="df3"),
        pytest.param(9.487729036781154, 4, id="df4"),
        pytest.param(11.070497693516351, 5, id="df5"),
    ],
)
def test_chi_square_critical_values_give_five_percent(statistic: float, df: int) -> None:
    assert chi_square_sf(statistic, df) == pytest.approx(0.05, rel=1e-9)


def test_chi_square_with_two_degrees_is_exponential() -> None:
    assert chi_square_sf(10.0, 2) == pytest.approx(math.exp(-5.0))


def test_chi_square_of_zero_is_one() -> None:
    assert chi_square_sf(0.0, 3) == 1.0


def test_homogeneity_of_opposite_samples() -> None:
    # expected 5 in each of four cells, each off by 5: statistic 4 * 25/5 = 20, df 1
    assert homogeneity_p_value([10, 0], [0, 10]) == pytest.approx(math.erfc(math.sqrt(10)))


def test_homogeneity_two_by_three() -> None:
    # columns 40/30/30 -> expected 20/15/15 per side; statistic 2 * (100/20 + 25/15 + 25/15)
    # = 50/3, df 2 -> p = exp(-25/3)
    assert homogeneity_p_value([30, 10, 10], [10, 20, 20]) == pytest.approx(math.exp(-25 / 3))


def test_homogeneity_of_same_proportions_is_one() -> None:
    assert homogeneity_p_value([30, 10], [60, 20]) == pytest.approx(1.0)


def test_homogeneity_drops_empty_categories() -> None:
    assert homogeneity_p_value([10, 0, 0], [0, 10, 0]) == pytest.approx(math.erfc(math.sqrt(10)))


def test_percentile_plans_give_exactly_the_percentile() -> None:
    rng = random.Random(3)
    for q in (50, 95, 99):
        plans = percentile_plans(70, q)
        for count in range(1, 71):
            values = sorted(rng.lognormvariate(5, 0.5) for _ in range(count))
            low, high, weight = plans[count]
            assert values[low] + (values[high] - values[low]) * weight == percentile(values, q)
