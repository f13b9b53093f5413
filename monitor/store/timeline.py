"""Probe-level reads for short report ranges and the dashboard's status overview: every probe
of a range as a chart point, each target's latest probes (the heartbeat bar), and probe and
success counts over long windows from hourly rollups plus the raw probes at their edges.

Replays re-send stored requests on purpose; they are not canary traffic, so none of these
reads count them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, FunctionElement, Integer, String, bindparam, case, func, select
from sqlalchemy.ext.compiler import compiles

from monitor.store.aggregate import floor_hour
from monitor.store.models import CANARY, HourlyRollupRow, ProbeRow

POINT_COLUMNS = (
    ProbeRow.id, ProbeRow.target_id, ProbeRow.started_at, ProbeRow.ok, ProbeRow.error_kind,
    ProbeRow.http_status, ProbeRow.total_ms, ProbeRow.openai_processing_ms,
    ProbeRow.system_fingerprint, ProbeRow.model, ProbeRow.ratelimit_limit_requests,
    ProbeRow.ratelimit_limit_tokens, ProbeRow.ratelimit_remaining_requests,
    ProbeRow.ratelimit_remaining_tokens,
)


class utc_text(FunctionElement[str]):
    """A UTC time column as "YYYY-MM-DD HH:MM:SS.ffffff" text, read as the database has it: a
    point's time is only ever shown as text, and parsing 28,800 of them into datetimes to
    format them back was a third of the cost of a day of points. On SQLite that is the stored
    text (UtcDateTime writes it so); PostgreSQL formats it."""

    type = String()
    name = "utc_text"
    inherit_cache = True


@compiles(utc_text)
def _stored_text(element: utc_text, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(utc_text, "postgresql")
def _formatted_text(element: utc_text, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"


_POINT_COLUMNS_AS_READ = (POINT_COLUMNS[0], POINT_COLUMNS[1], utc_text(ProbeRow.started_at),
                          *POINT_COLUMNS[3:])
_POINTS = (
    select(*_POINT_COLUMNS_AS_READ)
    .where(ProbeRow.target_id == bindparam("target_id"),
           ProbeRow.started_at >= bindparam("since"), ProbeRow.started_at < bindparam("until"),
           CANARY)
    .order_by(ProbeRow.started_at, ProbeRow.id)
)
# Walks ix_probes_target_id_started_at backwards from `until` and stops after `limit` rows.
_LATEST = (
    select(*POINT_COLUMNS)
    .where(ProbeRow.target_id == bindparam("target_id"),
           ProbeRow.started_at < bindparam("until"), CANARY)
    .order_by(ProbeRow.started_at.desc(), ProbeRow.id.desc()).limit(bindparam("limit"))
)


def read_points(connection: Connection, since: datetime, until: datetime,
                target_id: int) -> Sequence[Any]:
    """The target's probes started in [since, until), as DB-API tuples of POINT_COLUMNS in
    time order (ties by id): the time as iso_utc() takes it, `ok` as the driver gives it."""
    # One target at a time, so both databases walk ix_probes_target_id_started_at in order
    # and nothing is sorted (PostgreSQL would sort two days of many targets on disk once
    # they outgrow work_mem). The rows are the driver's own tuples, fetched in one call:
    # SQLAlchemy's rows cost as much again, and the one value its processors would change is
    # `ok` on SQLite (0 or 1), which the caller turns into a bool.
    result = connection.execute(_POINTS, {"target_id": target_id, "since": since,
                                          "until": until})
    try:
        rows = result.cursor.fetchall()
    finally:
        result.close()
    return rows


def iso_utc(text: str) -> str:
    """A time of read_points ("YYYY-MM-DD HH:MM:SS.ffffff", UTC) as `datetime.isoformat()`
    gives it."""
    fraction = text[19:26]
    return f"{text[:10]}T{text[11:19]}{'' if fraction == '.000000' else fraction}+00:00"


def read_latest(connection: Connection, target_id: int, until: datetime,
                limit: int) -> list[Any]:
    """The target's last `limit` probes started before `until`, oldest first."""
    rows = connection.execute(_LATEST, {"target_id": target_id, "until": until,
                                        "limit": limit}).all()
    return list(reversed(rows))


def count_outcomes(connection: Connection, since: datetime, until: datetime,
                   target_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(probes, ok) per target over [since, until): whole hours summed by the database from
    hourly rollups (as last caught up), the partial hours at the edges counted from probes."""
    counts: dict[int, list[int]] = {i: [0, 0] for i in target_ids}
    if not target_ids:
        return {}
    first_hour = floor_hour(since)
    if first_hour < since:
        first_hour += timedelta(hours=1)
    last_hour = max(floor_hour(until), first_hour)
    if first_hour < last_hour:
        rows = connection.execute(
            select(HourlyRollupRow.target_id, func.sum(HourlyRollupRow.probes),
                   func.sum(HourlyRollupRow.ok))
            .where(HourlyRollupRow.target_id.in_(target_ids),
                   HourlyRollupRow.start_at >= first_hour, HourlyRollupRow.start_at < last_hour)
            .group_by(HourlyRollupRow.target_id))
        for target_id, probes, ok in rows:
            counts[target_id][0] += int(probes or 0)
            counts[target_id][1] += int(ok or 0)
    edges = [(since, min(first_hour, until)), (max(last_hour, since), until)]
    if first_hour >= last_hour:
        edges = [(since, until)]
    for low, high in edges:
        if low >= high:
            continue
        rows = connection.execute(
            select(ProbeRow.target_id, func.count(),
                   func.sum(case((ProbeRow.ok, 1), else_=0).cast(Integer)))
            .where(ProbeRow.target_id.in_(target_ids), ProbeRow.started_at >= low,
                   ProbeRow.started_at < high, CANARY)
            .group_by(ProbeRow.target_id))
        for target_id, probes, ok in rows:
            counts[target_id][0] += int(probes or 0)
            counts[target_id][1] += int(ok or 0)
    return {i: (probes, ok) for i, (probes, ok) in counts.items()}
