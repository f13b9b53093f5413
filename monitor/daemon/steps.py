"""The daemon's step functions: probe a target's slot, store (or spool) the result, detect,
drain, roll up, prune, dispatch. Each does its work and returns; `tick(now)` runs one round.
What drives them is elsewhere: `Service` on a schedule, `Daemon.run_once()` for `--once`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from monitor import defaults, probe
from monitor.alerts.dispatch import Dispatcher
from monitor.alerts.watch import Watcher
from monitor.clock import Clock, utc_now
from monitor.daemon.prober import Prober
from monitor.daemon.registration import Registration
from monitor.daemon.slots import slot_at, slots_before
from monitor.domain import DriftEvent, ErrorKind, ProbeResult, Settings, SkipKind, Target
from monitor.errors import StoreError
from monitor.render import text as report
from monitor.store import db, leases, retention, rollups
from monitor.store.failures import Failure, classify, describe
from monitor.store.records import Recorder, usage_since
from monitor.store.spool import Spool
from monitor.store.writer import GroupWriter
from monitor.watching import backoff_s, budget_spent, utc_day

if TYPE_CHECKING:
    from monitor.otel.export import Telemetry
log = logging.getLogger("monitor")
T = TypeVar("T")


class Daemon:
    """Probes targets on their intervals and stores every result, through database outages.

    `tick(now)` is the step: probe the targets that are due at `now`, then drain the spool.
    `Service.run()` drives the same per-target step from APScheduler, one job per target.
    `clock` is read whenever no `now` is given (scheduled jobs, heartbeats, pruning,
    notifications); a test that ticks with a fixed clock hands the same one here.
    """

    def __init__(self, settings: Settings, recorder: Recorder, spool: Spool, *,
                 clock: Clock = utc_now, telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self.telemetry = telemetry  # [otel]: each stored (or spooled) probe, as a span
        self.clock = clock
        self.recorder = recorder
        self.spool = spool
        self.prober = Prober(recorder)
        self.registration = Registration(self.prober, recorder.engine, self._trouble)
        # Targets finish in bursts on the slot grid: their results share commits.
        self.writer = GroupWriter(recorder)
        self._backoff: dict[str, tuple[datetime, str]] = {}  # name -> (until, reason)
        self._budget_told: dict[str, date] = {}  # name -> the UTC day its spent budget was logged
        self._next_due: dict[str, datetime] = {}
        self._usage: dict[str, tuple[datetime, int, int]] = {}  # name -> (UTC day, requests, tokens)
        self._spooling = not spool.empty()  # keep order: while anything waits, new results queue
        self._spool_trouble = False  # the last drain could not write the spool's files
        # (target, slots, kind, reason) skipped while the database was down, recorded when it
        # is back
        self._unrecorded_skips: list[tuple[str, list[datetime], SkipKind, str]] = []
        # (target, slot, reason): slots the scheduler could not run, recorded once they are over
        self._unrun: list[tuple[str, datetime, str]] = []
        # Set when the daemon is stopping: a drain ends between batches, the rest waits.
        self.stopping = threading.Event()
        self._draining = threading.Lock()  # one drain at a time (the drain job and tick())
        self.instance_id = leases.new_instance_id()
        self._lock = threading.Lock()
        self.watcher = Watcher(recorder.engine, settings.alerts, clock)
        self.dispatcher = Dispatcher(recorder.engine, settings.alerts)

    # --- one target, one slot ---------------------------------------------------------------

    def probe_target(self, target: Target, now: datetime | None = None) -> ProbeResult | None:
        """Claim the target's current slot and probe it, unless another instance owns the slot;
        or record it as skipped, now that its time has come, when the target is backing off
        after a 429 or its daily budget is spent. Store the result. `now` (else the clock,
        read once) decides the slot and the budget day and is the probe's stored time."""
        now = now or self.clock()
        slot = slot_at(target, now)
        until, reason = self._backoff.get(target.name, (None, ""))
        if until is not None and now < until:
            self._skip(target.name, [slot], SkipKind.RATE_LIMITED, reason)
            log.debug("%s slot %s skipped: %s", target.name, slot.isoformat(), reason)
            return None
        spent = self._budget_spent(target, now)
        if spent is not None:
            if self._skip(target.name, [slot], SkipKind.BUDGET_SPENT, spent):
                self._tell_budget(target.name, slot, spent)
            return None
        claimed = self._claim(target, slot)
        if claimed is leases.Claim.RESERVED:
            log.debug("%s slot %s skipped: reserved by a rate-limit backoff", target.name,
                      slot.isoformat())
            return None
        if claimed is leases.Claim.TAKEN:
            return None  # another instance has this slot
        result = probe.run(target, self.prober.session(target), now=now)
        if result.error_kind is ErrorKind.RATE_LIMITED:
            self._back_off(target, slot, result, now)
        else:
            self._backoff.pop(target.name, None)
        ours = slot if claimed is leases.Claim.OURS else None  # settled as it is stored
        probe_id = self.store(result, ours)
        raised = self.detect(target, probe_id) if probe_id is not None else []
        if probe_id is None and ours is not None:  # spooled: settled on its own
            self._db_quietly(lambda: leases.settle(
                self.recorder.engine, self.recorder.target_id(target.name), slot, result.uid))
        log.info("%s", report.probe_line(result))
        if self.telemetry is not None:  # last: the probe is stored and its slot settled
            self.telemetry.record(target, result, raised)
        return result

    def _budget_spent(self, target: Target, now: datetime) -> str | None:
        """Why the target's daily budget forbids probing now, or None. Usage is read from the
        database, so several instances share one budget; while it is down, the last reading
        stands."""
        if target.daily_token_budget is None and target.daily_request_budget is None:
            return None
        day = utc_day(now)
        read = self._db_quietly(lambda: usage_since(
            self.recorder.engine, self.recorder.target_id(target.name), day))
        if read is not None:
            self._usage[target.name] = (day, *read)
        known_day, requests_sent, tokens_used = self._usage.get(target.name, (day, 0, 0))
        if known_day != day:
            requests_sent, tokens_used = 0, 0  # a new UTC day: the budget is whole again
        return budget_spent(target, requests_sent, tokens_used)

    def _tell_budget(self, name: str, slot: datetime, spent: str) -> None:
        """Log a spent budget once (it holds until the next UTC day), each skipped slot at
        debug level."""
        if self._budget_told.get(name) != slot.date():
            self._budget_told[name] = slot.date()
            log.info("%s: %s; skipping its slots until the next UTC day", name, spent)
        log.debug("%s slot %s skipped: %s", name, slot.isoformat(), spent)

    def _claim(self, target: Target, slot: datetime) -> leases.Claim | None:
        """Whose the slot is; None: the database is down, so there is no one to coordinate
        with; probe anyway and spool (losing the canary's eyes during a database outage would
        be worse than a duplicate probe)."""
        return self._db_quietly(lambda: leases.claim(
            self.recorder.engine, self.recorder.target_id(target.name), slot, self.instance_id))

    def _back_off(self, target: Target, slot: datetime, result: ProbeResult,
                  now: datetime) -> None:
        """Leave the target alone until the server's retry time. The slots inside it are
        reserved in the database, so no other instance (nor this one restarted) probes them,
        and each is recorded as skipped when its time comes (store/leases.py)."""
        wait_s = backoff_s(result.retry_after_s, result.rate_limits, target.interval_ms)
        until = now + timedelta(seconds=wait_s)
        reason = f"rate limited: HTTP 429, waiting {wait_s:g} s until {until.isoformat()}"
        self._backoff[target.name] = (until, reason)
        if ahead := slots_before(target, slot, until):
            # While the database is down there is no one to keep away: nothing to remember.
            self._db_quietly(lambda: leases.reserve(
                self.recorder.engine, self.recorder.target_id(target.name), ahead,
                self.instance_id, reason))
        log.warning("%s rate limited (HTTP 429): next probe after %s (%g s)", target.name,
                    until.strftime("%H:%M:%S"), wait_s)

    def _skip(self, name: str, slots: list[datetime], kind: SkipKind, reason: str) -> bool:
        """Record slots whose time has come as skipped on purpose; True if any was ours to
        skip. While the database is down they are remembered and recorded once it is back
        (drain)."""
        recorded = self._write_skips(name, slots, kind, reason)
        if recorded is None:
            with self._lock:
                self._unrecorded_skips.append((name, slots, kind, reason))
            return True
        return recorded > 0

    def _record_skips(self) -> None:
        with self._lock:
            waiting, self._unrecorded_skips = self._unrecorded_skips, []
        for index, (name, slots, kind, reason) in enumerate(waiting):
            if self._write_skips(name, slots, kind, reason) is None:
                with self._lock:  # down again: keep the rest for the next drain
                    self._unrecorded_skips[:0] = waiting[index:]
                return

    def _write_skips(self, name: str, slots: list[datetime], kind: SkipKind,
                     reason: str) -> int | None:
        return self._db_quietly(lambda: leases.skip(
            self.recorder.engine, self.recorder.target_id(name), slots, self.instance_id,
            kind, reason))

    def _db_quietly(self, action: Callable[[], T]) -> T | None:
        try:
            return action()
        except SQLAlchemyError as exc:
            log.warning("%s for slot bookkeeping", self._trouble(exc))
            return None

    def heartbeat(self) -> None:
        self._db_quietly(lambda: leases.heartbeat(
            self.recorder.engine, self.instance_id, self.clock()))

    def store(self, result: ProbeResult, slot_at: datetime | None = None) -> int | None:
        """Save to the database and return the probe's id (settling its slot at `slot_at`
        in the same transaction), or to the spool when it cannot take it (nothing is lost;
        None). While anything waits in the spool, new results queue behind it, in order. A
        result the database refuses for good (a poison record, store/failures.py) is
        quarantined beside the spool, and the next ones are stored as usual."""
        with self._lock:
            if self._spooling:
                self.spool.append(result)
                return None
        try:
            if self.register():
                return self.writer.save(result, slot_at=slot_at)
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
            if failure is Failure.POISON:
                self._quarantine(result, exc)
                return None
            log.error("%s; spooling to %s", self._trouble(exc), self.spool.path)
        with self._lock:
            self._spooling = True
            self.spool.append(result)
        return None

    def _trouble(self, error: BaseException) -> str:
        """What went wrong with a database call, for a log line: the database could not be
        used (and why, when it is a SQLite file's fault), or it refused what was written
        (which waiting will not change)."""
        if classify(error) is Failure.POISON:
            return f"database refused the write ({describe(error)})"
        found = error if isinstance(error, StoreError) else db.diagnose(
            error, str(self.recorder.engine.url))
        return f"database unavailable ({found or describe(error)})"

    def _quarantine(self, result: ProbeResult, error: BaseException) -> None:
        try:
            self.spool.quarantine(result, error)
        except OSError as trouble:
            log.error("probe %s of %s was refused by the database (%s) and could not be "
                      "quarantined either (%s): it is lost", result.uid, result.target_name,
                      describe(error), trouble.strerror or trouble)

    def detect(self, target: Target, probe_id: int) -> list[tuple[str, DriftEvent]]:
        """Run the target's detectors over its new probes and move its alerts; the events,
        each with the uid of the probe that raised it. Detection failing (the database went
        away, a bug) is logged and never stops probing; the probes it missed are folded after
        the next one."""
        try:
            return self.watcher.raised(target, self.recorder.target_id(target.name), probe_id)
        except SQLAlchemyError as exc:
            log.warning("%s for detection", self._trouble(exc))
        except Exception:
            log.exception("detection failed for %s", target.name)
        return []

    def roll_up(self) -> None:
        """Fold newly stored probes into the hourly and daily rollups (a job of its own)."""
        try:
            rollups.catch_up(self.recorder.engine)
        except SQLAlchemyError as exc:
            log.warning("%s for rollups", self._trouble(exc))

    def prune(self) -> None:
        """Apply the retention policy (daily): raw bodies and headers older than
        [retention] raw are emptied, after the rollups cover them."""
        now = self.clock()
        cutoff = now - timedelta(milliseconds=self.settings.raw_retention_ms)
        try:
            done = retention.prune(self.recorder.engine, cutoff, now)
        except SQLAlchemyError as exc:
            log.warning("%s for pruning", self._trouble(exc))
            return
        log.info("pruned the raw bodies and headers of %d probes older than %s (%d bytes)",
                 done["pruned"], cutoff.isoformat(), done["freed_bytes"])

    def dispatch(self, *, flush: bool = False) -> None:
        """Send due notifications (a scheduler job of its own: receivers never slow probes)."""
        try:
            self.dispatcher.run(self.clock(), flush=flush)
        except SQLAlchemyError as exc:
            log.warning("%s for notifications", self._trouble(exc))
        except Exception:
            log.exception("notification dispatch failed")

    def register(self) -> bool:
        """Store the targets' configurations (once per config; at start, or when the database
        is back if it was down then); False while that cannot be done, so results wait in the
        spool rather than land without their configuration."""
        return self.registration.ensure(lambda: self.settings)

    def use(self, settings: Settings) -> None:
        """Switch to a new configuration (SIGHUP); its targets are registered at once, or when
        the database can take them."""
        self.settings = settings
        self.watcher.policy = self.dispatcher.policy = settings.alerts
        self.registration.done = False
        self.register()

    def drain(self, *, deadline: float | None = None) -> int:
        """Write spooled results to the database, oldest first, and record skipped slots;
        returns how many results were written.

        Bounded whatever the arrival rate: each pass takes the spool up to the end it had when
        the pass started, and the call ends between batches after defaults.DRAIN_BUDGET_S, or as soon
        as the daemon is stopping (with `deadline`, a time.monotonic() value, at that instead:
        the final drain at shutdown). What is left waits in the spool, in order, for the next
        call. New results keep going to the spool until a pass leaves at most one batch
        behind; that batch is written while appends wait, and only then do results go straight
        to the database again, so none is written before one spooled earlier."""
        with self._lock:
            if not self._spooling and not self._unrecorded_skips and not self._unrun:
                return 0
        if not self._draining.acquire(blocking=False):
            return 0  # another drain is under way; it carries on
        try:
            if not self.register():
                return 0  # a target's configuration must be stored before its probes
            stop = self._drain_stop(deadline)
            drained = 0
            try:
                for _ in range(defaults.DRAIN_ROUNDS):
                    if stop():
                        break
                    drained += self.spool.drain(self.recorder.save_many, stop=stop)
                    if stop():
                        break
                    with self._lock:  # appends wait: nothing can slip in behind this batch
                        drained += self.spool.drain(self.recorder.save_many, max_batches=1)
                        if self.spool.empty():
                            self._spooling = False
                            break
            except SQLAlchemyError:
                return drained  # still (or again) down; the next drain tries again
            except OSError as error:
                if not self._spool_trouble:
                    log.error("spool cannot be written while draining (%s); trying again later",
                              error.strerror or error)
                self._spool_trouble = True
                return drained
            finally:
                if drained:
                    log.info("database is back: wrote %d spooled probes%s", drained,
                             "" if self.spool.empty() else "; the rest at the next drain")
            self._spool_trouble = False
            self._record_unrun()
            self._record_skips()
            return drained
        finally:
            self._draining.release()

    def _drain_stop(self, deadline: float | None) -> Callable[[], bool]:
        if deadline is not None:
            return lambda: time.monotonic() >= deadline
        budget_ends = time.monotonic() + defaults.DRAIN_BUDGET_S
        return lambda: self.stopping.is_set() or time.monotonic() >= budget_ends

    def skip_unrun(self, name: str, slots: list[datetime], reason: str) -> None:
        """Slots of `name` the scheduler could not run: logged now (one line), recorded as
        skipped by a drain once each slot is over. Not before: until then another instance
        may still be probing the slot, and a skip recorded first would keep it away."""
        if not slots:
            return
        when = slots[0].isoformat() if len(slots) == 1 else (
            f"{slots[0].isoformat()} .. {slots[-1].isoformat()}")
        log.warning("%s: %d slot%s not run (%s): %s", name, len(slots),
                    "" if len(slots) == 1 else "s", when, reason)
        with self._lock:
            self._unrun += [(name, slot, reason) for slot in slots]

    def _record_unrun(self) -> None:
        """Record the slots the scheduler could not run that are over (all of them once the
        daemon is stopping: its own slots are not run by anyone else after that)."""
        now = self.clock()
        intervals = {t.name: timedelta(milliseconds=t.interval_ms) for t in self.settings.targets}
        everything = self.stopping.is_set()
        with self._lock:
            waiting, self._unrun = self._unrun, []
        later: list[tuple[str, datetime, str]] = []
        over: dict[tuple[str, str], list[datetime]] = {}
        for name, slot, reason in waiting:
            if name not in intervals:
                continue  # the target was removed from the configuration
            if everything or slot + intervals[name] <= now:
                over.setdefault((name, reason), []).append(slot)
            else:
                later.append((name, slot, reason))
        with self._lock:
            self._unrun[:0] = later
        for (name, reason), slots in over.items():
            self._skip(name, slots, SkipKind.MISSED, reason)  # database down: kept for later

    # --- the step function ------------------------------------------------------------------

    def tick(self, now: datetime) -> int:
        """Probe every target due at `now` (all of them on the first tick); returns how many
        probes were sent. A target's next slot is one interval after this one."""
        due = [t for t in self.settings.targets
               if self._next_due.get(t.name, now) <= now]
        for target in due:
            self._next_due[target.name] = now + timedelta(milliseconds=target.interval_ms)
        sent = 0
        with ThreadPoolExecutor(max_workers=max(1, min(defaults.MAX_PARALLEL_PROBES, len(due)))) as pool:
            for result in pool.map(lambda t: self.probe_target(t, now), due):
                sent += result is not None
        self.drain()
        return sent

    def run_once(self) -> None:
        """`monitor run --once`: one round of probes, then everything the daemon would do
        after it (notifications flushed, rollups) and a clean stop."""
        self.tick(self.clock())
        self.dispatch(flush=True)  # no one will be around in group_wait
        self.roll_up()
        self.close()

    def close(self) -> None:
        self._db_quietly(lambda: leases.retire(self.recorder.engine, self.instance_id))
        self.prober.close()
        self.dispatcher.close()

