"""False alerts: steady-state probes with realistic noise, fed straight into the detectors.

Several simulated targets (OpenAI with 2 or 3 load-balanced fingerprints, Azure without limit
headers, an OpenAI-compatible server sending no fingerprint) probed once a minute, with lognormal
latency and occasional tail spikes, single errors at ~0.5% (about one in five of them a 429),
rate-limit remaining moving about, and one check on the answer passing 95% of the time (the
quality detector's bar). Nothing drifts, so every opening event is a false alert.
The bar is at most 1 per 10,000 probes. Also imported by the other detect benchmarks for its
steady-state canary.

    python bench/detect_false_alerts.py [--probes 50000] [--seeds 1 2 3 4 5]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from monitor.detect import TargetDetector
from monitor.domain import (
    CheckOutcome,
    CheckResult,
    DetectionThresholds,
    ErrorKind,
    Observation,
    RateLimits,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
# What goes wrong now and then on a healthy API, and how often (weights).
ERRORS = {
    ErrorKind.READ_TIMEOUT: 3,
    ErrorKind.HTTP_SERVER_ERROR: 4,
    ErrorKind.CONNECTION_RESET: 2,
    ErrorKind.RATE_LIMITED: 2,
}


@dataclass(frozen=True)
class Profile:
    """One simulated target: how its healthy answers look."""

    name: str
    fingerprints: tuple[str, ...] = ()  # empty: the server sends none
    weights: tuple[int, ...] = ()
    base_ms: float = 200.0
    sigma: float = 0.2  # lognormal spread of the latency
    stream: bool = False
    processing: bool = True  # sends openai-processing-ms
    limits: bool = True  # sends x-ratelimit-* headers
    error_rate: float = 0.005
    spike_rate: float = 0.01  # tail spikes, 2-6x
    model: str = "gpt-4o-2024-08-06"


PROFILES = (
    Profile("openai-gpt-4o", ("fp_a1", "fp_b2"), (3, 1)),
    Profile("openai-4o-mini-stream", ("fp_m1", "fp_m2", "fp_m3"), (3, 1, 1), base_ms=350,
            stream=True, model="gpt-4o-mini-2024-07-18"),
    Profile("openai-o3-mini", ("fp_o1", "fp_o2"), (1, 1), base_ms=1500, sigma=0.35,
            model="o3-mini-2025-01-31"),
    Profile("azure-gpt-4o", ("fp_z1",), (1,), base_ms=260, stream=True, limits=False),
    Profile("vllm-llama", base_ms=800, sigma=0.3, processing=False, limits=False,
            model="meta-llama/Llama-3.1-8B-Instruct"),
)


def probe(profile: Profile, i: int, rng: random.Random) -> Observation:
    """The i-th probe (one a minute) of a healthy target."""
    at = START + i * MINUTE
    uid = f"{profile.name}-{i:07d}"
    common: dict[str, Any] = {
        "uid": uid, "started_at": at, "requested_model": profile.model.split("-20")[0],
        "request_hash": f"{profile.name}-req", "deterministic": True,
    }
    if rng.random() < profile.error_rate:
        kind = rng.choices(list(ERRORS), weights=list(ERRORS.values()))[0]
        status = {ErrorKind.RATE_LIMITED: 429, ErrorKind.HTTP_SERVER_ERROR: 503}.get(kind)
        return Observation(
            **common, ok=False, error_kind=kind, http_status=status,
            model=None, system_fingerprint=None, total_ms=None, time_to_first_token_ms=None,
            openai_processing_ms=None, rate_limits=RateLimits(), content=None,
            finish_reason=None, prompt_tokens=None,
        )
    processing = profile.base_ms * 0.7 * rng.lognormvariate(0, profile.sigma)
    if rng.random() < profile.spike_rate:
        processing *= rng.uniform(2, 6)
    network = profile.base_ms * 0.3 * rng.lognormvariate(0, profile.sigma)
    total = processing + network
    limits = RateLimits()
    if profile.limits:
        limits = RateLimits(
            limit_requests=10_000,
            limit_tokens=30_000_000,
            remaining_requests=10_000 - rng.randint(1, 6_000),
            remaining_tokens=30_000_000 - rng.randint(100, 20_000_000),
            reset_requests_s=rng.uniform(0, 6),
            reset_tokens_s=rng.uniform(0, 6),
        )
    fingerprint = None
    if profile.fingerprints:
        fingerprint = rng.choices(profile.fingerprints, weights=profile.weights)[0]
    return Observation(
        **common, ok=True, error_kind=None, http_status=200, model=profile.model,
        system_fingerprint=fingerprint, total_ms=total,
        time_to_first_token_ms=processing * rng.uniform(0.3, 0.5) + network
        if profile.stream else None,
        openai_processing_ms=round(processing) if profile.processing else None,
        rate_limits=limits, content="pong", finish_reason="stop", prompt_tokens=14,
    )


# The quality canaries' steady pass rate: a canary whose answer is right 19 times in 20.
PASS_RATE = 0.95


def checked(o: Observation, rng: random.Random, pass_rate: float = PASS_RATE) -> Observation:
    """`o` with the outcome of one check ("content_equals") that passes at `pass_rate`; not
    applicable when the probe failed."""
    if not o.ok:
        return replace(o, checks=(CheckResult("content_equals", CheckOutcome.NOT_APPLICABLE),))
    if rng.random() < pass_rate:
        return replace(o, checks=(CheckResult("content_equals", CheckOutcome.PASS),))
    # The text is left alone: output drift (deterministic canaries) is not what this measures.
    return replace(o, checks=(CheckResult(
        "content_equals", CheckOutcome.FAIL, 'answered "Three hundred ninety-one", not "391"'),))


def count_false_alerts(probes: int, seed: int, thresholds: DetectionThresholds) -> Counter[str]:
    """Opening events by "target kind/key" over `probes` probes shared among PROFILES."""
    rng = random.Random(seed)
    # Its own stream, so the other detectors see the same probes as before checks existed.
    check_rng = random.Random(seed + 1_000_003)
    opened: Counter[str] = Counter()
    per_target = probes // len(PROFILES)
    for profile in PROFILES:
        detector = TargetDetector(profile.name, thresholds)
        for i in range(per_target):
            for event in detector.step(checked(probe(profile, i, rng), check_rng)):
                if event.opened:
                    opened[f"{profile.name} {event.kind.value}/{event.key}"] += 1
    return opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    thresholds = DetectionThresholds()
    print(f"{args.probes:,} steady probes over {len(PROFILES)} targets "
          f"({args.probes // len(PROFILES):,} each, one a minute), bar <= 1 per 10,000")
    print(f"{'seed':>6} {'opening events':>15} {'per 10,000':>11}  detail")
    worst = 0.0
    for seed in args.seeds:
        opened = count_false_alerts(args.probes, seed, thresholds)
        total = sum(opened.values())
        rate = total / args.probes * 10_000
        worst = max(worst, rate)
        detail = ", ".join(f"{key}: {n}" for key, n in sorted(opened.items())) or "-"
        print(f"{seed:>6} {total:>15} {rate:>11.2f}  {detail}")
    print(f"worst seed: {worst:.2f} per 10,000 -> {'meets' if worst <= 1 else 'MISSES'} the bar")


if __name__ == "__main__":
    main()
