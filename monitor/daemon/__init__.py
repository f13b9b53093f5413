"""Wiring: probe targets and store the results, once (`monitor probe`, `demo`) or on a schedule
(`monitor run`). Nothing here parses HTTP or writes SQL; it connects the parts that do.

    prober.py   Prober: one round of probes, stored (`monitor probe`, `demo`)
    steps.py    Daemon: the step functions (probe a slot, store or spool, detect, drain, ...)
    registration.py  Registration: the targets' configurations stored, by one thread at a time
    slots.py    the slot grid every instance computes alike, and its APScheduler trigger
    service.py  Service: APScheduler drives the steps until a signal stops it

`run()` is `monitor run`: the spool's and the instance's locks, the outage fallback, the
daemon, the schedule and the optional web server; the CLI only parses options and calls it.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from monitor import otel
from monitor.clock import Clock
from monitor.domain import Settings
from monitor.errors import StoreUnavailable
from monitor.store import db
from monitor.store.records import Recorder
from monitor.store.spool import Spool, claimed

if TYPE_CHECKING:
    from monitor.daemon.prober import Prober
    from monitor.daemon.service import Service
    from monitor.daemon.slots import slot_at, slot_trigger
    from monitor.daemon.steps import Daemon
    from monitor.daemon.workers import Family
    from monitor.otel.export import Telemetry

__all__ = ["Daemon", "Prober", "Service", "WebOptions", "run", "slot_at", "slot_trigger"]

# The module of each name above, imported when the name is first used: `monitor probe`
# imports monitor.daemon.prober, which runs this package first, and needs neither APScheduler
# nor the steps (alerts, rollups, retention and the ORM they read through).
_LAZY = {"Daemon": "steps", "Prober": "prober", "Service": "service", "slot_at": "slots",
         "slot_trigger": "slots"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"monitor.daemon.{_LAZY[name]}"), name)

log = logging.getLogger("monitor")


@dataclass(frozen=True)
class WebOptions:
    """Where `monitor run --http` serves the dashboard while the daemon runs."""

    host: str
    port: int
    token: str | None
    allowed_hosts: tuple[str, ...]


def run(settings: Settings, spool: Spool, *, once: bool, clock: Clock,
        reload: Callable[[], Settings], web: WebOptions | None = None,
        echo: Callable[[str], None] = print, workers: int = 1) -> None:
    """`monitor run`: probe every target on its schedule until SIGTERM/SIGINT (or one round
    with `once`), through database outages, with the dashboard alongside if `web` says where;
    as `workers` processes, each with its share of the targets (workers.py)."""
    limit_malloc_arenas()
    with claimed(spool.path):  # the workers' spools (<spool>.workerN) are this instance's too
        _run_workers(settings, spool, once, clock, reload, web, echo, workers)


def _run_workers(settings: Settings, spool: Spool, once: bool, clock: Clock,
                 reload: Callable[[], Settings], web: WebOptions | None,
                 echo: Callable[[str], None], workers: int) -> None:
    if workers == 1:
        _run_worker(Worker(0, 1), settings, spool, once, clock, reload, web, echo)
        return
    from monitor.daemon import workers as processes

    processes.preload(settings.database_url)
    with _instance_lock(settings.database_url):  # held for every worker (inherited)
        family = processes.spawn(workers, lambda index: _run_worker(
            Worker(index, workers), settings,
            Spool(processes.spool_of(str(spool.path), index)), once, clock, reload, None,
            echo))
        try:
            _run_worker(Worker(0, workers, family=family), settings, spool, once,
                        clock, reload, web, echo)
        finally:
            family.stop()  # worker 0 may have ended without a signal (an error)
            family.join()
    if family.failed:
        raise SystemExit(1)


@dataclass(frozen=True)
class Worker:
    """Which of the instance's worker processes this is (workers.py); worker 0 of 1 is the
    plain daemon. With more than one, worker 0 takes the SQLite instance lock for them all
    before forking the others (they inherit it)."""

    index: int
    count: int
    family: Family | None = None  # worker 0's: the other workers

    def share(self, settings: Settings) -> Settings:
        if self.count == 1:
            return settings
        from monitor.daemon.workers import share

        return replace(settings, targets=share(settings.targets, self.index, self.count))


def _run_worker(worker: Worker, settings: Settings, spool: Spool, once: bool, clock: Clock,
                reload: Callable[[], Settings], web: WebOptions | None,
                echo: Callable[[str], None]) -> None:
    # [otel] is read once, first (a missing extra is said before anything is done); a reload
    # (SIGHUP) keeps the exporter the daemon began with.
    telemetry = otel.start(settings)
    try:
        _run(worker, settings, spool, once, clock, reload, web, echo, telemetry)
    finally:
        if telemetry is not None:
            telemetry.shutdown()  # flushes what is queued, within a deadline


# glibc's mallopt parameter for the most arenas malloc may create (M_ARENA_MAX in malloc.h).
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Let glibc's malloc keep at most MALLOC_ARENAS arenas; whether it took the setting (not
    on another C library). By default a thread that finds the arenas busy gets one of its own,
    up to 8 per core, and each keeps the memory freed into it: the daemon's up to 200 probe
    threads filled 16 of them, several MB that grew for minutes (bench/daemon_rounds.py: 1,000
    targets ended 10 MB lower with 2). Python runs one thread at a time anyway (the GIL), so
    two arenas are rarely contended. Called before the scheduler's threads exist."""
    import ctypes  # here: `monitor probe` imports this package and never needs it

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, MALLOC_ARENAS))


