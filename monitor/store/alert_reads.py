"""The named queries behind `monitor alerts`, `monitor ack` and `monitor fingerprints`, each
returning JSON-ready dicts (timestamps as ISO 8601 UTC)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, select, update

from monitor.domain import AlertState
from monitor.store.schema import (
    CANARY,
    PROBES_WITH_FACETS,
    alerts,
    deliveries,
    drift_events,
    probe_facets,
    probes,
    targets,
)

# Core, not the ORM: `monitor alerts` and `status` read these, and loading the ORM would cost
# them more than the reading (docs/benchmarks.md, "Command start-up").


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _alert(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id, "target": row.target, "kind": row.kind, "key": row.key,
        "severity": row.severity, "state": row.state, "opened_at": _iso(row.opened_at),
        "resolved_at": _iso(row.resolved_at), "started_at": _iso(row.started_at),
        "before": row.before, "after": row.after, "explanation": row.explanation,
        "resolution": row.resolution, "probe_uids": row.probe_uids, "flaps": row.flaps,
        "last_notified_at": _iso(row.last_notified_at), "acked_at": _iso(row.acked_at),
        "acked_by": row.acked_by,
    }


# Every column of an alert, and its target's name as `target`.
_ALERTS = (select(alerts, targets.c.name.label("target"))
           .join(targets, targets.c.id == alerts.c.target_id))


def list_alerts(engine: Engine, *, open_only: bool = False, target: str | None = None,
                since: datetime | None = None) -> list[dict[str, Any]]:
    """Alerts that opened (pending conditions are not alerts yet), newest first."""
    query = (
        _ALERTS
        .where(alerts.c.state != AlertState.PENDING)
        .order_by(alerts.c.opened_at.desc(), alerts.c.id.desc())
    )
    if open_only:
        query = query.where(alerts.c.state == AlertState.OPEN)
    if target is not None:
        query = query.where(targets.c.name == target)
    if since is not None:
        # Open at any time since then: opened since, or still open, or resolved since.
        query = query.where((alerts.c.opened_at >= since) | (alerts.c.resolved_at.is_(None))
                            | (alerts.c.resolved_at >= since))
    with engine.connect() as connection:
        found = [_alert(row) for row in connection.execute(query)]
        return _with_probe_ids(connection, found)



def _with_probe_ids(connection: Connection,
                    found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each alert's `probe_ids`: its probe uids as ids (for /probes/{id} and `monitor show`),
    in the same order; a probe deleted since is left out."""
    uids = sorted({uid for alert in found for uid in alert["probe_uids"]})
    ids: dict[str, int] = {}
    for start in range(0, len(uids), _CHUNK):
        ids.update(connection.execute(select(probes.c.uid, probes.c.id)
                                      .where(probes.c.uid.in_(uids[start:start + _CHUNK]))).all())
    for alert in found:
        alert["probe_ids"] = [ids[uid] for uid in alert["probe_uids"] if uid in ids]
    return found


# Uids looked up per query: well under SQLite's limit on bound parameters.
_CHUNK = 500


def acknowledge(engine: Engine, alert_id: int, by: str, at: datetime) -> dict[str, Any] | None:
    """Mark an alert seen (no more reminders); the alert as it is now, or None if unknown."""
    with engine.begin() as connection:
        connection.execute(update(alerts).where(alerts.c.id == alert_id,
                                                alerts.c.acked_at.is_(None))
                           .values(acked_at=at, acked_by=by))
        found = connection.execute(_ALERTS.where(alerts.c.id == alert_id)).first()
        return None if found is None else _with_probe_ids(connection, [_alert(found)])[0]


def fingerprint_history(engine: Engine, *, target: str | None = None,
                        since: datetime | None = None) -> list[dict[str, Any]]:
    """Per target: every system_fingerprint the canary saw (replays left out), with first and
    last seen, count and share of the fingerprinted probes; and the timeline of fingerprint
    changes the detectors reported."""
    counts = (
        select(targets.c.name, probe_facets.c.system_fingerprint,
               func.min(probes.c.started_at), func.max(probes.c.started_at),
               func.count(probes.c.id))
        .select_from(PROBES_WITH_FACETS)
        .join(targets, targets.c.id == probes.c.target_id)
        .where(probe_facets.c.system_fingerprint.is_not(None), CANARY)
        .group_by(targets.c.name, probe_facets.c.system_fingerprint)
    )
    events = (
        select(targets.c.name.label("target"), drift_events)
        .join(targets, targets.c.id == drift_events.c.target_id)
        .where(drift_events.c.kind == "fingerprint")
        .order_by(drift_events.c.at, drift_events.c.id)
    )
    if target is not None:
        counts = counts.where(targets.c.name == target)
        events = events.where(targets.c.name == target)
    if since is not None:
        counts = counts.where(probes.c.started_at >= since)
        events = events.where(drift_events.c.at >= since)
    by_target: dict[str, dict[str, Any]] = {}
    with engine.connect() as connection:
        for name, fingerprint, first, last, count in connection.execute(counts):
            entry = by_target.setdefault(name, {"target": name, "fingerprints": [],
                                                "timeline": []})
            entry["fingerprints"].append({"fingerprint": fingerprint, "first_seen": _iso(first),
                                          "last_seen": _iso(last), "count": count})
        for event in connection.execute(events):
            entry = by_target.setdefault(event.target, {"target": event.target,
                                                        "fingerprints": [], "timeline": []})
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
            select(deliveries.c.channel, func.sum(deliveries.c.attempts),
                   func.count(deliveries.c.delivered_at))
            .group_by(deliveries.c.channel)):
        failed[channel] = int(attempts or 0) - int(delivered)
    return failed
