"""The slot grid: when each target's probes are due, identical on every instance, and the
APScheduler trigger and grace that keep the schedule on it."""

from __future__ import annotations

import functools
import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from monitor.domain import Target

log = logging.getLogger("monitor")
T = TypeVar("T")


def slot_at(target: Target, now: datetime) -> datetime:
    """The start of the slot `now` falls in. Slots sit on a grid fixed by the epoch, the
    interval and a per-target offset, so every instance computes the same slots."""
    interval_ms = target.interval_ms
    now_ms = int(now.timestamp() * 1000)
    offset_ms = int(_offset_s(target) * 1000)
    start_ms = (now_ms - offset_ms) // interval_ms * interval_ms + offset_ms
    return datetime.fromtimestamp(start_ms / 1000, UTC)


def slots_before(target: Target, after: datetime, until: datetime) -> list[datetime]:
    """The target's slots after the slot `after` that start before `until`."""
    interval = timedelta(milliseconds=target.interval_ms)
    found, slot = [], after + interval
    while slot < until:
        found.append(slot)
        slot += interval
    return found


@functools.cache
def slot_trigger() -> Any:
    """APScheduler's IntervalTrigger, computing each fire time from the slot grid.

    IntervalTrigger adds the interval to the previous fire time, jitter included, so the jitter
    accumulates: the fires drift later by half the jitter per interval on average, and every so
    often a slot of the grid is never run (one in 20 for a 1 s interval and 0.1 s jitter). This
    one starts from the grid slot after the previous fire (lazily built: apscheduler is imported
    only by `monitor run`)."""
    from apscheduler.triggers.interval import IntervalTrigger

    class SlotTrigger(IntervalTrigger):  # type: ignore[misc]
        def get_next_fire_time(self, previous_fire_time: datetime | None,
                               now: datetime) -> datetime | None:
            if previous_fire_time is None:
                return super().get_next_fire_time(None, now)  # type: ignore[no-any-return]
            # The grid slot after the previous one, whatever jitter that one had (< interval).
            after = previous_fire_time + timedelta(milliseconds=1)
            return super().get_next_fire_time(None, after)  # type: ignore[no-any-return]

    return SlotTrigger


def misfire_grace_s(target: Target) -> int:
    return max(1, int(target.interval_ms / 2000))


class _ProbeSlotWarnings(logging.Filter):
    """Drops APScheduler's own warning about a probe slot it skipped or missed: the daemon
    logs each of those once, with the target and the slot (Service._on_slot_event)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not (
                "maximum number of running instances" in record.msg
                or "was missed by" in record.msg):
            return True
        job = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not str(getattr(job, "id", "")).startswith("probe:")


PROBE_SLOT_WARNINGS = _ProbeSlotWarnings()


def _offset_s(target: Target) -> float:
    digest = hashlib.sha256(target.name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(1, target.interval_ms) / 1000
