"""system_fingerprint drift: new, retired, share shift; alternation in the pool stays quiet."""

from __future__ import annotations

import random

from monitor.detect import TargetDetector
from monitor.detect.fingerprint import MAX_NEW
from monitor.domain import DetectionThresholds, DriftEvent, DriftKind, Observation, Severity
from tests.detect_helpers import failed, index_of, obs, of_kind, run, steady

HOUR = 60  # probes, at one a minute


def fingerprint_events(observations: list[Observation]) -> list[DriftEvent]:
    return of_kind(run(observations), DriftKind.FINGERPRINT)


def test_new_fingerprint_opens_at_once_and_clears_when_reverted() -> None:
    history = [
        *steady(0, 200),
        *steady(200, 205, system_fingerprint="fp_new"),
        *steady(205, 400),
    ]
    events = fingerprint_events(history)
    assert [(e.key, e.opened, index_of(e)) for e in events] == [
        ("new:fp_new", True, 200),
        ("new:fp_new", False, 214),  # the 10th probe without it
    ]
    opened, cleared = events
    assert opened.before == ["fp_a", "fp_b"]
    assert opened.after == "fp_new"
    assert opened.severity is Severity.WARNING
    assert opened.probe_uids == ("p000200",)
    assert opened.explanation == (
        "gpt-4o started answering with system_fingerprint fp_new, never seen before for this "
        "target (known: fp_a, fp_b)."
    )
    assert "reverted" in cleared.explanation


def test_new_fingerprint_is_accepted_after_a_day_and_the_old_one_retires() -> None:
    history = [*steady(0, 100), *steady(100, 100 + 50 * HOUR, system_fingerprint="fp_new")]
    events = fingerprint_events(history)
    summary = [(e.key, e.opened) for e in events]
    assert summary == [
        ("new:fp_new", True),
        ("retired:fp_b", True),
        ("retired:fp_a", True),
        ("new:fp_new", False),
        ("retired:fp_b", False),
        ("retired:fp_a", False),
    ]
    accepted = events[3]
    assert index_of(accepted) == 100 + 24 * HOUR
    assert "accepted into the known pool" in accepted.explanation
    assert accepted.after == ["fp_a", "fp_b", "fp_new"]
    retired_a = events[2]
    assert retired_a.severity is Severity.INFO
    assert retired_a.before == ["fp_a", "fp_b"]  # fp_new is not accepted yet
    assert retired_a.after == ["fp_b"]
    assert "dropped from the known pool" in events[5].explanation
    assert events[5].after == ["fp_new"]


def test_a_dropped_fingerprint_that_returns_is_new_again() -> None:
    history = [
        *steady(0, 100),
        *steady(100, 100 + 50 * HOUR, system_fingerprint="fp_new"),
        obs(100 + 50 * HOUR, system_fingerprint="fp_a"),
    ]
    last = fingerprint_events(history)[-1]
    assert (last.key, last.opened, last.before) == ("new:fp_a", True, ["fp_new"])


def test_retired_fingerprint_clears_when_it_answers_again() -> None:
    history = [
        *steady(0, 100),
        *steady(100, 100 + 30 * HOUR, system_fingerprint="fp_a"),
        *steady(100 + 30 * HOUR, 100 + 31 * HOUR),
    ]
    events = [e for e in fingerprint_events(history) if e.key.startswith("retired:")]
    assert [(e.key, e.opened) for e in events] == [("retired:fp_b", True), ("retired:fp_b", False)]
    prints = [o.system_fingerprint for o in history]
    last_b = max(i for i in range(100) if prints[i] == "fp_b")
    assert index_of(events[0]) == last_b + 24 * HOUR
    back = prints.index("fp_b", 100 + 30 * HOUR)
    assert index_of(events[1]) == back
    assert "answering again" in events[1].explanation


def test_a_fingerprint_leaving_the_pool_shows_first_as_a_share_shift() -> None:
    history = [*steady(0, 400), *steady(400, 600, system_fingerprint="fp_a")]
    events = fingerprint_events(history)
    assert [(e.key, e.opened) for e in events] == [("share", True)]
    assert 400 < index_of(events[0]) <= 500
    assert events[0].before["fp_b"] > 0.2 and events[0].after["fp_b"] < 0.05


def test_alternation_within_the_pool_never_alerts() -> None:
    rng = random.Random(3)
    two = steady(0, 3000, seed=5)
    three = [
        obs(i, system_fingerprint=rng.choices(["fp_a", "fp_b", "fp_c"], weights=[3, 1, 1])[0])
        for i in range(3000)
    ]
    assert fingerprint_events(two) == []
    assert fingerprint_events(three) == []


def test_share_shift_opens_once_and_clears_when_the_mix_returns() -> None:
    rng = random.Random(11)

    def mix(start: int, stop: int, share_a: float) -> list[Observation]:
        return [
            obs(i, system_fingerprint="fp_a" if rng.random() < share_a else "fp_b")
            for i in range(start, stop)
        ]

    history = [*mix(0, 600, 0.75), *mix(600, 800, 0.2), *mix(800, 1200, 0.75)]
    events = fingerprint_events(history)
    assert [(e.key, e.opened) for e in events] == [("share", True), ("share", False)]
    opened = events[0]
    assert 600 < index_of(opened) <= 700
    assert opened.before["fp_a"] > 0.65 and opened.after["fp_a"] <= opened.before["fp_a"] - 0.2
    assert opened.severity is Severity.INFO
    assert "fp_a" in opened.explanation and "->" in opened.explanation
    assert index_of(events[1]) > 800


def test_probes_without_a_fingerprint_are_ignored() -> None:
    history = [
        obs(i, system_fingerprint=None) if i % 3 else obs(i) for i in range(200)
    ] + [failed(i) for i in range(200, 203)]
    assert fingerprint_events(history) == []


def test_a_server_that_starts_sending_fingerprints_gets_a_baseline_first() -> None:
    history = [obs(i, system_fingerprint=None) for i in range(100)]
    history += [obs(i, system_fingerprint="fp_late") for i in range(100, 200)]
    assert fingerprint_events(history) == []


def test_fingerprint_warm_up_never_alerts() -> None:
    thresholds = DetectionThresholds()
    warmup = [
        obs(i, system_fingerprint=f"fp_{i}") for i in range(thresholds.fingerprint_warmup_probes)
    ]
    assert fingerprint_events(warmup) == []
    assert fingerprint_events([*warmup, obs(len(warmup), system_fingerprint="fp_other")])


def test_a_server_inventing_fingerprints_keeps_a_bounded_state() -> None:
    detector = TargetDetector("gpt-4o", DetectionThresholds())
    for o in steady(0, 100):
        detector.step(o)
    opened = 0
    for i in range(100, 400):
        opened += sum(e.opened for e in detector.step(obs(i, system_fingerprint=f"fp_{i}")))
        assert len(detector.active()) <= MAX_NEW
    assert opened > MAX_NEW  # every one is reported while there is room ...
    assert len(detector.snapshot()["fingerprint"]["state"]["unseen"]) <= MAX_NEW  # ... no more
