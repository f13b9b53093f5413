"""How one condition's alert moves, probe by probe: pure transitions, no clock, no database.

    (none) --holds--> pending --held open_after probes--> open --clear resolve_after probes--> resolved
                         \\--clears--> (discarded)            ^--holds again: streak resets

A condition that comes back within `cooldown` of its alert resolving re-opens that alert
silently (it flapped) instead of starting a new one; one that comes back later is a new alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.alerting import AlertSettings
from monitor.domain import AlertChange, AlertState


@dataclass(frozen=True)
class Step:
    state: AlertState | None  # None: discard the pending alert (it never opened, nobody was told)
    streak: int
    change: AlertChange | None  # OPENED or RESOLVED when people must be told


def advance(state: str, streak: int, holds: bool, policy: AlertSettings) -> Step:
    """The next state of an alert in `state`, after a probe at which its condition `holds`
    or not. `streak` counts probes in a row that held (pending) or were clear (open)."""
    if state == AlertState.PENDING:
        if not holds:
            return Step(None, 0, None)
        if streak + 1 >= policy.open_after:
            return Step(AlertState.OPEN, 0, AlertChange.OPENED)
        return Step(AlertState.PENDING, streak + 1, None)
    if state == AlertState.OPEN:
        if holds:
            return Step(AlertState.OPEN, 0, None)
        if streak + 1 >= policy.resolve_after:
            return Step(AlertState.RESOLVED, 0, AlertChange.RESOLVED)
        return Step(AlertState.OPEN, streak + 1, None)
    raise ValueError(f"a {state} alert does not advance")


def reopens(resolved_at: datetime | None, at: datetime, policy: AlertSettings) -> bool:
    """Whether a condition back at `at` continues the alert that resolved at `resolved_at`."""
    return resolved_at is not None and at - resolved_at <= timedelta(
        milliseconds=policy.cooldown_ms)


def reminder_due(last_notified_at: datetime | None, now: datetime,
                 policy: AlertSettings) -> bool:
    """Whether an open, unacknowledged alert has gone `remind_every` without a word."""
    if policy.remind_every_ms is None or last_notified_at is None:
        return False
    return now - last_notified_at >= timedelta(milliseconds=policy.remind_every_ms)
