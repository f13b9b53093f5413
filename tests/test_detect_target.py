"""All detectors of a target together: the fold, warm-up, quiet steady state, and the snapshot
invariant that makes replaying history give the events that live detection gave."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import pytest

from monitor.detect import TargetDetector, detect
from monitor.domain import (
    CheckOutcome,
    CheckResult,
    DetectionThresholds,
    DriftEvent,
    DriftKind,
    ErrorKind,
    Observation,
    RateLimits,
)
from tests.detect_helpers import failed, obs, run, steady

HOUR_MS = 3_600_000
# Short acceptance and retirement so a few thousand probes go through every path.
QUICK = DetectionThresholds(
    fingerprint_retired_after_ms=2 * HOUR_MS,
    fingerprint_accept_after_ms=3 * HOUR_MS,
    model_accept_after_ms=2 * HOUR_MS,
    quota_accept_after_ms=2 * HOUR_MS,
    output_accept_after_ms=2 * HOUR_MS,
    latency_max_total_ms=600,
)


def eventful(n: int, seed: int) -> list[Observation]:
    """A history in which every kind of drift comes and goes: each regime flips at random."""
    rng = random.Random(seed)
    # Answers passing their check, then failing half the time: a stream of its own, so the
    # other regimes flip as they did before checks existed.
    check_rng, worse = random.Random(seed + 1), False
    flips = {"fp": False, "model": False, "slow": False, "limit": False, "low": False,
             "content": False, "outage": False, "throttled": False, "request": False}
    rates = {"fp": 0.004, "model": 0.005, "slow": 0.006, "limit": 0.005, "low": 0.01,
             "content": 0.006, "outage": 0.01, "throttled": 0.008, "request": 0.0005}
    history = []
    for i in range(n):
        if check_rng.random() < 0.006:
            worse = not worse
        passed = check_rng.random() < (0.5 if worse else 0.97)
        checks = (CheckResult("content_equals", CheckOutcome.PASS if passed
                              else CheckOutcome.FAIL, None if passed else "answered x"),)
        for regime, rate in rates.items():
            if rng.random() < (rate * 15 if flips[regime] and regime in ("outage", "throttled")
                               else rate):
                flips[regime] = not flips[regime]
        if flips["outage"] and rng.random() < 0.9:
            kind = rng.choice([ErrorKind.READ_TIMEOUT, ErrorKind.HTTP_SERVER_ERROR])
            history.append(failed(i, kind))
            continue
        if flips["throttled"] and rng.random() < 0.7:
            history.append(failed(i, ErrorKind.RATE_LIMITED))
            continue
        if rng.random() < 0.01:
            history.append(failed(i, ErrorKind.CONNECTION_RESET))
            continue
        pool = ["fp_c"] if flips["fp"] else ["fp_a", "fp_a", "fp_a", "fp_b"]
        total = rng.uniform(160, 240) * (3 if flips["slow"] else 1)
        history.append(obs(
            i,
            system_fingerprint=rng.choice(pool) if rng.random() > 0.05 else None,
            model="gpt-4o-2024-11-20" if flips["model"] else "gpt-4o-2024-08-06",
            total_ms=total,
            time_to_first_token_ms=total / 2,
            openai_processing_ms=rng.uniform(100, 140) * (2 if flips["slow"] else 1),
            rate_limits=RateLimits(
                limit_requests=5_000 if flips["limit"] else 10_000,
                limit_tokens=30_000_000,
                remaining_requests=rng.randint(0, 400) if flips["low"] else 9_000,
                remaining_tokens=None,
            ),
            content="Pong." if flips["content"] else "pong",
            request_hash="req-2" if flips["request"] else "req-1",
            checks=checks,
        ))
    return history


@pytest.fixture(scope="module")
def history() -> list[Observation]:
    return eventful(2500, seed=42)


@pytest.fixture(scope="module")
def straight(history: list[Observation]) -> list[list[DriftEvent]]:
    detector = TargetDetector("gpt-4o", QUICK)
    return [detector.step(o) for o in history]


def test_the_eventful_history_exercises_every_kind_both_ways(
    straight: list[list[DriftEvent]],
) -> None:
    seen = {(e.kind, e.opened) for events in straight for e in events}
    assert seen == {(kind, opened) for kind in DriftKind for opened in (True, False)}


def test_resuming_from_a_json_snapshot_gives_the_same_events_at_any_split(
    history: list[Observation], straight: list[list[DriftEvent]]
) -> None:
    live = TargetDetector("gpt-4o", QUICK)
    final = TargetDetector("gpt-4o", QUICK)
    for o in history:
        final.step(o)
    for split in range(len(history) + 1):
        if split % 83 == 0 or split in (1, 9, 10, 11, len(history)):
            saved = json.loads(json.dumps(live.snapshot()))
            resumed = TargetDetector.restore("gpt-4o", QUICK, saved)
            assert [resumed.step(o) for o in history[split:]] == straight[split:], split
            assert resumed.active() == final.active()
            assert resumed.snapshot() == final.snapshot()
        if split < len(history):
            live.step(history[split])


def test_a_json_round_trip_before_every_step_changes_nothing(
    history: list[Observation], straight: list[list[DriftEvent]]
) -> None:
    detector = TargetDetector("gpt-4o", QUICK)
    for o, expected in zip(history, straight, strict=True):
        snapshot = json.loads(json.dumps(detector.snapshot()))
        detector = TargetDetector.restore("gpt-4o", QUICK, snapshot)
        assert detector.step(o) == expected


def test_detect_is_the_fold_from_empty_state(
    history: list[Observation], straight: list[list[DriftEvent]]
) -> None:
    assert detect("gpt-4o", history, QUICK) == [e for events in straight for e in events]


def test_every_event_is_small_json_and_one_sentence(straight: list[list[DriftEvent]]) -> None:
    for event in (e for events in straight for e in events):
        json.dumps([event.before, event.after])
        assert 1 <= len(event.probe_uids) <= 5
        assert list(event.probe_uids) == sorted(event.probe_uids)  # oldest first
        assert event.explanation.startswith("gpt-4o")
        assert event.explanation.endswith(".") and "\n" not in event.explanation


def test_conditions_alternate_open_and_clear_per_key(straight: list[list[DriftEvent]]) -> None:
    state: dict[tuple[DriftKind, str], bool] = {}
    for event in (e for events in straight for e in events):
        assert state.get((event.kind, event.key), False) is not event.opened, event
        state[(event.kind, event.key)] = event.opened


def test_active_lists_the_opening_events_still_open(history: list[Observation]) -> None:
    detector = TargetDetector("gpt-4o", QUICK)
    open_now: dict[tuple[DriftKind, str], DriftEvent] = {}
    for o in history:
        for event in detector.step(o):
            if event.opened:
                open_now[(event.kind, event.key)] = event
            else:
                del open_now[(event.kind, event.key)]
        assert sorted(detector.active(), key=repr) == sorted(open_now.values(), key=repr)


def test_the_first_probes_never_alert_whatever_they_show() -> None:
    chaos = []
    for i in range(10):
        if i % 3 == 0:
            chaos.append(failed(i, ErrorKind.RATE_LIMITED if i % 2 else ErrorKind.READ_TIMEOUT))
        else:
            chaos.append(obs(
                i, model=f"m{i}", system_fingerprint=f"fp_{i}", total_ms=100.0 * i,
                rate_limits=RateLimits(limit_requests=i, remaining_requests=0),
                content=f"answer {i}", finish_reason="length", prompt_tokens=i,
            ))
    assert run(chaos) == []


def test_a_steady_canary_with_occasional_single_errors_raises_nothing() -> None:
    history = steady(0, 6000, seed=8)
    for i in range(37, 6000, 211):
        history[i] = failed(i, ErrorKind.READ_TIMEOUT)
    for i in range(101, 6000, 613):
        history[i] = failed(i, ErrorKind.RATE_LIMITED)
    assert run(history) == []


def test_a_snapshot_of_another_version_is_refused() -> None:
    snapshot = TargetDetector("gpt-4o", QUICK).snapshot()
    with pytest.raises(ValueError, match="fold the stored history again"):
        TargetDetector.restore("gpt-4o", QUICK, snapshot | {"version": 0})


def test_state_stays_bounded_over_a_long_history() -> None:
    detector = TargetDetector("gpt-4o", DetectionThresholds())
    sizes = []
    for chunk in range(4):
        for o in steady(chunk * 5000, (chunk + 1) * 5000, seed=chunk):
            detector.step(o)
        sizes.append(len(json.dumps(detector.snapshot())))
    assert max(sizes) - min(sizes) < 0.05 * max(sizes)


def test_detectors_import_nothing_but_the_domain() -> None:
    package = Path(__file__).resolve().parents[1] / "monitor" / "detect"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for module in names:
                if module.startswith("monitor"):
                    assert module == "monitor.domain" or module.startswith("monitor.detect"), path
                else:
                    assert module.split(".")[0] in {
                        "__future__", "abc", "bisect", "collections", "dataclasses", "datetime",
                        "functools", "hashlib", "itertools", "math", "typing",
                    }, (path, module)
