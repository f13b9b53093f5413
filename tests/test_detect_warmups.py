"""Warm-ups: which baselines are still learning and how far each has got. The numbers must be
the detectors' own: a warm-up is reported up to the probe before the one at which its
condition can first open, never longer or shorter."""

from __future__ import annotations

import json

from monitor.detect import TargetDetector, Warmup
from monitor.domain import DetectionThresholds, DriftKind, ErrorKind, Observation, RateLimits
from tests.detect_helpers import failed, obs, steady

DEFAULTS = DetectionThresholds()


def fold(history: list[Observation],
         thresholds: DetectionThresholds = DEFAULTS) -> TargetDetector:
    detector = TargetDetector("gpt-4o", thresholds)
    for observation in history:
        detector.step(observation)
    return detector


def progress(detector: TargetDetector) -> dict[str, tuple[int, int]]:
    return {w.baseline: (w.seen, w.needed) for w in detector.warmups()}


def test_a_target_with_no_probes_waits_only_on_what_every_probe_feeds() -> None:
    # Fingerprint, model, limits and answer are learned from values a server may never send:
    # they show up once one has been seen, never as "0 of 30" for ever.
    assert progress(fold([])) == {
        "availability": (0, 10), "error rate window": (0, 20), "quota": (0, 10),
        "latency baseline": (0, 20)}


def test_twelve_healthy_probes_leave_the_fingerprint_pool_the_error_window_and_latency() -> None:
    detector = fold([obs(i) for i in range(12)])
    assert detector.warmups() == [
        Warmup("availability", "error rate window", 12, 20),
        Warmup("fingerprint", "fingerprint pool", 12, 30),
        Warmup("latency", "latency baseline", 12, 20),
    ]


def test_the_fingerprint_pool_is_learning_until_a_new_fingerprint_can_alert() -> None:
    needed = DEFAULTS.fingerprint_warmup_probes
    before = fold([obs(i) for i in range(needed - 1)])
    assert progress(before)["fingerprint pool"] == (needed - 1, needed)
    # The last learning probe takes a new fingerprint into the pool silently...
    assert not before.step(obs(needed - 1, system_fingerprint="fp_new"))
    assert "fingerprint pool" not in progress(before)
    # ...and from the next one on, a new fingerprint opens a condition.
    after = fold([obs(i) for i in range(needed)])
    assert "fingerprint pool" not in progress(after)
    events = after.step(obs(needed, system_fingerprint="fp_new"))
    assert [(e.kind, e.key) for e in events] == [(DriftKind.FINGERPRINT, "new:fp_new")]


def test_the_latency_baseline_is_learning_until_the_first_slowdown_can_open() -> None:
    # 10 fast probes, then slow ones: the relative test needs a full recent window (10) and
    # a baseline behind it big enough for p < 1e-4 (10 values, not yet 8 or 9), so it can
    # first open at the 20th probe.
    history = [obs(i, total_ms=200.0 + i) for i in range(10)]
    history += [obs(i, total_ms=2000.0 + i) for i in range(10, 20)]
    detector = TargetDetector("gpt-4o", DEFAULTS)
    for observation in history[:-1]:
        assert not detector.step(observation)
    assert progress(detector)["latency baseline"] == (19, 20)
    events = detector.step(history[-1])
    assert [(e.kind, e.key) for e in events] == [(DriftKind.LATENCY, "total_ms")]
    assert "latency baseline" not in progress(detector)


def test_latency_counts_the_least_measured_metric() -> None:
    # processing_ms arrives only on every other probe: its windows fill half as fast.
    history = [obs(i, openai_processing_ms=100.0 if i % 2 else None) for i in range(30)]
    assert progress(fold(history))["latency baseline"] == (15, 20)


def test_failures_feed_availability_and_quota_but_no_value_baseline() -> None:
    history = [failed(i) for i in range(4)] + [failed(i, ErrorKind.RATE_LIMITED)
                                               for i in range(4, 7)]
    # 429s are quota's business, not availability's.
    assert progress(fold(history)) == {
        "availability": (4, 10), "error rate window": (4, 20), "quota": (7, 10),
        "latency baseline": (0, 20)}


def test_rate_limit_headers_are_learned_only_where_sent() -> None:
    only_requests = RateLimits(limit_requests=100, remaining_requests=90)
    detector = fold([obs(i, rate_limits=only_requests) for i in range(3)])
    assert progress(detector)["request limit"] == (3, 10)
    assert "token limit" not in progress(detector)


def test_a_new_request_starts_the_model_and_answer_baselines_again() -> None:
    history = [obs(i) for i in range(40)]
    history += [obs(i, requested_model="gpt-4o-mini", request_hash="req-2")
                for i in range(40, 43)]
    assert progress(fold(history)) == {
        "model": (3, 10), "canary answer": (3, 10)}


def test_a_pool_of_two_learns_its_mix_until_the_share_test_can_run() -> None:
    history = steady(0, 299)
    detector = fold(history)
    assert progress(detector) == {"fingerprint mix": (299, 300)}
    detector.step(steady(299, 300)[0])
    assert detector.warmups() == []


def test_a_non_deterministic_canary_has_no_answer_to_learn() -> None:
    detector = fold([obs(i, deterministic=False) for i in range(3)])
    assert "canary answer" not in progress(detector)


def test_a_restored_snapshot_reports_the_same_warmups() -> None:
    history = steady(0, 25) + [failed(25), obs(26, requested_model="other")]
    detector = fold(history)
    restored = TargetDetector.restore("gpt-4o", DEFAULTS,
                                      json.loads(json.dumps(detector.snapshot())))
    assert restored.warmups() == detector.warmups()
    assert detector.warmups()  # the comparison compared something
