"""The little statistics the detectors need, in the standard library only.

Each function computes the textbook quantity it names (the tests check them against values worked
out by hand), so a detector's threshold means what its docstring says.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from itertools import chain


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, interpolating linearly between
    the closest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


@functools.lru_cache(maxsize=64)
def percentile_plans(longest: int, q: float) -> tuple[tuple[int, int, float], ...]:
    """For each length up to `longest`, what `percentile` of that many values interpolates:
    (low rank, high rank, weight of the high one), so that `v[low] + (v[high] - v[low]) *
    weight` is exactly `percentile(v, q)` (a fold asks at every probe). Length 0: unused."""
    plans = [(0, 0, 0.0)]
    for count in range(1, longest + 1):
        position = (count - 1) * q / 100
        low = math.floor(position)
        plans.append((low, min(low + 1, count - 1), position - low))
    return tuple(plans)


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided p-value that values in x tend to be larger than values in y (Mann-Whitney U).

    Normal approximation with tie and continuity correction, as scipy's
    `mannwhitneyu(x, y, alternative="greater", method="asymptotic")`. Rank based, so one wild
    latency spike weighs no more than any other slow probe.
    """
    nx, ny = len(x), len(y)
    if not nx or not ny:
        raise ValueError("Mann-Whitney U needs values on both sides")
    n = nx + ny
    # U of x counts the pairs in which x is larger, a tie counting half: the same number as
    # x's rank sum minus nx(nx+1)/2, without ranking the pooled sample (it runs every probe).
    ys = sorted(y)
    u = 0.0
    for value in x:
        below = bisect_left(ys, value)
        u += below + (bisect_right(ys, value) - below) / 2
    tie_term = sum(t**3 - t for t in Counter(chain(x, y)).values() if t > 1)
    variance = nx * ny / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:  # every value tied: nothing points either way
        return 1.0
    z = (u - nx * ny / 2 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def chi_square_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X chi-square distributed with df (a whole number >= 1) degrees of
    freedom: the regularized upper incomplete gamma Q(df/2, statistic/2), built up from
    Q(1/2, y) = erfc(sqrt y) or Q(1, y) = exp(-y) by Q(a+1, y) = Q(a, y) + y^a e^-y / Gamma(a+1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if statistic <= 0:
        return 1.0
    y = statistic / 2
    a, q = (0.5, math.erfc(math.sqrt(y))) if df % 2 else (1.0, math.exp(-y))
    while a < df / 2:
        q += math.exp(a * math.log(y) - y - math.lgamma(a + 1))
        a += 1
    return min(q, 1.0)


def homogeneity_p_value(a: Sequence[int], b: Sequence[int]) -> float:
    """p-value of Pearson's chi-square test that two samples of counts over the same categories
    come from one distribution (a 2 x k table; categories empty on both sides are dropped)."""
    if len(a) != len(b):
        raise ValueError("both samples must count the same categories")
    total_a, total_b = sum(a), sum(b)
    total = total_a + total_b
    if not total_a or not total_b:
        return 1.0
    statistic = 0.0
    categories = 0
    for count_a, count_b in zip(a, b, strict=True):
        column = count_a + count_b
        if not column:
            continue
        categories += 1
        expected_a = total_a * column / total
        expected_b = total_b * column / total
        statistic += (count_a - expected_a) ** 2 / expected_a
        statistic += (count_b - expected_b) ** 2 / expected_b
    if categories < 2:
        return 1.0
    return chi_square_sf(statistic, categories - 1)


# Cached: the quality detector asks at every probe, and its four counts rarely change.
@functools.lru_cache(maxsize=4096)
def fisher_more_failures(base_failed: int, base_total: int, recent_failed: int,
                         recent_total: int) -> float:
    """One-sided p-value of Fisher's exact test that the recent sample fails more often than
    the baseline: the chance, with every failure equally likely to fall anywhere in the pooled
    sample, that the recent one holds at least `recent_failed` of them (hypergeometric tail;
    as scipy's `fisher_exact(table, alternative="greater")`). Exact for any sample size, so a
    short baseline costs power, not false alerts."""
    total = base_total + recent_total
    failed = base_failed + recent_failed
    if not recent_total or not base_total:
        return 1.0
    ways = math.comb(total, recent_total)
    tail = sum(math.comb(failed, k) * math.comb(total - failed, recent_total - k)
               for k in range(recent_failed, min(failed, recent_total) + 1))
    return tail / ways
