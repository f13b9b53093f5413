"""Recorded traffic (`monitor proxy`) read back for reports and /metrics, kept apart from the
canaries: only targets of kind 'traffic' are read here, and no canary read reads them.

Reports count traffic in whole UTC hours from the hourly rollups (the hours that meet the
range), never from raw probes: an application's calls can number millions a day, where a
canary's are a few thousand, so the raw edges a canary report reads would cost too much.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from monitor.detect.stats import percentile
from monitor.domain import AlertState
from monitor.store import rollups
from monitor.store.aggregate import Aggregate, floor_hour, fraction, ms, percentiles, seen
from monitor.store.models import AlertRow, ProbeRow, TargetKind, TargetRow

# The proxy's added time and the keys in use are read from this many newest calls per target.
RECENT_CALLS = 1000

_RECENT = (
    select(ProbeRow.proxy_added_ms, ProbeRow.credential_hash)
    .where(ProbeRow.target_id == bindparam("target_id"))
    .order_by(ProbeRow.id.desc()).limit(bindparam("limit"))
)


@dataclass(frozen=True)
class Recent:
    proxy_added_ms: list[float]  # of the newest calls, sorted
    credentials: int  # distinct credential hashes among them


def targets(connection: Connection) -> dict[int, str]:
    """Every traffic target: id -> "route/model"."""
    query = select(TargetRow.id, TargetRow.name).where(TargetRow.kind == TargetKind.TRAFFIC)
    return {row.id: row.name for row in connection.execute(query)}


def totals(connection: Connection, target_ids: Sequence[int], since: datetime,
           until: datetime) -> dict[int, Aggregate]:
    """Each target's calls in the UTC hours that meet [since, until), from hourly rollups."""
    found = {target_id: Aggregate() for target_id in target_ids}
    for target_id, _, aggregate in rollups.read_rollups(
            connection, "hour", floor_hour(since), until, target_ids):
        found[target_id].merge(aggregate)
    return found


def recent(connection: Connection, target_id: int, limit: int = RECENT_CALLS) -> Recent:
    """The target's newest calls (an index walk backwards by id: cheap at any volume)."""
    rows = connection.execute(_RECENT, {"target_id": target_id, "limit": limit}).all()
    return Recent(sorted(r.proxy_added_ms for r in rows if r.proxy_added_ms is not None),
                  len({r.credential_hash for r in rows if r.credential_hash is not None}))


def open_alerts(connection: Connection, target_ids: Sequence[int]) -> dict[int, list[AlertRow]]:
    """The targets' alerts open now."""
    found: dict[int, list[AlertRow]] = {}
    if not target_ids:
        return found
    query = select(AlertRow).where(AlertRow.target_id.in_(target_ids),
                                   AlertRow.state == AlertState.OPEN).order_by(AlertRow.id)
    for (alert,) in connection.execute(query):
        found.setdefault(alert.target_id, []).append(alert)
    return found


def summary(connection: Connection, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Recorded traffic per route and model, in the whole hours that meet the range (as last
    rolled up), with the proxy's added time and the keys seen in the newest calls."""
    names = targets(connection)
    ids = sorted(names, key=names.__getitem__)
    summed = totals(connection, ids, since, until) if ids else {}
    alerts = open_alerts(connection, ids)
    found = []
    for target_id in ids:
        total, newest = summed[target_id], recent(connection, target_id)
        route, _, model = names[target_id].rpartition("/")
        added = newest.proxy_added_ms
        found.append({
            "target": names[target_id], "route": route, "model": model, "calls": total.probes,
            "ok": total.ok, "errors": dict(sorted(total.errors.items())),
            "error_rate": fraction(1 - total.ok / total.probes) if total.probes else None,
            "upstream_ms": percentiles(total.sketch("total")),
            "tokens": {"prompt": total.prompt_tokens, "completion": total.completion_tokens,
                       "total": total.total_tokens},
            "fingerprints": seen("fingerprint", total.fingerprints),
            "models": seen("model", total.models),
            "proxy_added_ms_p50": ms(percentile(added, 50)) if added else None,
            "credentials": newest.credentials,
            "open_alerts": [{"id": a.id, "kind": a.kind, "key": a.key, "severity": a.severity,
                             "opened_at": a.opened_at.isoformat() if a.opened_at else None,
                             "explanation": a.explanation}
                            for a in alerts.get(target_id, [])]})
    return found
