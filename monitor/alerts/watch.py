"""Live detection: after a probe is stored, fold the target's new probes through its detectors,
store the events and move its alerts, in one transaction.

The detectors' state lives in the database (detector_states), so several daemons sharing a
PostgreSQL each fold the probes the others stored, in the same id order a re-run over stored
history (`monitor detect`) follows: both give the same events.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime

from sqlalchemy import Connection, Engine

from monitor.alerts import engine as alerts
from monitor.clock import Clock, utc_now
from monitor.detect import TargetDetector
from monitor.domain import AlertSettings, DetectionThresholds, DriftEvent, Observation, Target
from monitor.render.text import safe_text
from monitor.store import history

log = logging.getLogger("monitor")


@functools.lru_cache(maxsize=256)
def thresholds_hash(thresholds: DetectionThresholds) -> str:
    text = json.dumps(asdict(thresholds), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class Watcher:
    """Keeps each target's detectors in step with its stored probes."""

    def __init__(self, engine: Engine, policy: AlertSettings, clock: Clock = utc_now) -> None:
        self.engine = engine
        self.policy = policy
        self.clock = clock  # stamps the detectors' saved state; alerts move at probe times
        self._reader = history.ObservationReader()
        # name -> (last folded probe id, thresholds hash, packed detector state, whether the
        # target has pending or open alerts): saves a query per probe while this daemon is the
        # only one folding the target (no one else moved its state or alerts). The state is
        # kept packed, as stored (~4 KB once a target's windows are full), not as the live
        # detector (~37 KB): restoring it costs ~0.5 ms a probe, and ten thousand targets fit.
        self._cache: dict[str, tuple[int, str, bytes, bool]] = {}
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
              probe_id: int) -> tuple[list[DriftEvent], tuple[int, str, bytes, bool]]:
        now = self.clock()
        if connection.dialect.name == "postgresql":
            # Safe to lose in a crash: the probes are already stored durably, and a lost fold
            # (state, events, alerts and outbox go together) is simply folded again.
            connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        position = history.lock_position(connection, target_id)
        if position is None:
            history.claim_state(connection, target_id, now)
            position = history.lock_position(connection, target_id)
            assert position is not None
        saved_hash, last = position
        wanted = thresholds_hash(target.detection)
        with self._lock:
            cached = self._cache.get(target.name)
        live = True  # unknown: ask the database
        if cached is not None and cached[:2] == (last, wanted) and saved_hash == wanted:
            detector = TargetDetector.restore(target.name, target.detection,
                                              history.unpack_state(cached[2]))
            live = cached[3]
        elif saved_hash == wanted:
            detector = TargetDetector.restore(
                target.name, target.detection,
                history.unpack_state(history.load_state(connection, target_id)))
        else:
            # New, or its thresholds changed: rebuild from history without alerting on it.
            detector = TargetDetector(target.name, target.detection)
            last = last if saved_hash else probe_id - 1
            for _, observation in self._stored(connection, target_id, until=last):
                detector.step(observation)
        events: list[DriftEvent] = []
        while chunk := self._reader.after(connection, target_id, last):
            for stored_id, observation in chunk:
                stepped, live = self._step(connection, detector, target, target_id,
                                           observation, live)
                events += stepped
                last = stored_id
        packed = history.pack_state(detector.snapshot())
        history.save_state(connection, target_id, wanted, last, packed, now)
        return events, (last, wanted, packed, live)

    def _step(self, connection: Connection, detector: TargetDetector, target: Target,
              target_id: int, observation: Observation,
              live: bool) -> tuple[list[DriftEvent], bool]:
        events = detector.step(observation)
        history.record_events(connection, target_id, observation.uid, events)
        active = {(e.kind.value, e.key): e for e in detector.active()}
        live = alerts.apply(connection, self.policy, target_id, target.name,
                            observation.started_at, events, active, none_live=not live)
        for event in events:
            log.warning("%s %s %s: %s", target.name, event.kind.value,
                        "opened" if event.opened else "cleared", safe_text(event.explanation, 300))
        return events, live

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
