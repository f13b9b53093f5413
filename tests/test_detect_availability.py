"""Availability drift: runs of failures and a high error rate; 429s are quota's."""

from __future__ import annotations

import re

from monitor.domain import (
    DetectionThresholds,
    DriftEvent,
    DriftKind,
    ErrorKind,
    Observation,
    Severity,
)
from tests.detect_helpers import failed, index_of, of_kind, run, steady


def availability_events(
    history: list[Observation], thresholds: DetectionThresholds | None = None
) -> list[DriftEvent]:
    return of_kind(run(history, thresholds), DriftKind.AVAILABILITY)


def with_failures(n: int, failures: dict[int, ErrorKind]) -> list[Observation]:
    history = steady(0, n)
    for i, kind in failures.items():
        history[i] = failed(i, kind)
    return history


def test_opens_exactly_at_the_nth_failure_and_clears_at_the_first_success() -> None:
    history = with_failures(80, {
        50: ErrorKind.READ_TIMEOUT,
        51: ErrorKind.HTTP_SERVER_ERROR,
        52: ErrorKind.READ_TIMEOUT,
        53: ErrorKind.READ_TIMEOUT,
    })
    events = availability_events(history)
    assert [(e.key, e.opened, index_of(e)) for e in events] == [
        ("consecutive_failures", True, 52),
        ("consecutive_failures", False, 54),
    ]
    opened, cleared = events
    assert opened.severity is Severity.CRITICAL
    assert (opened.before, opened.after) == ({}, {"read_timeout": 2, "http_server_error": 1})
    assert opened.probe_uids == ("p000050", "p000051", "p000052")
    assert opened.explanation == (
        "gpt-4o: 3 probes in a row failed: 2 read timeout, 1 HTTP 503."
    )
    assert cleared.before == {"read_timeout": 3, "http_server_error": 1}
    assert cleared.explanation == (
        "gpt-4o answered again after 4 failed probes in a row (3 read timeout, 1 HTTP 503).")


def test_the_threshold_is_configurable() -> None:
    history = with_failures(80, {i: ErrorKind.CONNECT_TIMEOUT for i in range(40, 50)})
    thresholds = DetectionThresholds(availability_consecutive_failures=5)
    assert [index_of(e) for e in availability_events(history, thresholds)] == [44, 50]


def test_an_occasional_single_error_never_alerts() -> None:
    history = with_failures(3000, {i: ErrorKind.READ_TIMEOUT for i in range(15, 3000, 97)})
    assert run(history) == []


def test_two_failures_in_a_row_do_not_alert() -> None:
    history = with_failures(100, {40: ErrorKind.READ_TIMEOUT, 41: ErrorKind.READ_TIMEOUT})
    assert availability_events(history) == []


def test_429s_are_left_to_quota() -> None:
    history = with_failures(80, {i: ErrorKind.RATE_LIMITED for i in range(40, 50)})
    events = run(history)
    assert {e.kind for e in events} == {DriftKind.QUOTA}


def test_a_429_neither_extends_nor_breaks_a_run() -> None:
    history = with_failures(80, {
        40: ErrorKind.READ_TIMEOUT,
        41: ErrorKind.RATE_LIMITED,
        42: ErrorKind.READ_TIMEOUT,
        43: ErrorKind.RATE_LIMITED,
        44: ErrorKind.READ_TIMEOUT,
    })
    events = availability_events(history)
    assert [(e.opened, index_of(e)) for e in events] == [(True, 44), (False, 45)]
    assert events[0].after == {"read_timeout": 3}


def test_intermittent_failures_open_error_rate_with_a_breakdown() -> None:
    pattern = {}
    for i in range(60, 100, 5):  # 2 failures in every 5 probes, never 3 in a row
        pattern[i] = ErrorKind.HTTP_SERVER_ERROR
        pattern[i + 2] = ErrorKind.INVALID_JSON
    events = availability_events(with_failures(160, pattern))
    assert [(e.key, e.opened) for e in events] == [("error_rate", True), ("error_rate", False)]
    opened, cleared = events
    assert 60 < index_of(opened) < 80
    assert opened.after["error_rate"] > 0.2
    assert set(opened.after["by_kind"]) == {"http_server_error", "invalid_json"}
    assert re.fullmatch(r"gpt-4o: (\d+) of the last 20 probes failed: (\d+) HTTP 503, (\d+) "
                        r"invalid json, more than the 20% allowed\.", opened.explanation)
    assert cleared.after["error_rate"] <= 0.1
    assert 100 < index_of(cleared) <= 120


def test_an_outage_is_one_alert() -> None:
    history = with_failures(120, {i: ErrorKind.CONNECTION_REFUSED for i in range(50, 80)})
    events = availability_events(history)
    assert [(e.key, e.opened, index_of(e)) for e in events] == [
        ("consecutive_failures", True, 52),
        ("consecutive_failures", False, 80),
    ]


def test_warm_up_never_alerts_but_a_dead_target_alerts_right_after() -> None:
    history = [failed(i) for i in range(15)]
    events = availability_events(history)
    assert [(e.key, index_of(e)) for e in events] == [("consecutive_failures", 10)]
