"""Drift detection: pure, incremental folds over one target's observations.

Contract: every detector is a deterministic function of the observations it has been given (in
time order) and the thresholds, nothing else: no clock, no database, no network. Its state is
bounded (fixed-size windows, the few values it knows), and `snapshot()` -> JSON -> `restore()`
continues exactly where it stopped. Hence folding a stored history gives exactly the events
that live detection gave, which replay and the alert layer rely on.

A target's first `warmup_probes` observations form its baselines and never raise an event
(some baselines take more: the fingerprint pool, the latency windows); `warmups()` says which
are still learning and how far each has got, which is what `monitor status` shows.
Each call of `TargetDetector.step` returns the events of the conditions that observation opened
(`opened=True`) or cleared (`opened=False`); `active()` gives the opening events of those still
open. The kinds live in one module each: fingerprint, model, latency, quota, availability,
output, quality; their docstrings list their condition keys.

A stored history is folded in bulk: `TargetDetector.fold` takes a chunk of observations as
columns (columns.py) and gives exactly the events and state of stepping each in turn, at a
fraction of the cost (each detector skips what provably changes nothing; `step` stays the
reference, and tests hold the two equal).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from monitor.detect.availability import AvailabilityDetector
from monitor.detect.base import Detector, Warmup
from monitor.detect.columns import Columns
from monitor.detect.fingerprint import FingerprintDetector
from monitor.detect.latency import LatencyDetector
from monitor.detect.model import ModelDetector
from monitor.detect.output import OutputDetector
from monitor.detect.quality import QualityDetector
from monitor.detect.quota import QuotaDetector
from monitor.domain import DetectionThresholds, DriftEvent, DriftKind, Observation, Severity

__all__ = ["SEVERITIES", "SNAPSHOT_VERSION", "TRAFFIC_KINDS", "TargetDetector", "Warmup", "detect"]

# Bumped when the snapshot layout changes; an older snapshot is refused, and the caller
# rebuilds the state by folding the stored history again.
SNAPSHOT_VERSION = 2  # 2: the quality detector

# The order events of one observation come out in.
DETECTORS: tuple[type[Detector], ...] = (
    AvailabilityDetector,
    QuotaDetector,
    ModelDetector,
    FingerprintDetector,
    OutputDetector,
    QualityDetector,
    LatencyDetector,
)

# The severities each kind's conditions can have.
SEVERITIES: dict[DriftKind, tuple[Severity, ...]] = {d.kind: d.severities for d in DETECTORS}

# What runs on an application's recorded traffic (monitor proxy): what the upstream is and
# how it answers. Not latency (every prompt differs, so times are not comparable), output
# (requests are not repeated canaries) or quality (no checks).
TRAFFIC_KINDS = frozenset({DriftKind.AVAILABILITY, DriftKind.QUOTA, DriftKind.MODEL,
                           DriftKind.FINGERPRINT})


class TargetDetector:
    """Every detector of one target (or those of `kinds`), stepped together, one observation
    at a time."""

    def __init__(self, target_name: str, thresholds: DetectionThresholds,
                 kinds: frozenset[DriftKind] | None = None) -> None:
        self.target_name = target_name
        self.thresholds = thresholds
        self.kinds = kinds
        self._detectors = [cls(target_name, thresholds) for cls in DETECTORS
                           if kinds is None or cls.kind in kinds]

    def step(self, obs: Observation) -> list[DriftEvent]:
        """Take in the next observation; return the conditions it opened or cleared."""
        events = []
        for detector in self._detectors:
            events += detector.step(obs)
        return events

    def fold(self, columns: Columns) -> list[tuple[int, DriftEvent]]:
        """Take in every observation of `columns`, in order: the same events and state as
        stepping each, each event with its observation's index. Each detector walks the
        columns on its own (they share nothing), then the events are put in step's order."""
        events = []
        for detector in self._detectors:
            events += detector.fold(columns)
        events.sort(key=_index)  # stable: within a probe, in the detectors' order
        return events

    def active(self) -> list[DriftEvent]:
        """The opening events of the conditions open now."""
        return [event for detector in self._detectors for event in detector.conditions.active()]

    def warmups(self) -> list[Warmup]:
        """The baselines still learning, detector by detector: while one is, the conditions
        that compare with it cannot open."""
        return [warmup for detector in self._detectors for warmup in detector.warmups()]

    def snapshot(self) -> dict[str, Any]:
        """The complete state as JSON-able data."""
        state: dict[str, Any] = {"version": SNAPSHOT_VERSION}
        for detector in self._detectors:
            state[detector.kind.value] = detector.snapshot()
        return state

    @classmethod
    def restore(
        cls, target_name: str, thresholds: DetectionThresholds, snapshot: dict[str, Any],
        kinds: frozenset[DriftKind] | None = None,
    ) -> TargetDetector:
        """Continue from a snapshot, as if the observations behind it were folded again."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"detector snapshot version {snapshot.get('version')!r} is not "
                f"{SNAPSHOT_VERSION}: fold the stored history again instead"
            )
        restored = cls(target_name, thresholds, kinds)
        restored._detectors = [
            type(detector).restore(target_name, thresholds, snapshot[detector.kind.value])
            for detector in restored._detectors
        ]
        return restored


def _index(event: tuple[int, DriftEvent]) -> int:
    return event[0]


def detect(
    target_name: str, observations: Iterable[Observation], thresholds: DetectionThresholds
) -> list[DriftEvent]:
    """Every event of a history (in time order), folded from empty state."""
    detector = TargetDetector(target_name, thresholds)
    events = []
    for obs in observations:
        events += detector.step(obs)
    return events