@contextmanager
def _instance_lock(database_url: str) -> Iterator[None]:
    """SQLite has no leases that work across processes: one instance per file."""
    lock = db.InstanceLock(database_url) if database_url.startswith("sqlite") else None
    if lock is not None:
        lock.acquire()
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _run(worker: Worker, settings: Settings, spool: Spool, once: bool, clock: Clock,
         reload: Callable[[], Settings], web: WebOptions | None,
         echo: Callable[[str], None], telemetry: Telemetry | None) -> None:
    from monitor.daemon.service import Service
    from monitor.daemon.steps import Daemon

    with nullcontext() if worker.count > 1 else _instance_lock(settings.database_url):
        try:
            engine = db.open_store(settings.database_url, worker.count)
        except StoreUnavailable as error:
            # The canary matters most when things are failing: probe now, spool, store later.
            log.error("%s; probing anyway and spooling to %s until it is back", error,
                      spool.path)
            engine = db.create(settings.database_url, worker.count)
        # The whole configuration, for the dashboard; the daemon probes its worker's share.
        configured = [settings]

        def reload_share() -> Settings:
            configured[0] = reload()
            return worker.share(configured[0])

        try:
            daemon = Daemon(worker.share(settings), Recorder(engine), spool, clock=clock,
                            telemetry=telemetry)
            if worker.index == 0:
                from monitor.daemon.workers import leftover_spools, store_leftovers

                store_leftovers(daemon, leftover_spools(str(spool.path), worker.count))
            daemon.register()
            if worker.count > 1:
                log.info("worker %d of %d (pid %d): %d of the %d targets", worker.index,
                         worker.count, os.getpid(), len(daemon.settings.targets),
                         len(settings.targets))
            if once:
                daemon.run_once()
            else:
                service = Service(daemon, reload_share, shared_jobs=worker.index == 0,
                                  family=worker.family)
                _serve(service, lambda: configured[0], web, echo)
        finally:
            engine.dispose()


def _serve(service: Service, settings: Callable[[], Settings], web: WebOptions | None,
           echo: Callable[[str], None]) -> None:
    """Run the schedule, with the dashboard beside it when asked for."""
    if web is None:
        service.run()
        return
    from monitor.web import app, serving

    engine = service.daemon.recorder.engine
    daemon = service.daemon
    telemetry = daemon.telemetry
    wsgi = serving.build_app(engine, web.token, settings,
                             scheduler_alive=lambda: service.scheduler.running,
                             clock=daemon.clock,
                             otel_failures=telemetry.failures.snapshot if telemetry else None)
    server = app.WebServer(wsgi, web.host, web.port, allowed_hosts=web.allowed_hosts).start()
    echo(f"listening on {server.url}")
    try:
        service.run()
    finally:
        server.stop()
