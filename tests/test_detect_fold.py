"""The bulk fold (`TargetDetector.fold` over columns) gives exactly what stepping every
observation gives: the same events, at the same probes, in the same order, and the same state,
on streams that change in every way the detectors watch, cut into chunks anywhere."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from monitor.detect import TargetDetector
from monitor.detect.columns import of_observations
from monitor.domain import (
    CheckOutcome,
    CheckResult,
    DetectionThresholds,
    DriftEvent,
    ErrorKind,
    Observation,
    RateLimits,
)
from tests.detect_helpers import failed, obs

THRESHOLDS = {
    "default": DetectionThresholds(),
    # Short accept periods and windows: accepting, retiring and reverting happen often.
    "quick": DetectionThresholds(
        warmup_probes=5, fingerprint_warmup_probes=12, fingerprint_retired_after_ms=3_600_000,
        fingerprint_accept_after_ms=2 * 3_600_000, fingerprint_share_window=40,
        fingerprint_share_recent=20, fingerprint_share_min_change=0.1,
        fingerprint_share_p_value=0.01, model_accept_after_ms=3_600_000,
        quota_accept_after_ms=3_600_000, output_accept_after_ms=3_600_000,
        latency_baseline_probes=30, latency_ratio=1.3, availability_window_probes=30),
    # Absolute latency limits set: every probe is judged the ordinary way.
    "limits": DetectionThresholds(latency_max_total_ms=330.0, latency_max_processing_ms=250.0),
}


def varied_stream(seed: int, count: int = 3_000) -> list[Observation]:
    """A canary whose every watched property changes now and then, in stretches: fingerprints
    (new, retired, a shifted mix), the alias re-pointed (and flapping back), the request
    changed, latency shifts and spikes, streaming times, outages and error-rate stretches,
    429 bursts, limits halved or missing, remaining quota low, answers and token counts
    moving, check outcomes."""
    rng = random.Random(seed)
    stream: list[Observation] = []
    regime: dict[str, Any] = {}
    latency = 200.0
    prints = ["fp_a", "fp_a", "fp_a", "fp_b"]
    model, content, tokens, request = "gpt-4o-2024-08-06", "pong", 14, "req-1"
    limits = RateLimits(limit_requests=10_000, limit_tokens=30_000_000,
                        remaining_requests=9_990, remaining_tokens=29_990_000)
    failing, throttling, checks = 0.0, 0.0, False
    for i in range(count):
        if rng.random() < 0.01:  # a new stretch: change one thing
            change = rng.randrange(12)
            if change == 0:
                prints = rng.choice([["fp_a"], ["fp_a", "fp_c"], ["fp_a", "fp_a", "fp_a", "fp_b"],
                                     [f"fp_{rng.randrange(20)}"], ["fp_b"] * 5 + ["fp_a"]])
            elif change == 1:
                model = rng.choice(["gpt-4o-2024-08-06", "gpt-4o-2025-05-13", "x" * 300])
            elif change == 2:
                latency = rng.choice([200.0, 200.0, 400.0, 600.0, 150.0])
            elif change == 3:
                failing = rng.choice([0.0, 0.0, 0.3, 1.0])
            elif change == 4:
                throttling = rng.choice([0.0, 0.0, 0.5])
            elif change == 5:
                limits = rng.choice([
                    replace(limits, limit_requests=5_000, remaining_requests=4_990),
                    replace(limits, limit_requests=10_000, remaining_requests=9_990),
                    RateLimits(),
                    replace(limits, remaining_tokens=1_000),
                    replace(limits, limit_input_tokens=100_000, remaining_input_tokens=99_000),
                ])
            elif change == 6:
                content = rng.choice(["pong", "pong.", "Pong", None])
            elif change == 7:
                tokens = rng.choice([14, 39])
            elif change == 8:
                request = rng.choice(["req-1", "req-2"])
            elif change == 9:
                regime["requested_model"] = rng.choice(["gpt-4o", "gpt-4o-mini", None])
            elif change == 10:
                checks = not checks
            else:
                regime["finish_reason"] = rng.choice(["stop", "length"])
        total = latency * rng.lognormvariate(0, 0.15) * (5 if rng.random() < 0.02 else 1)
        probe = obs(
            i, total_ms=total, openai_processing_ms=0.8 * total if seed % 2 else None,
            time_to_first_token_ms=0.3 * total if seed % 3 == 0 else None,
            system_fingerprint=rng.choice(prints), model=model, content=content,
            prompt_tokens=tokens, request_hash=request, rate_limits=limits,
            uid=f"p{seed}-{i}", **regime,
        )
        if checks:
            passed = rng.random() < (0.6 if content != "pong" else 0.97)
            probe = replace(probe, checks=(
                CheckResult("says_pong", CheckOutcome.PASS if passed else CheckOutcome.FAIL,
                            None if passed else "no pong"),))
        if rng.random() < throttling or (i % 500) in (7, 9):
            probe = failed(i, ErrorKind.RATE_LIMITED, uid=f"p{seed}-{i}")
        elif rng.random() < failing or rng.random() < 0.005:
            probe = failed(i, rng.choice([ErrorKind.HTTP_SERVER_ERROR, ErrorKind.READ_TIMEOUT]),
                           uid=f"p{seed}-{i}")
        stream.append(probe)
    return stream


def stepped(thresholds: DetectionThresholds, stream: list[Observation]
            ) -> tuple[list[tuple[int, DriftEvent]], TargetDetector]:
    detector = TargetDetector("gpt-4o", thresholds)
    events = [(i, event) for i, probe in enumerate(stream) for event in detector.step(probe)]
    return events, detector


def folded(thresholds: DetectionThresholds, stream: list[Observation], cuts: list[int]
           ) -> tuple[list[tuple[int, DriftEvent]], TargetDetector]:
    """Folded a chunk at a time (chunks ending at `cuts`), each restored from the last's
    snapshot now and then, as live detection and rebuilds do."""
    detector = TargetDetector("gpt-4o", thresholds)
    events = []
    start = 0
    for n, stop in enumerate([*cuts, len(stream)]):
        if n % 3 == 2:
            detector = TargetDetector.restore("gpt-4o", thresholds, detector.snapshot())
        events += [(start + i, event)
                   for i, event in detector.fold(of_observations(stream[start:stop]))]
        start = stop
    return events, detector


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("thresholds", THRESHOLDS, ids=str)
def test_folding_columns_gives_exactly_the_events_and_state_of_stepping(
    seed: int, thresholds: str
) -> None:
    stream = varied_stream(seed)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), 12))
    expected_events, expected = stepped(THRESHOLDS[thresholds], stream)
    events, detector = folded(THRESHOLDS[thresholds], stream, cuts)
    assert events == expected_events
    assert detector.snapshot() == expected.snapshot()
    assert detector.active() == expected.active()
    assert detector.warmups() == expected.warmups()


def test_the_varied_streams_raise_every_kind_of_event() -> None:
    """The streams above are worth comparing on: between them, every detector opens and
    clears conditions."""
    kinds: set[tuple[str, bool]] = set()
    for seed in range(24):
        events, _ = stepped(THRESHOLDS["quick"], varied_stream(seed))
        kinds |= {(event.kind.value, event.opened) for _, event in events}
    assert kinds == {(kind, opened) for kind in ("availability", "quota", "model", "fingerprint",
                                                  "output", "quality", "latency")
                     for opened in (True, False)}

