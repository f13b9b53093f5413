"""Quota drift: limits that change, remaining running low, 429s."""

from __future__ import annotations

from dataclasses import replace

from monitor.domain import DriftEvent, DriftKind, ErrorKind, Observation, RateLimits, Severity
from tests.detect_helpers import LIMITS, failed, index_of, obs, of_kind, run, steady

DAY = 24 * 60  # probes, at one a minute


def quota_events(history: list[Observation]) -> list[DriftEvent]:
    return of_kind(run(history), DriftKind.QUOTA)


def halved(start: int, stop: int) -> list[Observation]:
    return steady(start, stop, rate_limits=replace(LIMITS, limit_requests=5_000))


def test_a_changed_limit_opens_at_once_and_clears_when_it_returns() -> None:
    events = quota_events([*steady(0, 50), *halved(50, 60), *steady(60, 80)])
    assert [(e.key, e.opened, index_of(e)) for e in events] == [
        ("limit_requests", True, 50),
        ("limit_requests", False, 62),
    ]
    opened = events[0]
    assert (opened.before, opened.after, opened.severity) == (10_000, 5_000, Severity.WARNING)
    assert opened.explanation == (
        "gpt-4o's request limit changed from 10000 to 5000."
    )
    assert "back to 10000" in events[1].explanation


def test_a_lasting_limit_change_is_accepted_after_a_day() -> None:
    events = quota_events([*steady(0, 50), *halved(50, 60 + DAY)])
    assert [(e.opened, index_of(e)) for e in events] == [(True, 50), (False, 50 + DAY)]
    assert "5000 is accepted as the new baseline" in events[1].explanation


def test_remaining_running_low_opens_and_clears_with_hysteresis() -> None:
    low = replace(LIMITS, remaining_requests=500)
    hovering = replace(LIMITS, remaining_requests=1_500)  # above 10%, under twice that
    history = [
        *steady(0, 50),
        *steady(50, 53, rate_limits=low),
        *steady(53, 56, rate_limits=hovering),
        *steady(56, 60),
    ]
    events = quota_events(history)
    assert [(e.key, e.opened, index_of(e)) for e in events] == [
        ("remaining_requests", True, 50),
        ("remaining_requests", False, 56),
    ]
    assert events[0].severity is Severity.INFO
    assert events[0].after == {"limit": 10_000, "remaining": 500}
    assert "only 500 of 10000 requests left" in events[0].explanation


def test_a_single_429_never_alerts() -> None:
    history = steady(0, 300)
    for i in range(20, 300, 40):
        history[i] = failed(i, ErrorKind.RATE_LIMITED)
    assert run(history) == []


def test_repeated_429s_open_rate_limited_and_calm_clears_it() -> None:
    history = steady(0, 60)
    for i in (30, 34, 35):
        history[i] = failed(i, ErrorKind.RATE_LIMITED)
    events = run(history)
    assert [(e.kind, e.key, e.opened, index_of(e)) for e in events] == [
        (DriftKind.QUOTA, "rate_limited", True, 34),
        (DriftKind.QUOTA, "rate_limited", False, 38),
    ]
    assert events[0].probe_uids == ("p000030", "p000034")
    assert events[0].explanation == (
        "gpt-4o was rate limited (HTTP 429) on 2 of its last 10 probes."
    )


def test_a_429_saying_nothing_is_left_is_not_remaining_low() -> None:
    history = steady(0, 60)
    history[30] = failed(30, ErrorKind.RATE_LIMITED, rate_limits=replace(
        LIMITS, remaining_requests=0, remaining_tokens=0))
    assert quota_events(history) == []


def test_missing_headers_are_ignored() -> None:
    history = [*steady(0, 50), *steady(50, 100, rate_limits=RateLimits())]
    history += [obs(i, rate_limits=RateLimits(limit_tokens=30_000_000)) for i in range(100, 120)]
    assert quota_events(history) == []


def test_warm_up_never_alerts() -> None:
    history = [obs(i, rate_limits=replace(LIMITS, limit_requests=100 * i)) for i in range(10)]
    history += [failed(i, ErrorKind.RATE_LIMITED) for i in range(10, 12)]
    assert [index_of(e) for e in quota_events(history)] == [11]
    history[8] = failed(8, ErrorKind.RATE_LIMITED)
    history[9] = failed(9, ErrorKind.RATE_LIMITED)
    assert [index_of(e) for e in quota_events(history[:10])] == []


ANTHROPIC = replace(LIMITS, limit_input_tokens=400_000, remaining_input_tokens=399_000,
                    limit_output_tokens=80_000, remaining_output_tokens=79_000)


def test_anthropic_input_and_output_token_limits_are_watched_like_the_others() -> None:
    lowered = replace(ANTHROPIC, limit_output_tokens=16_000, remaining_output_tokens=15_000)
    scarce = replace(ANTHROPIC, remaining_input_tokens=1_000)
    events = quota_events([*steady(0, 50, rate_limits=ANTHROPIC),
                           *steady(50, 55, rate_limits=lowered),
                           *steady(55, 60, rate_limits=scarce)])
    assert [(e.key, e.opened, index_of(e)) for e in events] == [
        ("limit_output_tokens", True, 50),
        ("remaining_input_tokens", True, 55),
        ("limit_output_tokens", False, 57),
    ]
    assert events[0].explanation == "gpt-4o's output token limit changed from 80000 to 16000."
    assert events[1].explanation.endswith("1000 of 400000 input tokens left in its rate-limit "
                                          "window, under 10%.")


def test_a_state_saved_before_input_and_output_limits_were_watched_still_loads() -> None:
    from monitor.detect.quota import QuotaDetector
    from monitor.domain import DetectionThresholds

    old = QuotaDetector("gpt-4o", DetectionThresholds())
    state = old.dump()
    state["limits"] = {k: v for k, v in state["limits"].items()
                       if k in ("limit_requests", "limit_tokens")}
    restored = QuotaDetector("gpt-4o", DetectionThresholds())
    restored.load(state)
    assert restored.step(obs(0, rate_limits=ANTHROPIC)) == []
    assert set(restored.limits) == {"limit_requests", "limit_tokens", "limit_input_tokens",
                                    "limit_output_tokens"}
