"""From outbox to receivers: group alert changes into notifications and deliver them on every
channel, with retries and backoff that survive restarts.

One pass (`Dispatcher.run`) does, in order:
1. release changes held by a maintenance window that has ended, if they are still true;
2. queue reminders for alerts open and unacknowledged for `remind_every`;
3. group pending changes: all changes of one kind and direction ("availability opened") that
   arrived within `group_wait` become one notification naming every target; a 'resolved' also
   waits out the cooldown (flap damping, see engine.py). Each channel gets a delivery of the
   alerts its routing takes (`min_severity`, `kinds`; channels.py), or none;
4. deliver due deliveries. Each is claimed with a short lease first, so several daemons on one
   PostgreSQL never send the same one at once; a 2xx (for Apprise, notify() returning True)
   marks it delivered. A crash between the receiver's 2xx and that mark re-sends it after the
   lease: webhook receivers dedupe on the `Idempotency-Key` header, which is the
   notification's id on every attempt; Apprise's services have no such header, so that crash
   is the one case where an Apprise notification can arrive twice.

Runs on its own scheduler thread: a slow or failing receiver never delays a probe.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, and_, exists, insert, or_, select, update
from sqlalchemy.orm import Session

from monitor.alerting import AlertSettings, Channel
from monitor.alerts import engine as alert_engine
from monitor.alerts import lifecycle
from monitor.alerts.channels import Sender, configured, destination, render, routed
from monitor.alerts.maintenance import active_window
from monitor.alerts.notifiers import AlertSummary, Notification, retry_delay_s
from monitor.domain import (
    AlertChange,
    AlertState,
    DriftEvent,
    DriftKind,
    OutboxState,
    Severity,
)
from monitor.store.models import (
    AlertRow,
    DeliveryRow,
    NotificationRow,
    OutboxRow,
    TargetRow,
)

log = logging.getLogger("monitor")

# An instance owns a delivery this long while sending it (well over any timeout).
LEASE = timedelta(minutes=2)
# Deliveries attempted per pass; the rest wait for the next pass (one second later).
BATCH = 50


class Dispatcher:
    def __init__(self, engine: Engine, policy: AlertSettings) -> None:
        self.engine = engine
        self.policy = policy
        self.sender = Sender()

    def run(self, now: datetime | None = None, *, flush: bool = False) -> int:
        """One pass; returns how many deliveries succeeded. `flush` groups at once (for
        `monitor run --once`, which will not be around in `group_wait`)."""
        now = now or datetime.now(UTC)
        with self.engine.begin() as connection:
            self._release_held(connection, now)
            self._queue_reminders(connection, now)
            self._group(connection, now, flush)
        return self._deliver_due(now)

    def close(self) -> None:
        self.sender.close()

    # --- 1. maintenance --------------------------------------------------------------------

    def _release_held(self, connection: Connection, now: datetime) -> None:
        held = Session(connection).execute(
            select(OutboxRow, AlertRow.state, TargetRow.name)
            .join(AlertRow, AlertRow.id == OutboxRow.alert_id)
            .join(TargetRow, TargetRow.id == AlertRow.target_id)
            .where(OutboxRow.state == OutboxState.HELD)
        ).all()
        for row, alert_state, target in held:
            if active_window(self.policy.maintenance, target, now):
                continue
            # After the window, people hear of the state that outlasted it, nothing else.
            still_true = (
                (row.change == AlertChange.OPENED and alert_state == AlertState.OPEN)
                or (row.change == AlertChange.RESOLVED and alert_state == AlertState.RESOLVED
                    and _was_announced(connection, row.alert_id))
            )
            connection.execute(update(OutboxRow).where(OutboxRow.id == row.id).values(
                state=OutboxState.PENDING if still_true else OutboxState.DROPPED,
                note=row.note if still_true else "outlived by a later change in maintenance",
            ))

    # --- 2. reminders ------------------------------------------------------------------------

    def _queue_reminders(self, connection: Connection, now: datetime) -> None:
        if self.policy.remind_every_ms is None:
            return
        waiting = exists().where(OutboxRow.alert_id == AlertRow.id,
                                 OutboxRow.state.in_((OutboxState.PENDING, OutboxState.HELD)))
        due = connection.execute(
            select(AlertRow.id, AlertRow.last_notified_at, TargetRow.name)
            .join(TargetRow, TargetRow.id == AlertRow.target_id)
            .where(AlertRow.state == AlertState.OPEN, AlertRow.acked_at.is_(None), ~waiting)
        ).all()
        for alert_id, last_notified_at, target in due:
            if lifecycle.reminder_due(last_notified_at, now, self.policy):
                alert_engine.queue(connection, self.policy, alert_id, target,
                                   AlertChange.REMINDER, now)

    # --- 3. grouping -------------------------------------------------------------------------

    def _group(self, connection: Connection, now: datetime, flush: bool) -> None:
        query = (
            select(OutboxRow, AlertRow, TargetRow.name)
            .join(AlertRow, AlertRow.id == OutboxRow.alert_id)
            .join(TargetRow, TargetRow.id == AlertRow.target_id)
            .where(OutboxRow.state == OutboxState.PENDING)
            .order_by(OutboxRow.id)
        )
        if connection.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True, of=OutboxRow)
        groups: dict[tuple[str, str], list[tuple[OutboxRow, AlertRow, str]]] = defaultdict(list)
        for row, alert, target in Session(connection).execute(query).all():
            groups[(row.change, alert.kind)].append((row, alert, target))
        for (change, _), members in groups.items():
            wait_ms = self.policy.group_wait_ms
            if change == AlertChange.RESOLVED:
                wait_ms = max(wait_ms, self.policy.cooldown_ms)
            oldest = min(row.created_at for row, _, _ in members)
            if flush or now - oldest >= timedelta(milliseconds=wait_ms):
                self._notify(connection, now, change, members)

    def _notify(self, connection: Connection, now: datetime, change: str,
                members: list[tuple[OutboxRow, AlertRow, str]]) -> None:
        alerts: dict[int, AlertSummary] = {}
        for _, alert, target in members:
            alerts[alert.id] = _summary(alert, target, change)
        notification = Notification(id=uuid.uuid4().hex, created_at=now, change=change,
                                    alerts=tuple(alerts.values()))
        notification_id = connection.execute(insert(NotificationRow).values(
            uid=notification.id, created_at=now, change=change, title=notification.title,
        ).returning(NotificationRow.id)).scalar_one()
        connection.execute(
            update(OutboxRow).where(OutboxRow.id.in_([row.id for row, _, _ in members]))
            .values(state=OutboxState.GROUPED, notification_id=notification_id))
        connection.execute(update(AlertRow).where(AlertRow.id.in_(list(alerts)))
                           .values(last_notified_at=now))
        # Each channel gets the alerts it takes (its kinds, its severities), or nothing.
        deliveries = [
            {"notification_id": notification_id, "channel": channel_id,
             "destination": destination(channel), "body": render(channel, taken),
             "attempts": 0, "next_attempt_at": now}
            for channel_id, channel in configured(self.policy).items()
            if (taken := routed(channel, notification)) is not None
        ]
        connection.execute(insert(DeliveryRow), deliveries)

    # --- 4. delivery -------------------------------------------------------------------------

    def _deliver_due(self, now: datetime) -> int:
        """Deliver, channel by channel, in order: a notification waits for the ones before it
        on its channel, so a receiver never hears 'resolved' before 'opened'."""
        with self.engine.connect() as connection:
            busy = connection.execute(
                select(DeliveryRow.channel).where(DeliveryRow.next_attempt_at.is_not(None))
                .distinct()
            ).scalars().all()
        known = configured(self.policy)
        delivered = 0
        for channel in busy:
            for _ in range(BATCH):
                head = self._head(channel, now)
                claimed = None if head is None else self._claim(head, now)
                if claimed is None:
                    break  # nothing due, or another instance is sending it
                outcome = self._attempt(claimed, known, now)
                delivered += outcome == "delivered"
                if outcome == "retry":
                    break
        return delivered

    def _head(self, channel: str, now: datetime) -> int | None:
        """The channel's oldest unfinished delivery, if it is due and nobody is sending it."""
        with self.engine.connect() as connection:
            head = connection.execute(
                select(DeliveryRow.id, DeliveryRow.next_attempt_at, DeliveryRow.lease_until)
                .where(DeliveryRow.channel == channel, DeliveryRow.next_attempt_at.is_not(None))
                .order_by(DeliveryRow.id)
                .limit(1)
            ).first()
        if head is None or head.next_attempt_at > now or (
            head.lease_until is not None and head.lease_until >= now
        ):
            return None
        return int(head.id)

    def _claim(self, delivery_id: int, now: datetime) -> tuple[DeliveryRow, str, datetime] | None:
        with self.engine.begin() as connection:
            won = connection.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id == delivery_id, DeliveryRow.next_attempt_at.is_not(None),
                       or_(DeliveryRow.lease_until.is_(None), DeliveryRow.lease_until < now))
                .values(lease_until=now + LEASE)
                .returning(DeliveryRow.id)  # not rowcount: psycopg 3 may report -1
            ).first()
            if won is None:
                return None  # another instance is sending it
            row, uid, created_at = Session(connection).execute(
                select(DeliveryRow, NotificationRow.uid, NotificationRow.created_at)
                .join(NotificationRow, NotificationRow.id == DeliveryRow.notification_id)
                .where(DeliveryRow.id == delivery_id)
            ).one()
            return row, uid, created_at

    def _attempt(self, claimed: tuple[DeliveryRow, str, datetime],
                 known: dict[str, Channel], now: datetime) -> str:
        """'delivered', 'gave_up' or 'retry'."""
        row, uid, created_at = claimed
        attempts = row.attempts + 1
        if row.channel not in known:  # given up unsent: no attempt is counted
            self._finish(row.id, row.attempts, now, gave_up="the channel is no longer configured")
            return "gave_up"
        if now - created_at > timedelta(milliseconds=self.policy.give_up_after_ms):
            log.error("notification %s to %s given up after %d attempts: %s", uid,
                      row.destination, row.attempts, row.last_error)
            self._finish(row.id, row.attempts, now, gave_up=row.last_error or "too old")
            return "gave_up"
        outcome = self.sender.send(known[row.channel], row.body, uid)
        if outcome.ok:
            self._finish(row.id, attempts, now, delivered=True, status=outcome.status)
            return "delivered"
        if not outcome.retryable:
            log.error("notification %s to %s refused, not retrying: %s", uid, row.destination,
                      outcome.error)
            self._finish(row.id, attempts, now, gave_up=outcome.error, status=outcome.status)
            return "gave_up"
        wait_s = retry_delay_s(attempts, outcome.retry_after_s)
        log.warning("notification %s to %s failed (attempt %d), retrying in %.0f s: %s", uid,
                    row.destination, attempts, wait_s, outcome.error)
        with self.engine.begin() as connection:
            connection.execute(update(DeliveryRow).where(DeliveryRow.id == row.id).values(
                attempts=attempts, next_attempt_at=now + timedelta(seconds=wait_s),
                lease_until=None, last_status=outcome.status, last_error=outcome.error))
        return "retry"

    def _finish(self, delivery_id: int, attempts: int, now: datetime, *,
                delivered: bool = False, gave_up: str | None = None,
                status: int | None = None) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(DeliveryRow).where(DeliveryRow.id == delivery_id).values(
                attempts=attempts, next_attempt_at=None, lease_until=None,
                delivered_at=now if delivered else None,
                gave_up_at=None if delivered else now,
                last_status=status, last_error=gave_up))


