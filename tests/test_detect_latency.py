"""Latency drift: slower than the baseline (rank test and ratio), or over an absolute limit."""

from __future__ import annotations

import random
from dataclasses import replace

from monitor.domain import DetectionThresholds, DriftEvent, DriftKind, Observation, Severity
from tests.detect_helpers import failed, index_of, of_kind, run, steady


def latency_events(
    history: list[Observation], thresholds: DetectionThresholds | None = None
) -> list[DriftEvent]:
    return of_kind(run(history, thresholds), DriftKind.LATENCY)


def slower(
    history: list[Observation], factor: float, field: str = "total_ms"
) -> list[Observation]:
    return [replace(o, **{field: getattr(o, field) * factor}) for o in history]


def test_a_2x_regression_opens_within_10_probes_and_clears_after_revert() -> None:
    history = [*steady(0, 200), *slower(steady(200, 260, seed=2), 2), *steady(260, 360, seed=3)]
    events = latency_events(history)
    assert [(e.key, e.opened) for e in events] == [("total_ms", True), ("total_ms", False)]
    opened, cleared = events
    assert 200 <= index_of(opened) < 210
    assert 180 < opened.before["p50_ms"] < 220 and opened.before["n"] == 60
    assert 360 < opened.after["p50_ms"] < 440 and opened.after["n"] == 10
    assert opened.severity is Severity.WARNING
    assert opened.probe_uids[-1] == f"p{index_of(opened):06d}"
    assert opened.explanation.startswith("gpt-4o's total time slowed down: median ")
    assert 260 < index_of(cleared) <= 270
    assert "back to normal" in cleared.explanation


def test_a_long_slowdown_stays_open_because_the_baseline_is_frozen() -> None:
    history = [*steady(0, 200), *slower(steady(200, 1200, seed=2), 2), *steady(1200, 1300)]
    events = latency_events(history)
    assert [(e.opened, index_of(e) // 100) for e in events] == [(True, 2), (False, 12)]


def test_jitter_and_tail_spikes_never_alert() -> None:
    rng = random.Random(7)
    history = [
        replace(o, total_ms=200 * rng.lognormvariate(0, 0.2) * (4 if rng.random() < 0.02 else 1))
        for o in steady(0, 5000)
    ]
    assert latency_events(history) == []


def test_a_slower_network_is_told_apart_from_a_slower_model() -> None:
    rng = random.Random(5)
    history = [
        replace(o, openai_processing_ms=rng.uniform(100, 140), time_to_first_token_ms=None)
        for o in steady(0, 300)
    ]
    history[200:] = slower(history[200:], 2)  # total doubles, the server's own time does not
    assert {e.key for e in latency_events(history)} == {"total_ms"}
    history[200:] = slower(history[200:], 3, "openai_processing_ms")
    # The model itself is slower: one condition, on the metric that explains it.
    assert [(e.key, e.opened) for e in latency_events(history)] == [("processing_ms", True)]


def test_a_slower_first_token_explains_a_slower_total() -> None:
    rng = random.Random(11)
    history = [replace(o, time_to_first_token_ms=rng.uniform(80, 120)) for o in steady(0, 300)]
    history[200:260] = slower(slower(history[200:260], 3, "time_to_first_token_ms"), 2)
    assert [(e.key, e.opened) for e in latency_events(history)] == [
        ("ttft_ms", True), ("ttft_ms", False)]


def test_time_to_first_token_has_its_own_condition() -> None:
    rng = random.Random(9)
    history = [replace(o, time_to_first_token_ms=rng.uniform(80, 120)) for o in steady(0, 300)]
    history[200:] = slower(history[200:], 2, "time_to_first_token_ms")
    (event,) = latency_events(history)
    assert (event.key, event.opened) == ("ttft_ms", True)
    assert "time to first token" in event.explanation


def test_a_server_reporting_zero_processing_time_hides_no_slowdown() -> None:
    """Some servers send openai-processing-ms: 0 on streams; 0 against 0 explains nothing."""
    rng = random.Random(5)
    history = [replace(o, openai_processing_ms=0.0, time_to_first_token_ms=rng.uniform(80, 120))
               for o in steady(0, 300)]
    history[200:] = slower(history[200:], 3, "time_to_first_token_ms")
    assert [(e.key, e.opened) for e in latency_events(history)] == [("ttft_ms", True)]


def test_an_absolute_limit_opens_over_it_and_clears_under_it() -> None:
    thresholds = DetectionThresholds(latency_max_total_ms=300)
    history = [*steady(0, 100), *slower(steady(100, 120, seed=2), 1.8), *steady(120, 150)]
    events = [e for e in latency_events(history, thresholds) if e.key == "max_total_ms"]
    assert [e.opened for e in events] == [True, False]
    assert events[0].before == {"max_p50_ms": 300}
    assert events[0].after["p50_ms"] > 300
    assert 100 <= index_of(events[0]) < 110 and 120 <= index_of(events[1]) < 130


def test_no_limit_is_no_condition() -> None:
    history = [*steady(0, 100), *slower(steady(100, 120, seed=2), 1.8)]
    assert not [e for e in latency_events(history) if e.key.startswith("max_")]


def test_failed_probes_do_not_count_even_with_a_long_time() -> None:
    history = steady(0, 200)
    for i in range(100, 200, 5):
        history[i] = failed(i, total_ms=30_000.0)
    assert latency_events(history) == []


def test_warm_up_never_alerts() -> None:
    history = [*steady(0, 30), *slower(steady(30, 60, seed=2), 3)]
    early = latency_events(history, DetectionThresholds(warmup_probes=10))
    assert early and index_of(early[0]) < 40
    late = latency_events(history, DetectionThresholds(warmup_probes=40))
    assert late and index_of(late[0]) >= 40
