"""`monitor run`: APScheduler jobs rebuilt from the config drive the daemon's steps until a
signal stops it (warm, then cold)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from monitor import defaults, httpd
from monitor.daemon.slots import PROBE_SLOT_WARNINGS, misfire_grace_s, slot_at, slot_trigger
from monitor.daemon.steps import Daemon
from monitor.domain import Settings, Target
from monitor.errors import MonitorError

if TYPE_CHECKING:
    from monitor.daemon.workers import Family

log = logging.getLogger("monitor")
T = TypeVar("T")


class Service:
    """`monitor run`: APScheduler jobs rebuilt from the config, signals, warm and cold stop."""

    def __init__(self, daemon: Daemon, load_settings: Callable[[], Settings], *,
                 shared_jobs: bool = True, family: Family | None = None) -> None:
        from apscheduler.events import (
            EVENT_JOB_MAX_INSTANCES,
            EVENT_JOB_MISSED,
            EVENT_JOB_SUBMITTED,
        )
        from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.daemon = daemon
        self._load_settings = load_settings
        # Rollups, notifications and pruning: one of each per instance, whose other workers
        # (`monitor run --workers`) only probe, store, detect and drain their share.
        self._shared_jobs = shared_jobs
        self._family = family  # worker 0's: the other workers, told of each signal
        self._stopping = threading.Event()
        self._stop_by = 0.0  # time.monotonic() by which a warm stop should be done
        # Enough threads that a target hanging until its timeout never holds up another.
        workers = max(8, min(200, 2 * len(daemon.settings.targets)))
        # In-memory job store only: the jobs are rebuilt from the config at every start.
        self.scheduler = BackgroundScheduler(
            executors={"default": JobExecutor(workers)}, timezone=UTC
        )
        # Every slot the scheduler could not run is recorded as skipped, with its reason.
        self._last_slot: dict[str, datetime] = {}  # target -> the latest slot handed out
        # The running config's targets by name, for the scheduler's events (one per probe):
        # a walk of the list cost 5 % of a 6,000-target daemon's CPU. Made anew for a reload.
        self._targets: tuple[tuple[Target, ...], dict[str, Target]] = ((), {})
        self.scheduler.add_listener(
            self._on_slot_event, EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
            logging.getLogger(name).addFilter(PROBE_SLOT_WARNINGS)

    def _schedule(self, targets: Iterable[Target]) -> None:
        now = datetime.now(UTC)
        for target in targets:
            self._last_slot.pop(target.name, None)  # a new grid: no gap to the old one
            interval_s = target.interval_ms / 1000
            self.scheduler.add_job(
                self.daemon.probe_target,
                slot_trigger()(seconds=interval_s,
                                start_date=slot_at(target, now) + timedelta(seconds=interval_s),
                                jitter=min(defaults.JITTER_S, interval_s / 10)),
                args=[target],
                id=f"probe:{target.name}",
                name=target.name,
                # A missed slot is not made up twice: the canary must never become the load.
                coalesce=True,
                max_instances=1,
                misfire_grace_time=misfire_grace_s(target),
                replace_existing=True,
            )

    def _on_slot_event(self, event: Any) -> None:
        """APScheduler handed out a probe job's slot (submitted), or could not run it: the
        previous run was still going (max instances) or it started too late (missed). Slots
        between the last one handed out and this one were coalesced away (the scheduler was
        late). All but the submitted one are recorded as skipped."""
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

        job_id: str = event.job_id
        if not job_id.startswith("probe:"):
            return
        name = job_id.removeprefix("probe:")
        target = self._target(name)
        if target is None:
            return
        if event.code == EVENT_JOB_MISSED:
            grace_s = misfire_grace_s(target)
            self.daemon.skip_unrun(name, [slot_at(target, event.scheduled_run_time)],
                                   f"missed: the scheduler could not start it within "
                                   f"{grace_s} s of its time")
            return
        slots = [slot_at(target, t) for t in event.scheduled_run_times]
        if not slots:
            return
        interval = timedelta(milliseconds=target.interval_ms)
        last = self._last_slot.get(name)
        self._last_slot[name] = max(slots[-1], last or slots[-1])
        if last is not None:
            gap = []
            slot = last + interval
            while slot < slots[0]:
                gap.append(slot)
                slot += interval
            self.daemon.skip_unrun(name, gap, "coalesced: the scheduler was late and ran "
                                   "only the latest slot")
        if event.code == EVENT_JOB_MAX_INSTANCES:
            self.daemon.skip_unrun(name, slots, "the previous probe was still running "
                                   "(maximum running instances reached)")

    def _target(self, name: str) -> Target | None:
        targets = self.daemon.settings.targets
        if self._targets[0] is not targets:
            self._targets = (targets, {t.name: t for t in targets})
        return self._targets[1].get(name)

    def reload(self) -> None:
        """Apply the config file again; an invalid one is refused and the old one kept."""
        try:
            settings = self._load_settings()
        except MonitorError as error:
            log.error("reload refused, keeping the running config: %s", error)
            return
        old = {t.name: t for t in self.daemon.settings.targets}
        new = {t.name: t for t in settings.targets}
        for name in old.keys() - new.keys():
            self.scheduler.remove_job(f"probe:{name}")
        changed = [t for name, t in new.items() if old.get(name) != t]
        self.daemon.use(settings)
        self._schedule(changed)
        log.info("reloaded: %d targets (%d added, %d removed, %d changed)", len(new),
                 len(new.keys() - old.keys()), len(old.keys() - new.keys()),
                 len([n for n in new.keys() & old.keys() if old[n] != new[n]]))

    def _relay(self, received: signal.Signals) -> None:
        if self._family is not None:
            self._family.relay(received)

    def _warm_stop(self, received: signal.Signals) -> None:
        self._relay(received)
        log.info("%s: finishing in-flight probes, then exiting (again to exit now)",
                 received.name)
        # In-flight probes end within their timeouts; the final drain gets what is left of that.
        longest_s = max((t.timeout_ms for t in self.daemon.settings.targets), default=0) / 1000
        self._stop_by = time.monotonic() + longest_s
        self._stopping.set()
        self.daemon.stopping.set()  # a drain under way ends at its next batch

    def _cold_stop(self, received: signal.Signals) -> None:
        self._relay(received)
        log.warning("second %s: exiting now", received.name)

    def _reload_signal(self) -> None:
        self._relay(signal.SIGHUP)
        self.reload()

    def run(self) -> None:
        """Schedule every job and run them until a signal stops the service (warm, then cold)."""
        with httpd.stop_signals(self._warm_stop, cold_exit=1, cold=self._cold_stop):
            self._run()

    def _run(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self._reload_signal())
        if self._family is not None:  # a worker ending unasked stops this one, as a signal
            self._family.watch(lambda: os.kill(os.getpid(), signal.SIGTERM))
        self._schedule(self.daemon.settings.targets)
        self.scheduler.add_job(self.daemon.drain, "interval", seconds=defaults.DRAIN_EVERY_S,
                               id="drain", coalesce=True, max_instances=1)
        if self._shared_jobs:
            self.scheduler.add_job(self.daemon.dispatch, "interval",
                                   seconds=defaults.DISPATCH_EVERY_S, id="dispatch",
                                   coalesce=True, max_instances=1)
            self.scheduler.add_job(self.daemon.roll_up, "interval",
                                   seconds=defaults.ROLLUP_EVERY_S, id="rollups",
                                   coalesce=True, max_instances=1)
            self.scheduler.add_job(self.daemon.prune, "interval", hours=24, id="prune",
                                   next_run_time=datetime.now(UTC) + defaults.PRUNE_FIRST_AFTER,
                                   coalesce=True, max_instances=1)
        self.daemon.heartbeat()
        self.scheduler.add_job(self.daemon.heartbeat, "interval", seconds=defaults.HEARTBEAT_EVERY_S,
                               id="heartbeat", coalesce=True, max_instances=1)
        self.scheduler.start()
        log.info("running: %d targets", len(self.daemon.settings.targets))
        while not self._stopping.wait(1.0):
            pass
        # Warm stop: no new slots; in-flight probes end within their own timeouts.
        self.scheduler.shutdown(wait=True)
        # Bounded: the rest stays in the spool, in order, for the next start.
        self.daemon.drain(deadline=max(self._stop_by, time.monotonic() + defaults.SHUTDOWN_DRAIN_MIN_S))
        if self._shared_jobs:
            self.daemon.roll_up()
            self.daemon.dispatch()  # what is due now; the rest is sent by the next start
        self.daemon.close()
        log.info("stopped")
