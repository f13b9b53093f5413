"""How fast can any detector catch a 95% -> 60% pass-rate drop at 1 false opening per 10,000?

Issue 15 asks the quality detector for both: at most 1 false opening per 10,000 steady probes
passing 95% of the time, and a drop to 60% caught within 20 probes. This bench measures what
those two bars allow together, with an oracle: a Bernoulli CUSUM that knows both pass rates
exactly (no baseline to estimate), which is the quickest detector for a given false-alarm rate
(Lorden; Moustakides 1986). Its threshold is the lowest that keeps it at or under 1 false opening
per 10,000 steady probes; its delays over many seeds are the floor for every real detector.
Beside it, in the same run, `detect_delay.py`'s quality scenario for monitor's own detector.

    python bench/quality_bound.py [--seeds 400] [--steady 2000000]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from detect_delay import EARLY, SCENARIOS, delay  # bench/ is on sys.path when run as a script

BEFORE, AFTER = 0.95, 0.60  # pass rates
WITHIN = 20  # the delay bar, in probes
FALSE_BAR = 1 / 10_000  # false openings per steady probe


class Cusum:
    """Page's CUSUM of the failure log-likelihood ratio, restarting after each opening."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.fail_step = math.log((1 - AFTER) / (1 - BEFORE))
        self.pass_step = math.log(AFTER / BEFORE)
        self.score = 0.0

    def step(self, passed: bool) -> bool:
        self.score = max(0.0, self.score + (self.pass_step if passed else self.fail_step))
        if self.score > self.threshold:
            self.score = 0.0
            return True
        return False


def false_rate(threshold: float, steady: int, rng: random.Random) -> float:
    detector = Cusum(threshold)
    return sum(detector.step(rng.random() < BEFORE) for _ in range(steady)) / steady


def oracle_delay(threshold: float, rng: random.Random) -> int:
    """Probes from the drop to the opening; a false opening before the drop restarts it, as the
    real detector's baseline would carry on."""
    detector = Cusum(threshold)
    for _ in range(rng.randint(600, 900)):
        detector.step(rng.random() < BEFORE)
    probes = 0
    while True:
        probes += 1
        if detector.step(rng.random() < AFTER):
            return probes


def summary(label: str, delays: list[int]) -> str:
    ordered = sorted(delays)
    within = sum(d <= WITHIN for d in ordered) / len(ordered)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (f"{label:<34} {statistics.median(ordered):>6} {p90:>5} {ordered[-1]:>5} "
            f"{within:>12.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=400)
    parser.add_argument("--steady", type=int, default=2_000_000,
                        help="steady probes to measure each threshold's false-opening rate")
    args = parser.parse_args()
    rng = random.Random(15)
    threshold = 4.0
    while (rate := false_rate(threshold, args.steady, rng)) > FALSE_BAR:
        threshold += 0.25
    print(f"oracle CUSUM threshold {threshold:.2f}: {rate * 10_000:.2f} false openings per "
          f"10,000 over {args.steady:,} steady probes")
    oracle = [oracle_delay(threshold, rng) for _ in range(args.seeds)]
    kind, base, change, _, _ = SCENARIOS["checks pass 95% -> 60%"]
    ours = [d for seed in range(args.seeds)
            if (d := delay(kind, base, change, seed)) is not None and d != EARLY]
    print(f"{'probes from the drop to the alert':<34} {'median':>6} {'p90':>5} {'max':>5} "
          f"{'within ' + str(WITHIN):>12}")
    print(summary("oracle (knows both rates)", oracle))
    print(summary("monitor's quality detector", ours))


if __name__ == "__main__":
    main()
