"""Per-step cost of all detectors together, over a year of one-a-minute history.

One target (detect_false_alerts' streaming 3-fingerprint OpenAI canary with a check passing 95%
of the time: every detector has data)
is folded through 525,600 observations, timing each `step`. State is bounded, so the cost and
the snapshot size at the end are those of the start. A second pass times a stretch where a
latency condition is open (the rank test then runs at every probe), the costliest state.

    python bench/detect_cost.py [--probes 525600]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from detect_false_alerts import (  # bench/ is on sys.path when run as a script
    PROFILES,
    checked,
    probe,
)

from monitor.detect import TargetDetector
from monitor.domain import DetectionThresholds

PROFILE = PROFILES[1]


def quantiles_us(samples_ns: list[int]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples_ns, n=100)
    return cuts[49] / 1000, cuts[98] / 1000, max(samples_ns) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=525_600)
    args = parser.parse_args()
    rng, check_rng = random.Random(1), random.Random(2)
    detector = TargetDetector(PROFILE.name, DetectionThresholds())
    timings: list[int] = []
    sizes: dict[int, int] = {}
    events = 0
    for i in range(args.probes):
        o = checked(probe(PROFILE, i, rng), check_rng)
        started = time.perf_counter_ns()
        events += len(detector.step(o))
        timings.append(time.perf_counter_ns() - started)
        if i + 1 in (1_000, 10_000, 100_000, args.probes):
            sizes[i + 1] = len(json.dumps(detector.snapshot()))
    print(f"{args.probes:,} steps of {PROFILE.name} ({events} events)")
    print(f"{'stretch':<28} {'p50 us':>8} {'p99 us':>8} {'max us':>8}")
    for label, part in (
        ("all", timings),
        ("first 10,000", timings[:10_000]),
        ("last 10,000", timings[-10_000:]),
    ):
        p50, p99, worst = quantiles_us(part)
        print(f"{label:<28} {p50:>8.1f} {p99:>8.1f} {worst:>8.1f}")

    slow: list[int] = []
    for i in range(args.probes, args.probes + 10_000):
        o = probe(PROFILE, i, rng)
        if o.total_ms is not None:
            o = replace(o, total_ms=3 * o.total_ms)
        started = time.perf_counter_ns()
        detector.step(o)
        slow.append(time.perf_counter_ns() - started)
    active = ", ".join(f"{e.kind.value}/{e.key}" for e in detector.active())
    p50, p99, worst = quantiles_us(slow)
    print(f"{'10,000 with latency open':<28} {p50:>8.1f} {p99:>8.1f} {worst:>8.1f}  ({active})")
    print("snapshot JSON bytes after " + ", ".join(f"{n:,}: {size:,}" for n, size in sizes.items()))


if __name__ == "__main__":
    main()
