"""The recording half of `monitor proxy`: exchanges in, stored traffic probes out, never
slowing the app.

`make_recording_sink(settings, routes)` builds the `TrafficRecorder` the forwarder hands every
finished call to (`submit`), and `close(timeout_s)` stops it. Nothing the store does reaches
the forwarder's threads:

- `submit` only decides whether the call is kept (a route's `sample:F`, drawn per call) and
  puts it on a bounded queue. When the queue is full (the database is slow and the worker
  behind), the exchange is parsed and written to the spool file on the spot; only if even
  that fails is it dropped, and counted. `submit` never raises.
- One worker thread takes what has queued (up to a batch), parses each exchange like a probe
  (proxy/traffic.py), and stores the batch in one transaction (Recorder.save_batch, the
  daemon's group commit). While the database refuses, results go to the spool, in order,
  behind anything already there, and the worker drains it (at most once a `retry_s`) until
  it is empty: the daemon's rule, so every record arrives once, and exactly once (each
  result carries its uid; a batch handed over twice is stored once).
- After storing, the worker runs live detection on each traffic target it touched
  (alerts.watch.Watcher, with the traffic detectors: detect.TRAFFIC_KINDS), so drift on the
  upstream is raised from traffic alone. Rollups are caught up and notifications sent every
  `maintenance_s` on a thread of their own, and old raw bodies pruned daily, so a proxy
  without a daemon still reports, alerts and keeps to `[retention]` (several processes doing
  the same on one database is safe: each is locked or idempotent).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor import defaults
from monitor.alerting import AlertSettings
from monitor.alerts.dispatch import Dispatcher
from monitor.alerts.watch import Watcher
from monitor.clock import Clock, utc_now
from monitor.domain import DetectionThresholds, ProbeResult, Provider, Settings, Target
from monitor.proxy import traffic
from monitor.proxy.exchange import Exchange, RecordMode, Route
from monitor.store import db, retention, rollups
from monitor.store.failures import Failure, classify, describe
from monitor.store.records import Recorder
from monitor.store.spool import Spool

log = logging.getLogger("monitor")

QUEUE_SIZE = 10_000  # exchanges waiting for the worker (a few seconds at 1,000 calls/s)
BATCH = 500  # results per transaction, as the daemon's group writer
RETRY_S = 1.0  # while the database is down, a drain at most this often
MAINTENANCE_S = 30.0  # rollups and notifications
PRUNE_EVERY = timedelta(days=1)  # raw bodies past [retention] raw, as the daemon's daily job


@dataclass
class Counts:
    """What became of the exchanges submitted (for logs, `close` and tests)."""

    submitted: int = 0
    sampled_out: int = 0  # a sample:F route's draw left them out
    stored: int = 0  # written to the database (directly or from the spool)
    spooled: int = 0  # written to the spool (the database refused, or the queue was full)
    overflowed: int = 0  # of those, spooled by submit itself because the queue was full
    dropped: int = 0  # lost: the queue was full and the spool could not take them either
    quarantined: int = 0  # refused by the database for good (moved beside the spool)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts: int) -> None:
        with self.lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)


class TrafficRecorder:
    """A TrafficSink that stores every kept exchange as a traffic probe (module docstring)."""

    def __init__(self, engine: Engine, spool: Spool, routes: Sequence[Route], *,
                 policy: AlertSettings | None = None,
                 thresholds: DetectionThresholds | None = None,
                 clock: Clock = utc_now, draw: Callable[[], float] = random.random,
                 queue_size: int = QUEUE_SIZE, batch: int = BATCH, retry_s: float = RETRY_S,
                 maintenance_s: float | None = MAINTENANCE_S,
                 raw_retention_ms: int | None = None) -> None:
        self.engine = engine
        self.spool = spool
        self.routes = {route.name: route for route in routes}
        self.recorder = Recorder(engine)
        self.watcher = Watcher(engine, policy or AlertSettings(), clock)
        self.thresholds = thresholds or DetectionThresholds()
        self.counts = Counts()
        self._raw_retention_ms = raw_retention_ms
        self._pruned_at: datetime | None = None
        self._draw = draw
        self._draw_lock = threading.Lock()  # an injected generator need not be thread-safe
        self._queue: queue.Queue[Exchange] = queue.Queue(maxsize=queue_size)
        self._batch = batch
        self._retry_s = retry_s
        self._spooling = not spool.empty()  # keep order: while anything waits, new ones queue
        self._last_drain = 0.0
        self._spool_lock = threading.Lock()  # guards _spooling against an append meanwhile
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="monitor-proxy-recorder",
                                         daemon=True)
        self._worker.start()
        self._maintainer: threading.Thread | None = None
        if maintenance_s is not None:
            self._dispatcher: Dispatcher | None = Dispatcher(engine, policy or AlertSettings())
            self._maintainer = threading.Thread(target=self._maintain, args=(maintenance_s,),
                                                name="monitor-proxy-maintenance", daemon=True)
            self._maintainer.start()
        else:
            self._dispatcher = None

    # --- the forwarder's side ---------------------------------------------------------------

    def submit(self, exchange: Exchange) -> None:
        """Keep `exchange` for storing; returns at once and never raises."""
        try:
            self.counts.add(submitted=1)
            route = self.routes.get(exchange.route)
            if route is not None and route.record.startswith(RecordMode.SAMPLE_PREFIX):
                with self._draw_lock:
                    kept = self._draw() < route.sample_rate
                if not kept:
                    self.counts.add(sampled_out=1)
                    return
            try:
                self._queue.put_nowait(exchange)
                return
            except queue.Full:
                pass
            # The worker is behind (a slow database): to the spool file, in this thread.
            self._to_spool([self._result(exchange)])
            self.counts.add(overflowed=1)
        except Exception:  # the app's call must never see monitor's trouble
            self.counts.add(dropped=1)
            log.exception("traffic record of %s %s dropped", exchange.method, exchange.path)

    def close(self, timeout_s: float = 10.0) -> Counts:
        """Store what has queued (to the database, or the spool) and stop, within about
        `timeout_s`; what the worker could not take by then goes to the spool. Returns the
        counts."""
        self._stopping.set()
        self._worker.join(timeout_s)
        left: list[Exchange] = []
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if left:
            self._to_spool([r for r in map(self._quietly_parsed, left) if r is not None])
        if self._maintainer is not None:
            self._maintainer.join(timeout_s)
        if self._dispatcher is not None:
            self._dispatcher.close()
        return self.counts

    # --- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.1 if self._spooling else 0.5)
            except queue.Empty:
                if self._stopping.is_set():
                    self._drain(force=True)
                    return
                self._drain()
                continue
            exchanges = [first]
            while len(exchanges) < self._batch:
                try:
                    exchanges.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            results = []
            for exchange in exchanges:
                parsed = self._quietly_parsed(exchange)
                if parsed is not None:
                    results.append(parsed)
                # Let a waiting forwarder thread run now: a batch parsed without a break holds
                # the GIL until Python takes it away (5 ms), which an app's call would wait out.
                time.sleep(0)
            try:
                self._store(results)
            except Exception:  # a bug must not stop recording
                log.exception("storing %d traffic records failed; spooling them", len(results))
                self._to_spool(results)

    def _quietly_parsed(self, exchange: Exchange) -> ProbeResult | None:
        try:
            return self._result(exchange)
        except Exception:  # one odd exchange must not cost the batch
            self.counts.add(dropped=1)
            log.exception("traffic record of %s %s could not be parsed; dropped",
                          exchange.method, exchange.path)
            return None

    def _result(self, exchange: Exchange) -> ProbeResult:
        route = self.routes.get(exchange.route)
        mode = route.record if route is not None else RecordMode.ALL
        result = traffic.to_result(exchange, mode)
        return replace(result, config_hash=self._hash(exchange.route))

    def _hash(self, route_name: str) -> str:
        route = self.routes.get(route_name)
        return traffic.config_hash(route) if route is not None else ""

    def _config(self, result: ProbeResult) -> dict[str, Any] | None:
        route = self.routes.get(result.target_name.rsplit("/", 1)[0])
        return traffic.route_config(route) if route is not None else None

    def _store(self, results: list[ProbeResult]) -> None:
        """Into the database in one transaction; one by one if that fails, so a poison record
        fails alone; to the spool while the database is unavailable (or anything waits
        there)."""
        if not results:
            return
        if self._spooling:
            self._to_spool(results)
            self._drain()
            return
        try:
            ids = self.recorder.save_batch([(r, self._config(r)) for r in results])
        except Exception as error:  # sorted out result by result below
            if classify(error) is None:
                raise
            ids = None
        if ids is not None:
            self.counts.add(stored=len(results))
            first: dict[str, int] = {}
            for result, probe_id in zip(results, ids):
                first.setdefault(result.target_name, probe_id)
            self._detect(first)
            return
        stored: dict[str, int] = {}
        for index, result in enumerate(results):
            try:
                stored.setdefault(result.target_name,
                                  self.recorder.save(result, self._config(result)))
                self.counts.add(stored=1)
            except Exception as error:
                failure = classify(error)
                if failure is None:
                    raise
                if failure is Failure.POISON:
                    self.spool.quarantine(result, error)
                    self.counts.add(quarantined=1)
                    continue
                log.error("database unavailable (%s); spooling traffic records to %s",
                          describe(error), self.spool.path)
                self._last_drain = time.monotonic()
                self._to_spool(results[index:])
                break
        self._detect(stored)

    def _to_spool(self, results: list[ProbeResult]) -> None:
        """Append to the spool (each fsync'd; Spool is thread-safe) and have the worker drain
        it. The lock is held only to set the flag: submit() never waits for the worker's
        appends or drains, only for one fsync of the spool's at most."""
        for result in results:
            self.spool.append(result)
        with self._spool_lock:
            self._spooling = True  # the worker drains it, and stores behind it meanwhile
        self.counts.add(spooled=len(results))

    def _drain(self, *, force: bool = False) -> None:
        """Write what waits in the spool, oldest first, if the database takes it; at most
        once a `retry_s` while it does not (unless `force`)."""
        if not self._spooling:
            return
        if not force and time.monotonic() - self._last_drain < self._retry_s:
            return
        self._last_drain = time.monotonic()
        touched: set[str] = set()

        def save(batch: list[ProbeResult]) -> None:
            self.recorder.save_many(batch)
            self.counts.add(stored=len(batch))
            touched.update(result.target_name for result in batch)

        try:
            self.spool.drain(save)
            with self._spool_lock:  # an append after this check sets the flag again
                if self.spool.empty():
                    self._spooling = False
                    log.info("database is back: the spooled traffic records are stored")
        except (SQLAlchemyError, OSError) as error:
            log.debug("spool not drained yet: %s", error)
        # Their ids are not known here: 1 folds a new target's whole history live (a target
        # with a detection state folds what it has not folded, whatever the id).
        self._detect(dict.fromkeys(touched, 1))

    # --- detection and upkeep -----------------------------------------------------------------

    def _detect(self, first_ids: dict[str, int]) -> None:
        """Live detection on each traffic target touched, from its newest stored probes."""
        for name, probe_id in first_ids.items():
            try:
                target_id = self.recorder.target_id(name)
                self.watcher.catch_up(self._target(name), target_id, probe_id)
            except SQLAlchemyError as error:
                log.warning("database unavailable for detection on %s (%s)", name,
                            describe(error))
            except Exception:  # detection failing never stops recording
                log.exception("detection failed for %s", name)

    def _target(self, name: str) -> Target:
        """The traffic target `name` as detection sees it: its thresholds, no checks."""
        route_name, _, model = name.rpartition("/")
        route = self.routes.get(route_name)
        provider = route.provider if route is not None else Provider.OPENAI
        return Target(name=name, provider=provider, base_url=route.upstream if route else "",
                      model=None if model == traffic.NO_MODEL else model, messages=(),
                      params={}, stream=False, timeout_ms=0, interval_ms=0,
                      max_response_bytes=0, detection=self.thresholds, traffic=True)

    def _maintain(self, every_s: float) -> None:
        while not self._stopping.wait(every_s):
            self.maintain()

    def maintain(self) -> None:
        """Fold new probes into rollups, send due notifications and, once a day, empty raw
        bodies past `[retention] raw` (what `monitor run` does on its schedule), logging
        database trouble instead of raising."""
        try:
            rollups.catch_up(self.engine)
            now = self.watcher.clock()
            if self._dispatcher is not None:
                self._dispatcher.run(now)
            if self._raw_retention_ms is not None and (
                    self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY):
                retention.prune(self.engine,
                                now - timedelta(milliseconds=self._raw_retention_ms), now)
                self._pruned_at = now
        except SQLAlchemyError as error:
            log.warning("database unavailable for rollups and notifications (%s)",
                        describe(error))
        except Exception:
            log.exception("proxy upkeep failed")


def make_recording_sink(settings: Settings, routes: Sequence[Route], *,
                        spool_path: str | Path = defaults.PROXY_SPOOL) -> TrafficRecorder:
    """The recorder `monitor proxy` hands its exchanges to: on the configured database (which
    may be down: records then wait in `spool_path`), alerting by the configured policy."""
    engine = db.create(settings.database_url)
    return TrafficRecorder(engine, Spool(spool_path), routes, policy=settings.alerts,
                           raw_retention_ms=settings.raw_retention_ms)
