"""The quality detector: pure, table-driven (check outcomes in -> events out)."""

from __future__ import annotations

import json
import random

from monitor.detect import TargetDetector
from monitor.detect.quality import QualityDetector
from monitor.detect.stats import fisher_more_failures
from monitor.domain import (
    CheckOutcome,
    CheckResult,
    DetectionThresholds,
    DriftEvent,
    DriftKind,
    Observation,
)
from tests.detect_helpers import failed, obs

PASS, FAIL, NA = CheckOutcome.PASS, CheckOutcome.FAIL, CheckOutcome.NOT_APPLICABLE
DEFAULTS = DetectionThresholds()
RIGHT = "391"
WRONG = "Three hundred ninety-one"


def answer(i: int, right: bool, **changes: object) -> Observation:
    """A probe of the issue's arithmetic canary: two checks, both pass or both fail."""
    if right:
        checks = (CheckResult("content_equals", PASS), CheckResult("content_regex", PASS))
    else:
        checks = (CheckResult("content_equals", FAIL, f'answered "{WRONG}", not "391"'),
                  CheckResult("content_regex", FAIL, f'answered "{WRONG}", not matching'))
    return obs(i, content=RIGHT if right else WRONG, checks=checks, **changes)


def quality(history: list[Observation],
            thresholds: DetectionThresholds = DEFAULTS) -> list[DriftEvent]:
    detector = QualityDetector("gpt-4o-arith", thresholds)
    return [event for o in history for event in detector.step(o)]


def steady(n: int, seed: int, pass_rate: float = 0.95, start: int = 0) -> list[Observation]:
    rng = random.Random(seed)
    return [answer(start + i, rng.random() < pass_rate) for i in range(n)]


def test_fisher_tail_matches_values_worked_out_by_hand() -> None:
    # 3 failures among 20 pooled, 10 drawn: all 3 in the draw is C(10,3)/C(20,3) = 120/1140.
    assert abs(fisher_more_failures(0, 10, 3, 10) - 120 / 1140) < 1e-12
    assert fisher_more_failures(5, 10, 0, 10) == 1.0
    assert fisher_more_failures(0, 0, 3, 10) == 1.0


def test_a_steady_95_percent_canary_never_alerts() -> None:
    assert quality(steady(3000, seed=7)) == []


def test_a_drop_opens_naming_the_checks_the_answer_and_the_backend_before_and_after() -> None:
    history = steady(300, seed=1)
    history += [answer(300 + i, False, system_fingerprint="fp_b") for i in range(10)]
    events = quality(history)
    assert len(events) == 1
    (event,) = events
    assert event.kind is DriftKind.QUALITY and event.key == "pass_rate" and event.opened
    assert event.before["system_fingerprint"] == "fp_a"
    assert event.after["system_fingerprint"] == "fp_b"
    assert set(event.after["failing"]) == {"content_equals", "content_regex"}
    assert event.after["example"]["content"] == WRONG
    assert f"fp_b (gpt-4o-2024-08-06) answered '{WRONG}'" in event.explanation
    assert "content_equals" in event.explanation and "before: fp_a" in event.explanation


def test_it_clears_once_answers_are_right_again_and_not_before() -> None:
    history = steady(300, seed=2)
    history += [answer(300 + i, False) for i in range(12)]
    history += [answer(312 + i, True) for i in range(40)]
    events = quality(history)
    assert [e.opened for e in events] == [True, False]
    closed_at = history.index(next(o for o in history if o.uid == events[1].probe_uids[-1]))
    # The recent window must lose most of its failing answers first.
    assert closed_at - 312 >= 10
    assert "pass their checks again" in events[1].explanation


def test_failed_probes_and_not_applicable_checks_do_not_count() -> None:
    history = steady(300, seed=3)
    history += [failed(300 + i) for i in range(50)]
    history += [obs(350 + i, checks=(CheckResult("content_equals", NA),)) for i in range(50)]
    assert quality(history) == []


def test_changed_checks_start_the_baseline_over_and_clear_an_open_condition() -> None:
    history = steady(300, seed=4)
    history += [answer(300 + i, False) for i in range(12)]
    history.append(obs(312, checks=(CheckResult("finish_reason", PASS),)))
    events = quality(history)
    assert [e.opened for e in events] == [True, False]
    assert "checks changed" in events[1].explanation


def test_warm_up_counts_checked_probes_up_to_the_first_test() -> None:
    detector = TargetDetector("t", DEFAULTS)
    assert not [w for w in detector.warmups() if w.detector == "quality"]  # no checks: none
    for o in steady(30, seed=5):
        detector.step(o)
    needed = DEFAULTS.quality_recent_probes + DEFAULTS.quality_baseline_min_probes
    assert [(w.baseline, w.seen, w.needed) for w in detector.warmups()
            if w.detector == "quality"] == [("pass rate baseline", 30, needed)]


def test_snapshot_restores_the_same_state() -> None:
    history = steady(200, seed=6) + [answer(200 + i, False) for i in range(15)]
    straight = quality(history)
    detector = QualityDetector("gpt-4o-arith", DEFAULTS)
    events = [e for o in history[:205] for e in detector.step(o)]
    restored = QualityDetector.restore("gpt-4o-arith", DEFAULTS,
                                       json.loads(json.dumps(detector.snapshot())))
    events += [e for o in history[205:] for e in restored.step(o)]
    assert events == straight and straight
