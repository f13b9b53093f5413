"""Wiring the web app (web/app.py) to the store, for `monitor serve` and `monitor run
--http`: the report (with each target's watch state), alerts and metrics sources, and what
/healthz checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from monitor import defaults
from monitor.clock import Clock, utc_now
from monitor.domain import Settings
from monitor.errors import StoreUnavailable
from monitor.health import build_report, metrics_snapshot, with_states
from monitor.snapshot import MetricsSnapshot
from monitor.store import alert_reads, leases, probe_reads, rollups
from monitor.watching import read_states, states_json
from monitor.web import app as web

T = TypeVar("T")



def _store(action: Callable[[], T]) -> T:
    """Database errors as StoreUnavailable, which the app answers with a 503."""
    try:
        return action()
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"the database cannot be reached ({type(exc).__name__})") from None


def health(engine: Engine, scheduler_alive: Callable[[], bool] | None) -> tuple[bool, dict[str, str]]:
    """Healthy when the database answers and a scheduler is alive: this process's own
    (`monitor run --http`), or for `monitor serve` any `monitor run` with a fresh heartbeat."""
    reasons: dict[str, str] = {}
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        reasons["database"] = "reachable"
    except SQLAlchemyError as exc:
        reasons["database"] = f"unreachable ({type(exc).__name__})"
        return False, reasons
    if scheduler_alive is not None:
        alive = scheduler_alive()
        reasons["scheduler"] = "running" if alive else "stopped"
        return alive, reasons
    instances = leases.alive(engine, datetime.now(UTC),
                             timedelta(seconds=defaults.ALIVE_WITHIN_S))
    if not instances:
        reasons["scheduler"] = "no monitor run instance has sent a heartbeat in 30 s"
        return False, reasons
    reasons["scheduler"] = f"{len(instances)} monitor run instance(s) alive"
    return True, reasons


def build_app(engine: Engine, token: str | None, settings: Callable[[], Settings],
              scheduler_alive: Callable[[], bool] | None = None, *,
              clock: Clock = utc_now,
              otel_failures: Callable[[], dict[str, int]] | None = None) -> Any:
    """The web app over the store. `settings` gives the configuration in force (the daemon's
    changes on SIGHUP): it says what each target's detectors, budgets and maintenance windows
    are; `clock` decides what "now" and "the last 24 h" mean; `otel_failures` this process's
    failed OpenTelemetry exports (`monitor run --http` with [otel])."""
    def report(since: datetime, until: datetime, targets: list[str] | None) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            rollups.catch_up(engine)  # idempotent; cheap when the daemon keeps up
            now = clock()
            states = states_json(read_states(engine, settings(), now), now)
            return with_states(build_report(engine, since, until, targets, now), states)
        return _store(read)

    def alerts(open_only: bool) -> list[dict[str, Any]]:
        return _store(lambda: alert_reads.list_alerts(engine, open_only=open_only))

    def metrics() -> MetricsSnapshot:
        def read() -> MetricsSnapshot:
            # Fresh with or without a daemon rolling up: fold what it has not (nothing to
            # write, and no write lock taken, when it keeps up).
            if rollups.behind(engine):
                rollups.catch_up(engine)
            snapshot = metrics_snapshot(engine)
            if otel_failures is None:
                return snapshot
            return replace(snapshot, otel_export_failures=otel_failures())
        return _store(read)

    def probe(probe_id: int) -> dict[str, Any] | None:
        return _store(lambda: probe_reads.probe_detail(engine, probe_id))

    return web.make_app(report, alerts, metrics, lambda: health(engine, scheduler_alive),
                        token, clock=clock, probe_source=probe)
