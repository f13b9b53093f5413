"""Every slot APScheduler could not run is recorded as skipped, with its reason, and logged once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from sqlalchemy import Engine, select

from monitor.daemon import Daemon, Service, slot_at, slot_trigger
from monitor.sim import SimClient
from monitor.store.models import SlotRow
from monitor.store.records import Recorder
from monitor.store.spool import Spool
from tests.conftest import MakeSettings


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.lines.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, needle: str, count: int, seconds: float) -> list[str]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.matching(needle)) >= count, seconds)
            return self.matching(needle)

    def matching(self, needle: str) -> list[str]:
        return [line for line in self.lines if needle in line]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    loggers = [logging.getLogger(name) for name in ("monitor", "apscheduler")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
def slow_daemon(
    sim: SimClient, engine: Engine, make_settings: MakeSettings, tmp_path: Path
) -> Iterator[Daemon]:
    settings = make_settings({"name": "slow", "interval": "1s", "timeout": "1s"})
    # The answer takes 2.5 s, longer than the interval (the config refuses a timeout longer
    # than the interval; a probe that overruns it anyway is what this is about).
    settings = replace(settings, targets=(replace(settings.targets[0], timeout_ms=5000),))
    daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"))
    assert daemon.register()
    yield daemon
    daemon.close()


def slots(engine: Engine) -> list[SlotRow]:
    with engine.connect() as connection:
        return list(connection.execute(select(SlotRow).order_by(SlotRow.slot_at)))


def test_slots_skipped_while_a_probe_overran_its_interval_are_recorded(
    sim: SimClient, engine: Engine, slow_daemon: Daemon, lines: Lines
) -> None:
    sim.update(latency={"base_ms": 2500, "jitter_ms": 0})
    service = Service(slow_daemon, lambda: slow_daemon.settings)
    service._schedule(slow_daemon.settings.targets)
    service.scheduler.start()
    try:
        logged = lines.wait_for("slot not run", 2, seconds=30)
    finally:
        service.scheduler.shutdown(wait=True)
    assert len(logged) >= 2, lines.lines
    slow_daemon.stopping.set()  # as at shutdown: every slot not run is recorded now
    slow_daemon.drain()
    rows = slots(engine)
    skipped = [r for r in rows if r.state == "skipped"]
    logged = lines.matching("slot not run")
    # One row per slot, one log line per occurrence, each with its reason.
    assert len(skipped) == len(logged) >= 2
    assert all(r.reason and r.reason.startswith("the previous probe was still running")
               for r in skipped)
    assert all(f"{r.slot_at.astimezone(UTC).isoformat()}" in " ".join(logged) for r in skipped)
    assert len({r.slot_at for r in rows}) == len(rows)
    assert any(r.state == "probed" for r in rows)
    # Only the daemon's line, not APScheduler's own warning as well.
    assert not lines.matching("maximum number of running instances reached (")


def test_missed_and_coalesced_slots_are_recorded_with_their_reason(
    engine: Engine, slow_daemon: Daemon, lines: Lines
) -> None:
    target = slow_daemon.settings.targets[0]
    service = Service(slow_daemon, lambda: slow_daemon.settings)
    base = slot_at(target, datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    second = timedelta(seconds=1)
    jitter = timedelta(milliseconds=40)
    job = f"probe:{target.name}"
    service._on_slot_event(JobSubmissionEvent(EVENT_JOB_SUBMITTED, job, "default",
                                              [base + jitter]))
    # The scheduler woke 3 s late: it ran only the latest slot (coalesce), and too late.
    service._on_slot_event(JobSubmissionEvent(EVENT_JOB_SUBMITTED, job, "default",
                                              [base + 4 * second + jitter]))
    service._on_slot_event(JobExecutionEvent(EVENT_JOB_MISSED, job, "default",
                                             base + 4 * second + jitter))
    service._on_slot_event(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, job, "default",
                                              [base + 5 * second + jitter]))
    service._on_slot_event(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, "drain", "default",
                                              [base]))  # not a probe: not a slot
    assert len(lines.matching("not run")) == 3  # one line per occurrence
    slow_daemon.stopping.set()
    slow_daemon.drain()
    reasons = {r.slot_at.astimezone(UTC): r.reason for r in slots(engine)}
    assert list(reasons) == [base + n * second for n in (1, 2, 3, 4, 5)]
    assert all(reasons[base + n * second].startswith("coalesced") for n in (1, 2, 3))
    assert reasons[base + 4 * second].startswith("missed: the scheduler could not start it")
    assert reasons[base + 5 * second].startswith("the previous probe was still running")
    assert {r.reason_kind for r in slots(engine)} == {"missed"}  # what reports count them as


def test_a_skipped_slot_is_recorded_only_once_it_is_over(
    engine: Engine, slow_daemon: Daemon
) -> None:
    now = datetime.now(UTC)
    target = slow_daemon.settings.targets[0]
    current = slot_at(target, now)
    slow_daemon.skip_unrun(target.name, [current + timedelta(minutes=1)], "test")
    slow_daemon.skip_unrun(target.name, [current - timedelta(seconds=5)], "test")
    slow_daemon.drain()
    # The one not over yet may still be probed by another instance: not claimed as skipped.
    assert [r.slot_at.astimezone(UTC) for r in slots(engine)] == [current - timedelta(seconds=5)]
    slow_daemon.stopping.set()
    slow_daemon.drain()
    assert len(slots(engine)) == 2


def test_fire_times_stay_on_the_slot_grid_whatever_the_jitter() -> None:
    """APScheduler's IntervalTrigger lets jitter accumulate (a slot lost every ~20 s at 1 s);
    the daemon's trigger starts each fire from the grid."""
    start = datetime(2026, 11, 26, 12, 0, 0, 250000, tzinfo=UTC)
    trigger = slot_trigger()(seconds=1, start_date=start, jitter=0.1, timezone=UTC)
    fire = trigger.get_next_fire_time(None, start - timedelta(seconds=1))
    for k in range(1000):
        offset = (fire - (start + k * timedelta(seconds=1))).total_seconds()
        assert 0 <= offset <= 0.1, (k, fire)
        fire = trigger.get_next_fire_time(fire, fire)
