"""Availability drift: probes failing in a row, or too many of them failing lately.

429s are left out entirely (quota's "rate_limited" reports them): a throttled canary says the
organisation is out of quota, not that the API is down, and counting it twice would alert
twice. A 429 neither extends nor breaks a run of failures.

Conditions (key), both critical:
- "consecutive_failures": opens at exactly the `availability_consecutive_failures`-th failure in
  a row; clears at the first success. before/after = failures by error kind ({} when none).
- "error_rate": of the last `availability_window_probes` probes (a full window), more than
  `availability_error_rate` failed; opens on a failing probe and only while no run of failures
  is already open, so one outage is one alert. Clears once the rate is at or under half the
  threshold, so a rate hovering at it does not flap.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from monitor.detect.base import MAX_UIDS, Detector, Warmup
from monitor.detect.columns import Columns
from monitor.domain import (
    DetectionThresholds,
    DriftEvent,
    DriftKind,
    ErrorKind,
    Observation,
    Severity,
)


def _label(obs: Observation, kind: str) -> str:
    """A failure as a person names it: "HTTP 503", "read timeout"."""
    if obs.http_status is not None and kind.startswith("http_"):
        return f"HTTP {obs.http_status}"
    return kind.replace("_", " ")


def _breakdown(labels: Counter[str] | dict[str, int]) -> str:
    """"HTTP 503" when every failure was alike, else "2 HTTP 503, 1 read timeout"."""
    if len(labels) == 1:
        return next(iter(labels))
    return ", ".join(f"{count} {label}" for label, count in
                     sorted(labels.items(), key=lambda item: (-item[1], item[0])))


class AvailabilityDetector(Detector):
    kind = DriftKind.AVAILABILITY
    severities = (Severity.CRITICAL,)

    def __init__(self, target: str, thresholds: DetectionThresholds) -> None:
        super().__init__(target, thresholds)
        self.run_kinds: dict[str, int] = {}  # the current run of failures, by error kind
        self.run_uids: deque[str] = deque(maxlen=MAX_UIDS)
        self.run_labels: Counter[str] = Counter()  # the same run, as people name failures
        # None for a success, else the error kind; and each failure's label (_label)
        self.window: deque[str | None] = deque(maxlen=thresholds.availability_window_probes)
        self.labels: deque[str | None] = deque(maxlen=thresholds.availability_window_probes)
        self.failures = 0  # in the window, kept as it moves (not counted again every probe)

    def step(self, obs: Observation) -> list[DriftEvent]:
        if obs.error_kind == ErrorKind.RATE_LIMITED:
            return []
        learning = self.learned < self.thresholds.warmup_probes
        if learning:
            self.learned += 1
        events = []
        failed = not obs.ok
        kind = label = None
        if failed:
            kind = obs.error_kind.value if obs.error_kind is not None else "unknown_error"
            label = _label(obs, kind)
            self.run_kinds[kind] = self.run_kinds.get(kind, 0) + 1
            self.run_labels[label] += 1
            self.run_uids.append(obs.uid)
        if len(self.window) == self.window.maxlen and self.window[0] is not None:
            self.failures -= 1
        self.window.append(kind)
        self.labels.append(label)
        self.failures += failed
        if not failed:
            events += self._recover(obs)
        if not learning:
            if failed:
                events += self._run(obs)
            events += self._rate(obs, failed)
        return events

    def fold(self, columns: Columns) -> list[tuple[int, DriftEvent]]:
        events: list[tuple[int, DriftEvent]] = []
        window, labels = self.window, self.labels
        size = window.maxlen
        settled = self._settled()
        for i, (ok, kind) in enumerate(zip(columns.ok, columns.error_kind, strict=True)):
            if kind == ErrorKind.RATE_LIMITED:
                continue
            if ok and settled:
                # A success with no run of failures, nothing open and nothing to learn: only
                # the window moves.
                if len(window) == size and window[0] is not None:
                    self.failures -= 1
                window.append(None)
                labels.append(None)
                continue
            self.step_at(columns, i, events)
            settled = self._settled()
        return events

    def _settled(self) -> bool:
        """Whether a success would only move the window."""
        return (self.learned >= self.thresholds.warmup_probes and not self.run_kinds
                and not self.run_labels and not self.run_uids and not self.conditions.active())

    def _run(self, obs: Observation) -> list[DriftEvent]:
        failures = sum(self.run_kinds.values())
        needed = self.thresholds.availability_consecutive_failures
        if self.conditions.is_open("consecutive_failures") or failures < needed:
            return []
        return [self.conditions.open(
            "consecutive_failures", obs, Severity.CRITICAL, before={}, after=dict(self.run_kinds),
            uids=self.run_uids,
            explanation=f"{self.target}: {failures} probes in a row failed: "
            f"{_breakdown(self.run_labels)}.",
        )]

    def _recover(self, obs: Observation) -> list[DriftEvent]:
        failures = sum(self.run_kinds.values())
        kinds = self.run_kinds
        labels = self.run_labels
        self.run_kinds = {}
        self.run_labels = Counter()
        self.run_uids.clear()
        if not self.conditions.is_open("consecutive_failures"):
            return []
        return [self.conditions.close(
            "consecutive_failures", obs, before=kinds, after={}, uids=[obs.uid],
            explanation=f"{self.target} answered again after {failures} failed probes in a row "
            f"({_breakdown(labels)}).",
        )]

    def _rate(self, obs: Observation, failed: bool) -> list[DriftEvent]:
        size = self.thresholds.availability_window_probes
        if len(self.window) < size:
            return []
        failures = self.failures
        rate = failures / size
        threshold = self.thresholds.availability_error_rate
        opening = self.conditions.get("error_rate")
        if opening is None:
            if (
                not failed
                or rate <= threshold
                or self.conditions.is_open("consecutive_failures")
            ):
                return []
        elif rate > threshold / 2:
            return []
        # An event: only now the window is broken down by kind and label.
        kinds = dict(Counter(kind for kind in self.window if kind is not None))
        now = {"error_rate": round(rate, 3), "n": size, "by_kind": kinds}
        if opening is None:
            labels = Counter(label for label in self.labels if label is not None)
            return [self.conditions.open(
                "error_rate", obs, Severity.CRITICAL, before={"max_error_rate": threshold},
                after=now, uids=[obs.uid],
                explanation=f"{self.target}: {failures} of the last {size} probes failed: "
                f"{_breakdown(labels)}, more than the {threshold:.0%} allowed.",
            )]
        return [self.conditions.close(
            "error_rate", obs, before=opening.after, after=now, uids=[obs.uid],
            explanation=f"{self.target}: {failures} of the last {size} probes failed, down to "
            f"{rate:.0%}.",
        )]

    def warmups(self) -> list[Warmup]:
        t = self.thresholds
        return [*self.learning("availability", self.learned, t.warmup_probes),
                *self.learning("error rate window", len(self.window),
                               t.availability_window_probes)]

    def dump(self) -> dict[str, Any]:
        return {
            "learned": self.learned,
            "run_kinds": self.run_kinds,
            "run_uids": list(self.run_uids),
            "run_labels": dict(self.run_labels),
            "window": list(self.window),
            "labels": list(self.labels),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.learned = state["learned"]
        self.run_kinds = dict(state["run_kinds"])
        self.run_uids.extend(state["run_uids"])
        self.window.extend(state["window"])
        self.failures = sum(kind is not None for kind in self.window)
        # A state saved before labels were kept: the error kinds stand in for them.
        self.run_labels = Counter(state.get("run_labels", self.run_kinds))
        self.labels.extend(state.get("labels", [
            None if kind is None else kind.replace("_", " ") for kind in self.window]))
