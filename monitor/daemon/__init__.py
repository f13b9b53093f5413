"""Wiring: probe targets and store the results, once (`monitor probe`, `demo`) or on a schedule
(`monitor run`). Nothing here parses HTTP or writes SQL; it connects the parts that do.

    prober.py   Prober: one round of probes, stored (`monitor probe`, `demo`)
    steps.py    Daemon: the step functions (probe a slot, store or spool, detect, drain, ...)
    slots.py    the slot grid every instance computes alike, and its APScheduler trigger
    service.py  Service: APScheduler drives the steps until a signal stops it

`run()` is `monitor run`: the instance lock, the outage fallback, the daemon, the schedule and
the optional web server; the CLI only parses options and calls it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from monitor import otel
from monitor.clock import Clock
from monitor.domain import Settings
from monitor.errors import StoreUnavailable
from monitor.store import db
from monitor.store.records import Recorder
from monitor.store.spool import Spool

if TYPE_CHECKING:
    from monitor.daemon.prober import Prober
    from monitor.daemon.service import Service
    from monitor.daemon.slots import slot_at, slot_trigger
    from monitor.daemon.steps import Daemon
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
        echo: Callable[[str], None] = print) -> None:
    """`monitor run`: probe every target on its schedule until SIGTERM/SIGINT (or one round
    with `once`), through database outages, with the dashboard alongside if `web` says where."""
    limit_malloc_arenas()
    # [otel] is read once, first (a missing extra is said before anything is done); a reload
    # (SIGHUP) keeps the exporter the daemon began with.
    telemetry = otel.start(settings)
    try:
        _run(settings, spool, once, clock, reload, web, echo, telemetry)
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


def _run(settings: Settings, spool: Spool, once: bool, clock: Clock,
         reload: Callable[[], Settings], web: WebOptions | None,
         echo: Callable[[str], None], telemetry: Telemetry | None) -> None:
    from monitor.daemon.service import Service
    from monitor.daemon.steps import Daemon

    # SQLite has no leases that work across processes: one daemon per file.
    lock = db.InstanceLock(settings.database_url) if settings.database_url.startswith(
        "sqlite") else None
    if lock is not None:
        lock.acquire()
    try:
        try:
            engine = db.open_store(settings.database_url)
        except StoreUnavailable as error:
            # The canary matters most when things are failing: probe now, spool, store later.
            log.error("%s; probing anyway and spooling to %s until it is back", error,
                      spool.path)
            engine = db.create(settings.database_url)
        try:
            daemon = Daemon(settings, Recorder(engine), spool, clock=clock, telemetry=telemetry)
            daemon.register()
            if once:
                daemon.run_once()
            else:
                _serve(Service(daemon, reload), web, echo)
        finally:
            engine.dispose()
    finally:
        if lock is not None:
            lock.release()


def _serve(service: Service, web: WebOptions | None, echo: Callable[[str], None]) -> None:
    """Run the schedule, with the dashboard beside it when asked for."""
    if web is None:
        service.run()
        return
    from monitor.web import app, serving

    engine = service.daemon.recorder.engine
    daemon = service.daemon
    telemetry = daemon.telemetry
    wsgi = serving.build_app(engine, web.token, lambda: daemon.settings,
                             scheduler_alive=lambda: service.scheduler.running,
                             clock=daemon.clock,
                             otel_failures=telemetry.failures.snapshot if telemetry else None)
    server = app.WebServer(wsgi, web.host, web.port, allowed_hosts=web.allowed_hosts).start()
    echo(f"listening on {server.url}")
    try:
        service.run()
    finally:
        server.stop()
