"""The named queries behind `monitor alerts`, `monitor ack` and `monitor fingerprints`, each
returning JSON-ready dicts (timestamps as ISO 8601 UTC)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.orm import Session

from monitor.domain import AlertState
from monitor.store.models import CANARY, AlertRow, DeliveryRow, DriftEventRow, ProbeRow, TargetRow


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _alert(row: AlertRow, target: str) -> dict[str, Any]:
    return {
        "id": row.id, "target": target, "kind": row.kind, "key": row.key,
        "severity": row.severity, "state": row.state, "opened_at": _iso(row.opened_at),
        "resolved_at": _iso(row.resolved_at), "started_at": _iso(row.started_at),
        "before": row.before, "after": row.after, "explanation": row.explanation,
        "resolution": row.resolution, "probe_uids": row.probe_uids, "flaps": row.flaps,
        "last_notified_at": _iso(row.last_notified_at), "acked_at": _iso(row.acked_at),
        "acked_by": row.acked_by,
    }


def list_alerts(engine: Engine, *, open_only: bool = False, target: str | None = None,
                since: datetime | None = None) -> list[dict[str, Any]]:
    """Alerts that opened (pending conditions are not alerts yet), newest first."""
    query = (
        select(AlertRow, TargetRow.name)
        .join(TargetRow, TargetRow.id == AlertRow.target_id)
        .where(AlertRow.state != AlertState.PENDING)
        .order_by(AlertRow.opened_at.desc(), AlertRow.id.desc())
    )
    if open_only:
        query = query.where(AlertRow.state == AlertState.OPEN)
    if target is not None:
        query = query.where(TargetRow.name == target)
    if since is not None:
        # Open at any time since then: opened since, or still open, or resolved since.
        query = query.where((AlertRow.opened_at >= since) | (AlertRow.resolved_at.is_(None))
                            | (AlertRow.resolved_at >= since))
    with Session(engine) as session:
        alerts = [_alert(row, name) for row, name in session.execute(query)]
        return _with_probe_ids(session, alerts)


def _with_probe_ids(session: Session, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each alert's `probe_ids`: its probe uids as ids (for /probes/{id} and `monitor show`),
    in the same order; a probe deleted since is left out."""
    uids = sorted({uid for alert in alerts for uid in alert["probe_uids"]})
    ids: dict[str, int] = {}
    for start in range(0, len(uids), _CHUNK):
        ids.update(session.execute(select(ProbeRow.uid, ProbeRow.id)
                                   .where(ProbeRow.uid.in_(uids[start:start + _CHUNK]))).all())
    for alert in alerts:
        alert["probe_ids"] = [ids[uid] for uid in alert["probe_uids"] if uid in ids]
    return alerts


# Uids looked up per query: well under SQLite's limit on bound parameters.
_CHUNK = 500


def acknowledge(engine: Engine, alert_id: int, by: str, at: datetime) -> dict[str, Any] | None:
    """Mark an alert seen (no more reminders); the alert as it is now, or None if unknown."""
    with engine.begin() as connection:
        connection.execute(update(AlertRow).where(AlertRow.id == alert_id,
                                                  AlertRow.acked_at.is_(None))
                           .values(acked_at=at, acked_by=by))
    with Session(engine) as session:
        found = session.execute(
            select(AlertRow, TargetRow.name).join(TargetRow, TargetRow.id == AlertRow.target_id)
            .where(AlertRow.id == alert_id)).first()
        return None if found is None else _with_probe_ids(session, [_alert(*found)])[0]


def fingerprint_history(engine: Engine, *, target: str | None = None,
                        since: datetime | None = None) -> list[dict[str, Any]]:
    """Per target: every system_fingerprint the canary saw (replays left out), with first and
    last seen, count and share of the fingerprinted probes; and the timeline of fingerprint
    changes the detectors reported."""
    counts = (
        select(TargetRow.name, ProbeRow.system_fingerprint, func.min(ProbeRow.started_at),
               func.max(ProbeRow.started_at), func.count(ProbeRow.id))
        .join(TargetRow, TargetRow.id == ProbeRow.target_id)
        .where(ProbeRow.system_fingerprint.is_not(None), CANARY)
        .group_by(TargetRow.name, ProbeRow.system_fingerprint)
    )
    events = (
        select(TargetRow.name, DriftEventRow)
        .join(TargetRow, TargetRow.id == DriftEventRow.target_id)
        .where(DriftEventRow.kind == "fingerprint")
        .order_by(DriftEventRow.at, DriftEventRow.id)
    )
    if target is not None:
        counts = counts.where(TargetRow.name == target)
        events = events.where(TargetRow.name == target)
    if since is not None:
        counts = counts.where(ProbeRow.started_at >= since)
        events = events.where(DriftEventRow.at >= since)
    by_target: dict[str, dict[str, Any]] = {}
    with Session(engine) as session:
        for name, fingerprint, first, last, count in session.execute(counts):
            entry = by_target.setdefault(name, {"target": name, "fingerprints": [],
                                                "timeline": []})
            entry["fingerprints"].append({"fingerprint": fingerprint, "first_seen": _iso(first),
                                          "last_seen": _iso(last), "count": count})
        for name, event in session.execute(events):
            entry = by_target.setdefault(name, {"target": name, "fingerprints": [],
                                                "timeline": []})
            entry["timeline"].append({
                "at": _iso(event.at), "change": "opened" if event.opened else "cleared",
                "key": event.key, "before": event.before, "after": event.after,
                "explanation": event.explanation, "probe_uid": event.probe_uid,
            })
    for entry in by_target.values():
        total = sum(f["count"] for f in entry["fingerprints"])
        for f in entry["fingerprints"]:
            f["share"] = round(f["count"] / total, 4) if total else 0.0
        entry["fingerprints"].sort(key=lambda f: f["first_seen"])
    return [by_target[name] for name in sorted(by_target)]


def failed_attempts(connection: Connection) -> dict[str, int]:
    """Delivery attempts that failed, by channel, over every stored notification: each
    delivery counts its attempts, the last of them the one that succeeded if it was delivered.
    Deliveries are never deleted, so the counts only grow (/metrics exposes them as counters).
    The log channel, always configured, is there even before the first notification."""
    failed = {"log": 0}
    for channel, attempts, delivered in connection.execute(
            select(DeliveryRow.channel, func.sum(DeliveryRow.attempts),
                   func.count(DeliveryRow.delivered_at))
            .group_by(DeliveryRow.channel)):
        failed[channel] = int(attempts or 0) - int(delivered)
    return failed