def _was_announced(connection: Connection, alert_id: int) -> bool:
    return connection.execute(
        select(OutboxRow.id).where(and_(OutboxRow.alert_id == alert_id,
                                        OutboxRow.change == AlertChange.OPENED,
                                        OutboxRow.state == OutboxState.GROUPED)).limit(1)
    ).first() is not None


def _summary(alert: AlertRow, target: str, change: str) -> AlertSummary:
    """The alert as of now (its state may have moved on since the change), explained as the
    change: why it opened, or why it resolved."""
    return AlertSummary(
        alert_id=alert.id, target=target, kind=DriftKind(alert.kind), key=alert.key,
        severity=Severity(alert.severity),
        state=AlertState.RESOLVED if alert.state == AlertState.RESOLVED else AlertState.OPEN,
        opened_at=alert.opened_at or alert.started_at, resolved_at=alert.resolved_at,
        before=alert.before, after=alert.after,
        explanation=alert.resolution if change == AlertChange.RESOLVED and alert.resolution
        else alert.explanation,
        probe_uids=tuple(alert.probe_uids),
    )


def notify_now(policy: AlertSettings, events: list[DriftEvent], now: datetime) -> list[str]:
    """`monitor detect --notify`: send re-detected events straight to every channel, grouped
    like live ones (one notification per kind and direction), one attempt each, stamped
    `now` (the command's clock); returns a line per failed delivery. Nothing is stored:
    these are not live alerts."""
    groups: dict[tuple[bool, str], list[DriftEvent]] = defaultdict(list)
    for event in events:
        groups[(event.opened, event.kind.value)].append(event)
    failures = []
    sender = Sender()
    try:
        for (opened, _), members in groups.items():
            notification = Notification(
                id=uuid.uuid4().hex, created_at=now,
                change=AlertChange.OPENED if opened else AlertChange.RESOLVED,
                alerts=tuple(_event_summary(e) for e in members))
            for channel in configured(policy).values():
                taken = routed(channel, notification)
                if taken is None:
                    continue
                outcome = sender.send(channel, render(channel, taken), notification.id)
                if not outcome.ok:
                    failures.append(outcome.error or destination(channel))
    finally:
        sender.close()
    return failures


def _event_summary(event: DriftEvent) -> AlertSummary:
    """A re-detected event as a notification shows it; alert id 0: it is no stored alert."""
    return AlertSummary(
        alert_id=0, target=event.target, kind=event.kind, key=event.key,
        severity=event.severity, state=AlertState.OPEN if event.opened else AlertState.RESOLVED,
        opened_at=event.at, resolved_at=None if event.opened else event.at,
        before=event.before, after=event.after, explanation=event.explanation,
        probe_uids=event.probe_uids,
    )
