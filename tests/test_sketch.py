"""The quantile sketch: within 1% of exact percentiles, merging equals sketching the union, and
the byte encoding round-trips. Pure: no fixtures."""

from __future__ import annotations

import math
import random

import pytest

from monitor.sketch import Sketch

QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


def exact(values: list[float], q: float) -> float:
    """Nearest rank: the value of rank ceil(q * n) in sorted order."""
    ordered = sorted(values)
    rank = min(max(math.ceil(q * len(ordered)), 1), len(ordered))
    return ordered[rank - 1]


def lognormal(rng: random.Random, n: int) -> list[float]:
    return [400 * rng.lognormvariate(0, 0.6) for _ in range(n)]


def uniform(rng: random.Random, n: int) -> list[float]:
    return [rng.uniform(0.5, 30_000) for _ in range(n)]


def bimodal(rng: random.Random, n: int) -> list[float]:
    # Fast answers and timeouts: the p50 can land in either mode.
    return [rng.gauss(180, 20) if rng.random() < 0.7 else rng.gauss(30_000, 500)
            for _ in range(n)]


@pytest.mark.parametrize("make", [lognormal, uniform, bimodal], ids=lambda f: f.__name__)
@pytest.mark.parametrize("n", [1, 7, 5000])
def test_quantiles_are_within_one_percent_of_the_exact_percentiles(make, n) -> None:  # type: ignore[no-untyped-def]
    values = make(random.Random(n), n)
    sketch = Sketch.of(values)
    for q in QUANTILES:
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert estimate == pytest.approx(exact(values, q), rel=0.01), q


def test_several_quantiles_at_once_equal_one_at_a_time() -> None:
    sketch = Sketch.of(bimodal(random.Random(5), 2000))
    assert sketch.quantiles(QUANTILES) == [sketch.quantile(q) for q in QUANTILES]
    assert Sketch().quantiles((0.5, 0.9)) == [None, None]


def test_count_sum_min_and_max_are_exact() -> None:
    values = lognormal(random.Random(1), 3000)
    sketch = Sketch.of(values)
    assert (sketch.count, sketch.min, sketch.max) == (3000, min(values), max(values))
    assert sketch.sum == pytest.approx(math.fsum(values), rel=1e-12)
    assert sketch.quantile(0) == min(values)
    assert sketch.quantile(1) == max(values)


def test_an_empty_sketch_has_no_quantiles() -> None:
    assert Sketch().quantile(0.5) is None
    assert not Sketch()


def test_zero_and_negative_values_are_answered_as_zero_and_non_finite_ones_ignored() -> None:
    sketch = Sketch.of([0.0, 0.0, 0.0, 5.0, float("nan"), float("inf")])
    assert sketch.count == 4
    assert sketch.quantile(0.5) == 0.0
    assert sketch.quantile(1) == 5.0


def test_merging_equals_sketching_the_union() -> None:
    rng = random.Random(2)
    parts = [lognormal(rng, 700), uniform(rng, 300), bimodal(rng, 1000), [], [0.0, 2.5]]
    merged = Sketch()
    for part in parts:
        merged.merge(Sketch.of(part))
    union = [v for part in parts for v in part]
    assert merged == Sketch.of(union)
    decoded_late = Sketch()
    for part in parts:
        decoded_late.merge(Sketch.from_bytes(Sketch.of(part).to_bytes()))
    assert decoded_late == merged
    for q in QUANTILES:
        assert merged.quantile(q) == pytest.approx(exact(union, q), rel=0.01)


def test_merging_into_a_sketch_that_starts_higher_extends_it_downwards() -> None:
    high, low = Sketch.of([5000.0, 9000.0]), Sketch.of([1.0, 2.0])
    high.merge(low)
    assert high == Sketch.of([5000.0, 9000.0, 1.0, 2.0])


@pytest.mark.parametrize("values", [
    pytest.param([], id="empty"),
    pytest.param([0.0], id="zero"),
    pytest.param([412.0] * 300, id="wide-counts"),
    pytest.param([1e-9, 1.0, 1e15], id="clamped-extremes"),
])
def test_encoding_round_trips(values: list[float]) -> None:
    sketch = Sketch.of(values)
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch


def test_a_large_sketch_round_trips_and_stays_compact() -> None:
    sketch = Sketch.of(lognormal(random.Random(3), 100_000))
    blob = sketch.to_bytes()
    assert Sketch.from_bytes(blob) == sketch
    assert len(blob) < 2000


def test_an_unknown_encoding_is_refused() -> None:
    blob = bytearray(Sketch.of([1.0]).to_bytes())
    blob[0] = 99
    with pytest.raises(ValueError, match="version 99"):
        Sketch.from_bytes(bytes(blob))


def test_cumulative_counts_match_exact_counts_away_from_the_bounds() -> None:
    values = lognormal(random.Random(4), 5000) + [0.0]
    bounds = [25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10_000.0, 60_000.0]
    sketch = Sketch.of(values)
    for bound, got in zip(bounds, sketch.cumulative_at(bounds), strict=True):
        # Only values within 0.5% of the bound may land on the wrong side.
        sure = sum(v <= bound * 0.995 for v in values)
        possible = sum(v <= bound * 1.005 for v in values)
        assert sure <= got <= possible, bound
    assert sketch.cumulative_at([-1.0, 0.0, 1e9]) == [0, 1, 5001]
