"""Latency drift, on total_ms, time_to_first_token_ms and openai_processing_ms separately.

Keeping the three apart tells a slower network (total up, processing flat) from a slower model
(processing up). One slowdown raises one condition, the one that explains it, in this order:
processing_ms (the model itself), then ttft_ms (waiting for the first token), then total_ms
(the network, a proxy, or slower generation). A metric does not open while one before it is
open or opening, and every baseline stays frozen while any of them is open. Only successful
probes that measured the value count.

Relative condition (key "total_ms", "ttft_ms" or "processing_ms"), warning: the last
`latency_recent_probes` values against the `latency_baseline_probes` before them, both holding at
least `latency_min_samples`. Opens when the recent p50 or p95 is at least `latency_ratio` times
the baseline's AND a one-sided Mann-Whitney U test gives p < `latency_p_value`. While it is open
the baseline is frozen, so slow probes never become the baseline and quietly resolve it. Clears
when the recent p50 is under `latency_ratio` times the baseline's and the test no longer comes
near significance (p >= `latency_clear_p_value`). before/after = {"p50_ms", "p95_ms", "n"} of
the baseline and the recent window.

Absolute condition (key "max_total_ms", "max_ttft_ms", "max_processing_ms"), warning, only where
the threshold is set: opens when the recent p50 exceeds it, clears when it is back under.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.detect.base import Detector, Warmup
from monitor.detect.columns import Columns
from monitor.detect.stats import mann_whitney_greater, percentile, percentile_plans
from monitor.domain import DetectionThresholds, DriftEvent, DriftKind, Observation, Severity


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    read: Callable[[Observation], float | None]
    limit: Callable[[DetectionThresholds], float | None]


# In the order that explains a slowdown best (see the module docstring).
METRICS = (
    Metric(
        "processing_ms", "processing time reported by the server (openai-processing-ms)",
        lambda o: o.openai_processing_ms, lambda t: t.latency_max_processing_ms,
    ),
    Metric(
        "ttft_ms", "time to first token", lambda o: o.time_to_first_token_ms,
        lambda t: t.latency_max_ttft_ms,
    ),
    Metric("total_ms", "total time", lambda o: o.total_ms, lambda t: t.latency_max_total_ms),
)


class Series:
    """One metric's recent window and the baseline window behind it (both kept sorted as
    well, so percentiles cost no sort per probe)."""

    def __init__(self, thresholds: DetectionThresholds) -> None:
        self.recent: deque[tuple[float, str]] = deque(maxlen=thresholds.latency_recent_probes)
        self.sorted_recent: list[float] = []
        self.baseline: deque[float] = deque(maxlen=thresholds.latency_baseline_probes)
        self.sorted_baseline: list[float] = []

    def add(self, value: float, uid: str, *, frozen: bool) -> None:
        if len(self.recent) == self.recent.maxlen:
            moved = self.recent[0][0]
            del self.sorted_recent[bisect_left(self.sorted_recent, moved)]
            if not frozen:
                if len(self.baseline) == self.baseline.maxlen:
                    gone = self.baseline[0]
                    del self.sorted_baseline[bisect_left(self.sorted_baseline, gone)]
                self.baseline.append(moved)
                insort(self.sorted_baseline, moved)
        self.recent.append((value, uid))
        insort(self.sorted_recent, value)

    def stats(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return _summary(self.sorted_baseline), _summary(self.sorted_recent)

    def dump(self) -> dict[str, Any]:
        return {"recent": [list(pair) for pair in self.recent], "baseline": list(self.baseline)}

    def load(self, state: dict[str, Any]) -> None:
        self.recent.extend((value, uid) for value, uid in state["recent"])
        self.baseline.extend(state["baseline"])
        self.sorted_recent = sorted(value for value, _ in self.recent)
        self.sorted_baseline = sorted(self.baseline)


def _summary(sorted_values: list[float]) -> dict[str, Any]:
    if not sorted_values:
        return {"p50_ms": None, "p95_ms": None, "n": 0}
    return {
        "p50_ms": round(percentile(sorted_values, 50), 1),
        "p95_ms": round(percentile(sorted_values, 95), 1),
        "n": len(sorted_values),
    }


def baseline_needed(recent: int, most: int, least: int, p_value: float) -> int:
    """The fewest baseline values with which the relative test can open at all: at least
    `least`, and enough that a recent window wholly above the baseline is significant (with
    fewer, no slowdown however large passes the test). `most` + 1: never."""
    high = [float(most + value) for value in range(recent)]
    for size in range(least, most + 1):
        if mann_whitney_greater(high, [float(value) for value in range(size)]) < p_value:
            return size
    return most + 1


class LatencyDetector(Detector):
    kind = DriftKind.LATENCY
    severities = (Severity.WARNING,)

    def __init__(self, target: str, thresholds: DetectionThresholds) -> None:
        super().__init__(target, thresholds)
        self.series = {metric.key: Series(thresholds) for metric in METRICS}

    def step(self, obs: Observation) -> list[DriftEvent]:
        if not obs.ok:
            return []
        learning = self.learned < self.thresholds.warmup_probes
        if learning:
            self.learned += 1
        events = []
        frozen = any(self.conditions.is_open(metric.key) for metric in METRICS)
        explained = False  # a metric earlier in METRICS accounts for the slowdown
        for metric in METRICS:
            value = metric.read(obs)
            if value is None or not math.isfinite(value):
                continue
            series = self.series[metric.key]
            series.add(value, obs.uid, frozen=frozen)
            judged, explained = self._judge(metric, series, obs, learning=learning,
                                            explained=explained)
            events += judged
        return events

    def _judge(self, metric: Metric, series: Series, obs: Observation, *, learning: bool,
               explained: bool) -> tuple[list[DriftEvent], bool]:
        """The metric's conditions once its value is added; (events, whether the slowdown is
        explained by now)."""
        events = []
        recent = series.sorted_recent if self._comparable(series) else None
        # Whether the recent median is slower by the ratio: asked by the relative test
        # and again just below, worked out once.
        median_slower: bool | None = None
        if not learning:
            if recent is not None and not explained and not self.conditions.is_open(
                    metric.key):
                median_slower = self._slower(recent, series.sorted_baseline, 50)
            events += self._relative(metric, series, recent, obs, explained=explained,
                                     median_slower=median_slower)
            events += self._absolute(metric, series, obs)
        # Slower by the ratio, even before the test is significant: the metrics after this
        # one wait, so the slowdown is put down to the metric that explains it.
        # (The median only: a p95 of ten values jumps with one slow probe.)
        explained = (explained or self.conditions.is_open(metric.key)
                     or recent is not None and (
                         median_slower if median_slower is not None
                         else self._slower(recent, series.sorted_baseline, 50)))
        return events, explained

    def fold(self, columns: Columns) -> list[tuple[int, DriftEvent]]:
        events: list[tuple[int, DriftEvent]] = []
        t = self.thresholds
        least, ratio = t.latency_min_samples, t.latency_ratio
        # With no absolute limit set and nothing open, a probe's metrics only move their
        # windows unless one's recent median or p95 is slower by the ratio (then it is judged
        # the ordinary way): the same as step, without its calls.
        limited = any(metric.limit(t) is not None for metric in METRICS)
        values = {"processing_ms": columns.openai_processing_ms,
                  "ttft_ms": columns.time_to_first_token_ms, "total_ms": columns.total_ms}
        # The windows of each metric measured at all here (ttft only on streams, processing
        # only where the server says).
        plan = [(metric, series, values[metric.key], series.recent, series.sorted_recent,
                 series.baseline, series.sorted_baseline)
                for metric in METRICS if any(value is not None for value in values[metric.key])
                for series in [self.series[metric.key]]]
        recent_full, base_full = t.latency_recent_probes, t.latency_baseline_probes
        longest = max(t.latency_recent_probes, t.latency_baseline_probes)
        medians, p95s = percentile_plans(longest, 50), percentile_plans(longest, 95)
        isfinite = math.isfinite
        uids = columns.uid
        settled = self._settled()
        for i, ok in enumerate(columns.ok):
            if not ok:
                continue
            if limited or not settled:
                self.step_at(columns, i, events)
                settled = self._settled()
                continue
            explained = False
            for metric, series, column, window, recent, behind, base in plan:
                value = column[i]
                if value is None or not isfinite(value):
                    continue
                # series.add(value, uid, frozen=False) in line
                if len(window) == recent_full:
                    moved = window[0][0]
                    del recent[bisect_left(recent, moved)]
                    if len(behind) == base_full:
                        del base[bisect_left(base, behind[0])]
                    behind.append(moved)
                    insort(base, moved)
                window.append((value, uids[i]))
                insort(recent, value)
                count, base_count = len(recent), len(base)
                if explained or count < least or base_count < least:
                    continue  # no test to make (explained stays as it was)
                # _slower(recent, base, 50), then 95, with percentile() worked out in line.
                low, high, weight = medians[count]
                now = recent[low] + (recent[high] - recent[low]) * weight
                low, high, weight = medians[base_count]
                if not (now > 0 and now >= ratio * (
                        base[low] + (base[high] - base[low]) * weight)):
                    low, high, weight = p95s[count]
                    now = recent[low] + (recent[high] - recent[low]) * weight
                    low, high, weight = p95s[base_count]
                    if not (now > 0 and now >= ratio * (
                            base[low] + (base[high] - base[low]) * weight)):
                        continue
                judged, explained = self._judge(metric, series, columns.observation(i),
                                                learning=False, explained=False)
                events += [(i, event) for event in judged]
                settled = self._settled()
        return events

    def _settled(self) -> bool:
        """Nothing to learn and nothing open."""
        return self.learned >= self.thresholds.warmup_probes and not self.conditions.active()

    def _comparable(self, series: Series) -> bool:
        """Both windows hold enough values to compare."""
        least = self.thresholds.latency_min_samples
        return len(series.recent) >= least and len(series.baseline) >= least

    def _slower(self, recent: list[float], base: list[float], q: float) -> bool:
        """Recent q-th percentile at least `latency_ratio` times the baseline's (both sorted);
        no test."""
        # 0 against 0 is no slowdown (a server that reports 0 ms processing for streams
        # would otherwise "explain" every slowdown and hide the metric that shows it).
        now = percentile(recent, q)
        return now > 0 and now >= self.thresholds.latency_ratio * percentile(base, q)

    def _relative(self, metric: Metric, series: Series, recent: list[float] | None,
                  obs: Observation, *, explained: bool,
                  median_slower: bool | None) -> list[DriftEvent]:
        """`recent`: the recent window sorted, or None while the windows are too small;
        `median_slower`: whether its median is slower by the ratio, when no condition of this
        metric is open and none before explains the slowdown."""
        if recent is None:
            return []
        t = self.thresholds
        base = series.sorted_baseline
        opening = self.conditions.get(metric.key)
        if opening is None:
            # Slower at the median or at p95 (the test decides).
            if explained or not (median_slower or self._slower(recent, base, 95)):
                return []
            if mann_whitney_greater(recent, base) >= t.latency_p_value:
                return []
            before, after = series.stats()
            return [self.conditions.open(
                metric.key, obs, Severity.WARNING, before=before, after=after,
                uids=[uid for _, uid in series.recent],
                explanation=f"{self.target}'s {metric.label} slowed down: median "
                f"{after['p50_ms']:.0f} ms and p95 {after['p95_ms']:.0f} ms over the last "
                f"{after['n']} probes, against {before['p50_ms']:.0f} ms and "
                f"{before['p95_ms']:.0f} ms over the {before['n']} before.",
            )]
        if percentile(recent, 50) >= t.latency_ratio * percentile(base, 50) or (
            mann_whitney_greater(recent, base) < t.latency_clear_p_value
        ):
            return []
        before, after = series.stats()
        return [self.conditions.close(
            metric.key, obs, before=before, after=after, uids=[obs.uid],
            explanation=f"{self.target}'s {metric.label} is back to normal: median "
            f"{after['p50_ms']:.0f} ms over the last {after['n']} probes, against "
            f"{before['p50_ms']:.0f} ms before it slowed down.",
        )]

    def _absolute(self, metric: Metric, series: Series, obs: Observation) -> list[DriftEvent]:
        key = f"max_{metric.key}"
        limit = metric.limit(self.thresholds)
        opening = self.conditions.get(key)
        if (limit is None and opening is None) or (
            len(series.recent) < self.thresholds.latency_min_samples
        ):
            return []
        after = series.stats()[1]
        over = limit is not None and percentile(series.sorted_recent, 50) > limit
        if opening is None and over:
            return [self.conditions.open(
                key, obs, Severity.WARNING, before={"max_p50_ms": limit}, after=after,
                uids=[uid for _, uid in series.recent],
                explanation=f"{self.target}'s {metric.label} has a median of "
                f"{after['p50_ms']:.0f} ms over the last {after['n']} probes, over the "
                f"{limit:.0f} ms allowed.",
            )]
        if opening is not None and not over:
            reason = "no limit is set any more" if limit is None else f"under {limit:.0f} ms"
            return [self.conditions.close(
                key, obs, before=opening.after, after=after, uids=[obs.uid],
                explanation=f"{self.target}'s {metric.label} has a median of "
                f"{after['p50_ms']:.0f} ms over the last {after['n']} probes, {reason}.",
            )]
        return []

    def warmups(self) -> list[Warmup]:
        """The relative test can first open once the recent window is full and the baseline
        behind it (which fills from the recent window's overflow) is big enough for the test
        to be passed at all: 20 successful probes by default. The baseline keeps growing to
        `latency_baseline_probes` after that."""
        t = self.thresholds
        fill_needed = t.latency_recent_probes + baseline_needed(
            t.latency_recent_probes, t.latency_baseline_probes, t.latency_min_samples,
            t.latency_p_value)
        # Every metric measured so far (total always; ttft and processing where sent).
        fill = min((len(s.recent) + len(s.baseline) for s in self.series.values() if s.recent),
                   default=0)
        if self.learned >= t.warmup_probes and fill >= fill_needed:
            return []
        seen = fill if self.learned >= t.warmup_probes else min(self.learned, fill)
        return self.learning("latency baseline", seen, max(t.warmup_probes, fill_needed))

    def dump(self) -> dict[str, Any]:
        return {
            "learned": self.learned,
            "series": {key: series.dump() for key, series in self.series.items()},
        }

    def load(self, state: dict[str, Any]) -> None:
        self.learned = state["learned"]
        for key, series in state["series"].items():
            self.series[key].load(series)
