"""Alerts in the database: after each folded probe, move every alert of the target one step
(lifecycle.py) and write each change people must hear of to the outbox, all in the caller's
transaction, so an alert never changes without its notification being queued, and vice versa.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from monitor.alerting import AlertSettings
from monitor.alerts import lifecycle
from monitor.alerts.maintenance import active_window
from monitor.domain import AlertChange, AlertState, DriftEvent, OutboxState
from monitor.store.models import AlertRow, OutboxRow

ConditionKey = tuple[str, str]  # (kind, key)

# Built once: this runs after every probe.
_LIVE = select(AlertRow.id, AlertRow.kind, AlertRow.key, AlertRow.state, AlertRow.streak).where(
    AlertRow.target_id == bindparam("target_id"),
    AlertRow.state.in_((AlertState.PENDING, AlertState.OPEN)))


def apply(connection: Connection, policy: AlertSettings, target_id: int, target_name: str,
          at: datetime, events: Sequence[DriftEvent],
          active: Mapping[ConditionKey, DriftEvent], *, none_live: bool = False) -> bool:
    """Advance the target's alerts after one probe at `at`. `events` are what this probe
    opened or cleared; `active` every condition open after it. `none_live`: the caller
    knows the target has no pending or open alert (saves a query after most probes).
    Returns whether the target has pending or open alerts now."""
    if none_live and not active:
        return False  # the usual case: nothing open, nothing opening
    live: dict[ConditionKey, Any] = {  # rows with id, state and streak
        (row.kind, row.key): row for row in connection.execute(_LIVE, {"target_id": target_id})}
    if not live and not active:
        return False
    session = Session(connection)  # reads rows as objects; writes go through Core below
    cleared = {(e.kind.value, e.key): e for e in events if not e.opened}
    for condition, event in active.items():
        if condition not in live:
            row_id = _reopen(session, policy, target_id, condition, at) or _new_pending(
                connection, target_id, event)
            live[condition] = session.get_one(AlertRow, row_id, populate_existing=True)
    still_live = False
    for condition, row in live.items():
        step = lifecycle.advance(row.state, row.streak, condition in active, policy)
        still_live = still_live or step.state in (AlertState.PENDING, AlertState.OPEN)
        if step.state is None:
            connection.execute(delete(AlertRow).where(AlertRow.id == row.id))
            continue
        values: dict[str, object] = {"state": step.state, "streak": step.streak}
        if step.change == AlertChange.OPENED:
            values["opened_at"] = at
        elif step.change == AlertChange.RESOLVED:
            values["resolved_at"] = at
        if condition in cleared:
            values["resolution"] = cleared[condition].explanation
        connection.execute(update(AlertRow).where(AlertRow.id == row.id).values(**values))
        if step.change is not None:
            queue(connection, policy, row.id, target_name, step.change, at)
    return still_live


def queue(connection: Connection, policy: AlertSettings, alert_id: int, target_name: str,
          change: str, at: datetime) -> None:
    """Put one alert change in the outbox; held while a maintenance window covers the target."""
    window = active_window(policy.maintenance, target_name, at)
    connection.execute(insert(OutboxRow).values(
        alert_id=alert_id, change=change, created_at=at,
        state=OutboxState.HELD if window else OutboxState.PENDING,
        note=f"maintenance window {window.name!r}" if window else None,
    ))


def _reopen(session: Session, policy: AlertSettings, target_id: int,
            condition: ConditionKey, at: datetime) -> int | None:
    """The alert of this condition that resolved within the cooldown, open again, or None.
    Its 'resolved' waits out the cooldown in the outbox (dispatch.py), so nobody has been told
    yet: it is dropped and the alert simply continues."""
    kind, key = condition
    connection = session.connection()
    last = session.scalars(
        select(AlertRow)
        .where(AlertRow.target_id == target_id, AlertRow.kind == kind, AlertRow.key == key,
               AlertRow.state == AlertState.RESOLVED)
        .order_by(AlertRow.resolved_at.desc())
        .limit(1)
    ).first()
    if last is None or not lifecycle.reopens(last.resolved_at, at, policy):
        return None
    unsent = connection.execute(
        update(OutboxRow)
        .where(OutboxRow.alert_id == last.id, OutboxRow.change == AlertChange.RESOLVED,
               OutboxRow.state.in_((OutboxState.PENDING, OutboxState.HELD)))
        .values(state=OutboxState.DROPPED, note="re-opened within the cooldown")
        .returning(OutboxRow.id)
    ).all()
    if not unsent:
        return None  # people were told it resolved: this is a new alert
    connection.execute(update(AlertRow).where(AlertRow.id == last.id).values(
        state=AlertState.OPEN, streak=0, flaps=last.flaps + 1, resolved_at=None,
        resolution=None))
    return last.id


def _new_pending(connection: Connection, target_id: int, event: DriftEvent) -> int:
    return int(connection.execute(insert(AlertRow).values(
        target_id=target_id, kind=event.kind.value, key=event.key,
        severity=event.severity.value, state=AlertState.PENDING, streak=0, flaps=0,
        started_at=event.at, before=event.before, after=event.after,
        probe_uids=list(event.probe_uids), explanation=event.explanation,
    ).returning(AlertRow.id)).scalar_one())
