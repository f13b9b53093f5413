"""Live detection: after a probe is stored, fold the target's new probes through its detectors,
store the events and move its alerts, in one transaction.

The detectors' state lives in the database (detector_states), so several daemons sharing a
PostgreSQL each fold the probes the others stored, in the same id order a re-run over stored
history (`monitor detect`) follows: both give the same events.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine

from monitor.alerts import engine as alerts
from monitor.detect import TargetDetector
from monitor.domain import AlertSettings, DetectionThresholds, DriftEvent, Observation, Target
from monitor.store import history

log = logging.getLogger("monitor")


def thresholds_hash(thresholds: DetectionThresholds) -> str:
    text = json.dumps(asdict(thresholds), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class Watcher:
    """Keeps each target's detectors in step with its stored probes."""

    def __init__(self, engine: Engine, policy: AlertSettings) -> None:
        self.engine = engine
        self.policy = policy
        self._reader = history.ObservationReader()
        # name -> (last folded probe id, thresholds hash, detector): saves a restore per probe
        # while this daemon is the only one folding the target.
        self._cache: dict[str, tuple[int, str, TargetDetector]] = {}
        self._lock = threading.Lock()

    def catch_up(self, target: Target, target_id: int, probe_id: int) -> list[DriftEvent]:
        """Fold every probe of the target not folded yet, `probe_id` (just stored) included;
        return the events. A target seen for the first time starts from its stored history,
        silently: old probes never raise new alerts."""
        try:
            with self.engine.begin() as connection:
                events, cached = self._fold(connection, target, target_id, probe_id)
        except Exception:
            with self._lock:
                self._cache.pop(target.name, None)  # the detector may be half-stepped
            raise
        with self._lock:
            self._cache[target.name] = cached
        return events

    def _fold(self, connection: Connection, target: Target, target_id: int,
              probe_id: int) -> tuple[list[DriftEvent], tuple[int, str, TargetDetector]]:
        now = datetime.now(UTC)
        history.claim_state(connection, target_id, now)
        row = history.lock_state(connection, target_id)
        assert row is not None  # claimed just above
        wanted = thresholds_hash(target.detection)
        with self._lock:
            cached = self._cache.get(target.name)
        last = row.last_probe_id
        if cached is not None and cached[:2] == (last, wanted) == (last, row.thresholds_hash):
            detector = cached[2]
        elif row.thresholds_hash == wanted:
            detector = TargetDetector.restore(target.name, target.detection, row.state)
        else:
            # New, or its thresholds changed: rebuild from history without alerting on it.
            detector = TargetDetector(target.name, target.detection)
            last = last if row.thresholds_hash else probe_id - 1
            for _, observation in self._stored(connection, target_id, until=last):
                detector.step(observation)
        events: list[DriftEvent] = []
        while chunk := self._reader.after(connection, target_id, last):
            for stored_id, observation in chunk:
                events += self._step(connection, detector, target, target_id, observation)
                last = stored_id
        history.save_state(connection, target_id, wanted, last, detector.snapshot(), now)
        return events, (last, wanted, detector)

    def _step(self, connection: Connection, detector: TargetDetector, target: Target,
              target_id: int, observation: Observation) -> list[DriftEvent]:
        events = detector.step(observation)
        history.record_events(connection, target_id, observation.uid, events)
        active = {(e.kind.value, e.key): e for e in detector.active()}
        alerts.apply(connection, self.policy, target_id, target.name, observation.started_at,
                     events, active)
        for event in events:
            log.warning("%s %s %s: %s", target.name, event.kind.value,
                        "opened" if event.opened else "cleared", event.explanation)
        return events

    def _stored(self, connection: Connection, target_id: int,
                until: int) -> Iterator[tuple[int, Observation]]:
        for stored_id, observation in self._reader.all(connection, target_id):
            if stored_id > until:
                return
            yield stored_id, observation


def rerun(engine: Engine, target: Target, target_id: int,
          since: datetime | None = None) -> list[DriftEvent]:
    """`monitor detect`: fold the target's whole stored history with its (possibly new)
    thresholds, as live detection would have; the events at or after `since`."""
    reader = history.ObservationReader()
    detector = TargetDetector(target.name, target.detection)
    events: list[DriftEvent] = []
    with engine.connect() as connection:
        for _, observation in reader.all(connection, target_id):
            events += detector.step(observation)
    return [e for e in events if since is None or e.at >= since]
