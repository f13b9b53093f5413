"""Live detection: after a probe is stored, fold the target's new probes through its detectors,
store the events and move its alerts, in one transaction.

The detectors' state lives in the database (detector_states), so several daemons sharing a
PostgreSQL each fold the probes the others stored, in the same id order a re-run over stored
history (`monitor detect`) follows: both give the same events.

A target seen with a long stored history and no state for its thresholds (after an upgrade, an
import, or a change of its `detect` settings) is rebuilt from that history in the background:
its probes keep their schedule meanwhile, and the probes stored during the rebuild are folded
(and alert) at the first catch-up after it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime

from sqlalchemy import Connection, Engine

from monitor.alerting import AlertSettings
from monitor.alerts import engine as alerts
from monitor.clock import Clock, utc_now
from monitor.detect import TRAFFIC_KINDS, TargetDetector
from monitor.detect.columns import Columns
from monitor.domain import (
    DriftEvent,
    DriftKind,
    ErrorKind,
    Observation,
    Target,
)
from monitor.probe.checks import evaluate, stored_answer
from monitor.render.text import safe_text
from monitor.store import check_results, history
from monitor.store.history import thresholds_hash

log = logging.getLogger("monitor")

# A rebuild folds this many probes (about 1 ms of CPU in bulk), then lets other threads run:
# holding the GIL until Python takes it away (5 ms) would add up to 5 ms to every step of a
# probe thread that waits for it (each database call, each read of an answer), and so to the
# latency the probes measure.
YIELD_EVERY = 256
# ... and reads the history a fifth of a chunk at a time: turning read rows into Python
# objects holds the GIL throughout (5,000 rows: 100-160 ms that a probe thread waited).
REBUILD_CHUNK_SHARE = 5

# The live detectors of the targets caught up last are kept beside their packed state: using
# one again skips unpacking and restoring it (~0.4 ms of a catch-up's ~1 ms of CPU). A few
# only: one grows to ~37 KB as its windows fill, and in a fleet of thousands each would be
# pushed out before its target's next probe anyway.
LIVE_DETECTORS = 64

# Runs a job off the caller's thread (tests hand in one that runs it when they say).
Background = Callable[[Callable[[], None]], None]


def in_thread(job: Callable[[], None]) -> None:
    threading.Thread(target=job, name="monitor-detect-rebuild", daemon=True).start()


class Watcher:
    """Keeps each target's detectors in step with its stored probes."""

    def __init__(self, engine: Engine, policy: AlertSettings, clock: Clock = utc_now,
                 background: Background = in_thread) -> None:
        self.engine = engine
        self.policy = policy
        self.clock = clock  # stamps the detectors' saved state; alerts move at probe times
        self.background = background
        self._reader = history.ObservationReader()
        # name -> (last folded probe id, thresholds hash, whether the target has pending or
        # open alerts): saves a query per probe while this daemon is the only one folding the
        # target (no one else moved its state or alerts). The state itself is read with the
        # lock (PostgreSQL: in the same round trip), not kept here: packed it grows to ~4 KB
        # as a target's windows fill over hours, 40 MB more at ten thousand targets.
        self._cache: dict[str, tuple[int, str, bool]] = {}
        # name -> (last folded probe id, thresholds hash, the detector folded that far),
        # most recent last; taken out while a catch-up steps it (LIVE_DETECTORS above).
        self._live: OrderedDict[str, tuple[int, str, TargetDetector]] = OrderedDict()
        self._rebuilding: set[str] = set()  # names whose state is being rebuilt or queued
        # One rebuild at a time, in one worker: after an upgrade every target needs one, and
        # thousands of threads each reading a year would not make any of them sooner.
        self._queue: deque[Callable[[], None]] = deque()
        self._working = False
        self._lock = threading.Lock()

    def rebuilding(self, name: str) -> bool:
        """Whether the target's detectors are being rebuilt from its history right now."""
        with self._lock:
            return name in self._rebuilding

    def catch_up(self, target: Target, target_id: int, probe_id: int) -> list[DriftEvent]:
        """Fold every probe of the target not folded yet, `probe_id` (just stored) included;
        return the events. A target seen for the first time starts from its stored history,
        silently: old probes never raise new alerts. While that history is folded in the
        background, this returns at once with no events."""
        return [event for _, event in self.raised(target, target_id, probe_id)]

    def raised(self, target: Target, target_id: int, probe_id: int
               ) -> list[tuple[str, DriftEvent]]:
        """catch_up(), each event with the uid of the probe that raised it."""
        if self.rebuilding(target.name):
            return []
        try:
            with self.engine.begin() as connection:
                events, cached, detector = self._fold(connection, target, target_id, probe_id)
        except Exception:
            with self._lock:
                self._cache.pop(target.name, None)  # the detector may be half-stepped
            raise
        with self._lock:
            if cached is None or detector is None:
                self._cache.pop(target.name, None)
            else:
                self._cache[target.name] = cached
                self._live[target.name] = (cached[0], cached[1], detector)
                self._live.move_to_end(target.name)
                while len(self._live) > LIVE_DETECTORS:
                    self._live.popitem(last=False)
        return events

    def _fold(self, connection: Connection, target: Target, target_id: int, probe_id: int
              ) -> tuple[list[tuple[str, DriftEvent]], tuple[int, str, bool] | None,
                         TargetDetector | None]:
        now = self.clock()
        # On PostgreSQL the state and the probes after the position come with its lock (one
        # round trip).
        position, packed, newer = self._reader.locked_after(connection, target_id,
                                                            checks=bool(target.checks))
        if position is None:
            history.claim_state(connection, target_id, now)
            position = history.lock_position(connection, target_id)
            assert position is not None
        saved_hash, last = position
        wanted = thresholds_hash(target.detection)
        with self._lock:
            cached = self._cache.get(target.name)
            # Taken, not shared: a second catch-up of the target meanwhile restores its own.
            kept = self._live.pop(target.name, None)
        # Whether the target may have pending or open alerts; unknown: ask the database.
        live = (cached[2] if cached is not None and cached[:2] == (last, wanted)
                and saved_hash == wanted else True)
        if saved_hash == wanted:
            if kept is not None and kept[:2] == (last, wanted):
                detector = kept[2]
            else:
                if packed is None:
                    packed = history.load_state(connection, target_id)
                detector = TargetDetector.restore(target.name, target.detection,
                                                  history.unpack_state(packed), _kinds(target))
        else:
            # New, or its thresholds changed: rebuild from history without alerting on it.
            until = last if saved_hash else probe_id - 1
            if history.more_than(connection, target_id, history.CHUNK, until):
                self._rebuild_later(target, target_id, position, until)
                return [], None, None
            detector = TargetDetector(target.name, target.detection, _kinds(target))
            for _, columns in self._reader.all_columns(connection, target_id, until=until,
                                                       checks=bool(target.checks)):
                detector.fold(_foldable(target, columns))
            last = until
            newer = None  # read after the old position, not after `until`
        events: list[tuple[str, DriftEvent]] = []
        while True:
            chunk = newer if newer is not None else self._reader.after(
                connection, target_id, last, checks=bool(target.checks))
            newer = None
            for stored_id, observation in chunk:
                stepped, live = self._step(connection, detector, target, target_id,
                                           observation, live)
                events += [(observation.uid, event) for event in stepped]
                last = stored_id
            if len(chunk) < history.CHUNK:
                break  # a short read is the end: no second query to learn it
        history.save_state(connection, target_id, wanted, last,
                           history.pack_state(detector.snapshot()), now)
        return events, (last, wanted, live), detector

    def _step(self, connection: Connection, detector: TargetDetector, target: Target,
              target_id: int, observation: Observation,
              live: bool) -> tuple[list[DriftEvent], bool]:
        if not _folds(target, observation):
            return [], live
        events = detector.step(observation)
        history.record_events(connection, target_id, observation.uid, events)
        active = {(e.kind.value, e.key): e for e in detector.active()}
        live = alerts.apply(connection, self.policy, target_id, target.name,
                            observation.started_at, events, active, none_live=not live)
        for event in events:
            log.warning("%s %s %s: %s", target.name, event.kind.value,
                        "opened" if event.opened else "cleared", safe_text(event.explanation, 300))
        return events, live

    # --- rebuilding a long history off the probe thread ----------------------------------

    def _rebuild_later(self, target: Target, target_id: int, position: tuple[str, int],
                       until: int) -> None:
        with self._lock:
            self._cache.pop(target.name, None)
            self._live.pop(target.name, None)
            self._rebuilding.add(target.name)
            self._queue.append(lambda: self._rebuild(target, target_id, position, until))
            start, self._working = not self._working, True
        log.info("%s: rebuilding detection state from stored history in the background",
                 target.name)
        if start:
            try:
                self.background(self._work)
            except BaseException:
                with self._lock:  # each is asked for again after its next probe
                    self._queue.clear()
                    self._rebuilding.clear()
                    self._working = False
                raise

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._working = False
                    return
                job = self._queue.popleft()
            job()

    def _rebuild(self, target: Target, target_id: int, position: tuple[str, int],
                 until: int) -> None:
        """Fold the stored history up to `until` with no lock held, then save the state if
        nobody moved the target's position meanwhile (another daemon may have done the same
        work first: then this one is dropped, and the next catch-up uses theirs)."""
        try:
            detector = TargetDetector(target.name, target.detection, _kinds(target))
            reader = history.ObservationReader()
            folded = 0
            with self.engine.connect() as connection:
                for ids, columns in reader.all_columns(
                        connection, target_id, until=until, checks=bool(target.checks),
                        chunk=history.CHUNK // REBUILD_CHUNK_SHARE):
                    foldable = _foldable(target, columns)
                    for start in range(0, len(foldable), YIELD_EVERY):
                        detector.fold(foldable.section(start, start + YIELD_EVERY))
                        time.sleep(0)  # hand the GIL to a waiting thread now (see YIELD_EVERY)
                    folded += len(ids)
            with self.engine.begin() as connection:
                saved = history.replace_state(
                    connection, target_id, position, thresholds_hash(target.detection), until,
                    history.pack_state(detector.snapshot()), self.clock())
            log.info("%s: detection state rebuilt from %d stored probes%s", target.name,
                     folded, "" if saved else " (dropped: another daemon did it first)")
        except Exception:
            log.exception("rebuilding detection state failed for %s; retried after its next "
                          "probe", target.name)
        finally:
            with self._lock:
                self._rebuilding.discard(target.name)


def _kinds(target: Target) -> frozenset[DriftKind] | None:
    """The detectors that run on the target: all of them, or those for recorded traffic."""
    return TRAFFIC_KINDS if target.traffic else None


def _folds(target: Target, observation: Observation) -> bool:
    """Whether the target's detectors take the observation in. On recorded traffic, the
    application's own rejected requests (HTTP 4xx but 401, 403 and 429: a bad payload, an
    unknown model) say nothing about the upstream, so availability never counts them."""
    return not (target.traffic and observation.error_kind is ErrorKind.HTTP_CLIENT_ERROR)


def _foldable(target: Target, columns: Columns) -> Columns:
    """The observations of `columns` that the target's detectors take in (_folds)."""
    if not target.traffic:
        return columns
    return columns.where([kind != ErrorKind.HTTP_CLIENT_ERROR for kind in columns.error_kind])


def rerun(engine: Engine, target: Target, target_id: int,
          since: datetime | None = None) -> list[DriftEvent]:
    """`monitor detect`: fold the target's whole stored history with its (possibly new)
    thresholds, as live detection would have; the events at or after `since`."""
    reader = history.ObservationReader()
    detector = TargetDetector(target.name, target.detection, _kinds(target))
    events: list[DriftEvent] = []
    with engine.connect() as connection:
        if target.checks:
            for _, observation in _judged(connection, target, reader.all(connection, target_id)):
                if _folds(target, observation):
                    events += detector.step(observation)
        else:
            for _, columns in reader.all_columns(connection, target_id):
                events += [event for _, event in detector.fold(_foldable(target, columns))]
    return [e for e in events if since is None or e.at >= since]


def _judged(connection: Connection, target: Target,
            stored: Iterator[tuple[int, Observation]]) -> Iterator[tuple[int, Observation]]:
    """The stored answers judged by the target's checks as configured now (a backtest of new
    or changed checks), not by the outcomes stored with them."""
    batch: list[tuple[int, Observation]] = []
    for item in itertools.chain(stored, [None]):
        if item is not None:
            batch.append(item)
        if batch and (item is None or len(batch) == history.CHUNK):
            extras = check_results.answers(connection, [probe_id for probe_id, _ in batch])
            for probe_id, o in batch:
                tokens, choices = extras[probe_id]
                answer = stored_answer(o.ok, o.content, o.finish_reason, tokens, o.total_ms,
                                       choices)
                yield probe_id, replace(o, checks=evaluate(target.checks, answer))
            batch = []
