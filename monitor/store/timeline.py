"""Probe-level reads for short report ranges and the dashboard's status overview: every probe
of a range as a chart point, each target's latest probes (the heartbeat bar), and probe and
success counts over long windows from hourly rollups plus the raw probes at their edges.

Replays re-send stored requests on purpose; they are not canary traffic, so none of these
reads count them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    FunctionElement,
    Integer,
    Select,
    String,
    Text,
    bindparam,
    case,
    cast,
    func,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles

from monitor.store.aggregate import floor_hour
from monitor.store.models import (
    CANARY,
    PROBES_WITH_FACETS,
    HourlyRollupRow,
    ProbeFacetRow,
    ProbeRow,
)


class iso_utc(FunctionElement[str]):
    """A UtcMicros column (probes.started_at) as `datetime.isoformat()` writes it
    ("2026-11-26T12:00:04.120331+00:00", no fraction when it is zero), made by the database: a
    point's time is only ever shown as text, and parsing 28,800 of them into datetimes to
    format them back was a third of the cost of a day of points. SQLite formats the integer
    microseconds UtcMicros stores; PostgreSQL the timestamptz."""

    type = String()
    name = "iso_utc"
    inherit_cache = True


@compiles(iso_utc)
def _formatted_micros(element: iso_utc, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    # SQLite's % and / truncate towards zero: the fraction is taken modulo, so that a time
    # before 1970 splits as Python's floor division would.
    fraction = f"(({column} % 1000000 + 1000000) % 1000000)"
    return (f"strftime('%Y-%m-%dT%H:%M:%S', ({column} - {fraction}) / 1000000, 'unixepoch') || "
            f"CASE WHEN {fraction} = 0 THEN '+00:00' "
            f"ELSE printf('.%06d+00:00', {fraction}) END")


@compiles(iso_utc, "postgresql")
def _formatted_text(element: iso_utc, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return (f"replace(to_char({column} AT TIME ZONE 'UTC', "
            f"'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), '.000000+', '+')")


class headroom(FunctionElement[float]):
    """remaining / limit clamped to [0, 1] and rounded half up to 4 places, made by the
    database (as aggregate.headroom and the report's rounding would, but for a tie in the
    fifth place); null when either is missing or the limit is 0. Two per point, so the client
    calls nothing per probe."""

    type = Float()
    name = "headroom"
    inherit_cache = True


@compiles(headroom)
def _headroom(element: headroom, compiler: Any, **kw: Any) -> str:
    remaining, limit = (compiler.process(c, **kw) for c in element.clauses)
    # SQLite's min() and max() of several values are null if one is, and it has floor() only
    # when built with its math functions: CAST truncates, which is floor for x + 0.5 >= 0 (a
    # ratio under that is clamped to 0 either way).
    rounded = f"CAST(CAST({remaining} AS REAL) / NULLIF({limit}, 0) * 10000 + 0.5 AS INTEGER)"
    return f"max(0.0, min(1.0, {rounded} / 10000.0))"


@compiles(headroom, "postgresql")
def _headroom_double(element: headroom, compiler: Any, **kw: Any) -> str:
    remaining, limit = (compiler.process(c, **kw) for c in element.clauses)
    # GREATEST and LEAST skip nulls, so the clamp is a CASE.
    ratio = f"(CAST({remaining} AS DOUBLE PRECISION) / NULLIF({limit}, 0))"
    return (f"CASE WHEN {ratio} <= 0 THEN 0.0 WHEN {ratio} >= 1 THEN 1.0 "
            f"ELSE floor({ratio} * 10000 + 0.5) / 10000 END")


# A probe point's fields (docs/report.md, series of bucket "probe"), in the order read.
PROBE_POINT_FIELDS = ("t", "probe_id", "ok", "error_kind", "http_status", "total_ms",
                      "processing_ms", "fingerprint", "model", "headroom_requests",
                      "headroom_tokens")


def _points(measured: Callable[[Any], Any]) -> Select[Any]:
    return (
        select(iso_utc(ProbeRow.started_at), ProbeRow.id, ProbeRow.ok, ProbeRow.error_kind,
               ProbeRow.http_status, measured(ProbeRow.total_ms),
               measured(ProbeRow.openai_processing_ms),
               ProbeFacetRow.system_fingerprint, ProbeFacetRow.model,
               headroom(ProbeRow.ratelimit_remaining_requests,
                        ProbeFacetRow.ratelimit_limit_requests),
               headroom(ProbeRow.ratelimit_remaining_tokens,
                        ProbeFacetRow.ratelimit_limit_tokens))
        .select_from(PROBES_WITH_FACETS)
        .where(ProbeRow.target_id == bindparam("target_id"),
               ProbeRow.started_at >= bindparam("since"),
               ProbeRow.started_at < bindparam("until"), CANARY)
        .order_by(ProbeRow.started_at, ProbeRow.id)
    )


_POINTS = _points(lambda column: column)
# psycopg's binary rows give a real as its exact float32 (471.5149230957031); through its text
# it is the shortest decimal every other read returns (471.51492, schema.Float32).
_BINARY_POINTS = _points(lambda column: cast(cast(column, Text), Float))
# Walks ix_probes_target_id_started_at backwards from `until` and stops after `limit` rows.
# A heartbeat's fields (docs/report.md), in the order read.
BEAT_FIELDS = ("probe_id", "t", "ok", "total_ms", "http_status", "error_kind", "fingerprint",
               "model")
_LATEST = (
    select(ProbeRow.id, iso_utc(ProbeRow.started_at), ProbeRow.ok, ProbeRow.total_ms,
           ProbeRow.http_status, ProbeRow.error_kind, ProbeFacetRow.system_fingerprint,
           ProbeFacetRow.model)
    .select_from(PROBES_WITH_FACETS)
    .where(ProbeRow.target_id == bindparam("target_id"),
           ProbeRow.started_at < bindparam("until"), CANARY)
    .order_by(ProbeRow.started_at.desc(), ProbeRow.id.desc()).limit(bindparam("limit"))
)


def read_points(connection: Connection, since: datetime, until: datetime,
                target_id: int) -> dict[str, list[Any]]:
    """The target's probes started in [since, until) as columns: for each of
    PROBE_POINT_FIELDS a list, in time order (ties by id)."""
    # One target at a time, so both databases walk ix_probes_target_id_started_at in order
    # and nothing is sorted (PostgreSQL would sort two days of many targets on disk once
    # they outgrow work_mem). Everything a point shows is computed by the query, so the rows
    # are the driver's own tuples, fetched in one call and turned into columns by zip: no
    # SQLAlchemy row (it costs as much as the fetch) and no Python call per probe. The one
    # value its processors would change is `ok` on SQLite (0 or 1), made a bool below.
    parameters = {"target_id": target_id, "since": since, "until": until}
    rows: Sequence[tuple[Any, ...]]
    if connection.dialect.driver == "psycopg":
        rows = _binary_rows(connection, parameters)
    else:
        result = connection.execute(_POINTS, parameters)
        try:
            rows = result.cursor.fetchall()
        finally:
            result.close()
    columns = dict(zip(PROBE_POINT_FIELDS, map(list, zip(*rows, strict=True)), strict=True)
                   ) if rows else {field: [] for field in PROBE_POINT_FIELDS}
    columns["ok"] = list(map(bool, columns["ok"]))
    return columns


def _binary_rows(connection: Connection, parameters: dict[str, Any]) -> Sequence[tuple[Any, ...]]:
    """_POINTS on PostgreSQL, the rows in binary: numbers come as stored instead of written as
    text for psycopg to parse back, ~10 ms less of the client's CPU for a day of 20 targets.
    SQLAlchemy has no option for it, so this asks psycopg itself, inside the connection's
    transaction. `since` and `until` are aware UTC datetimes (build_report's), which psycopg
    sends as timestamptz: UtcDateTime's bind processing would change nothing."""
    driver: Any = connection.connection.driver_connection
    with driver.cursor(binary=True) as cursor:
        rows: Sequence[tuple[Any, ...]] = cursor.execute(
            _compiled(connection.dialect), parameters).fetchall()
    return rows


@cache
def _compiled(dialect: Dialect) -> str:
    return str(_BINARY_POINTS.compile(dialect=dialect))


def read_latest(connection: Connection, target_id: int, until: datetime,
                limit: int) -> list[dict[str, Any]]:
    """The target's last `limit` probes started before `until`, oldest first, each a dict of
    BEAT_FIELDS."""
    rows = connection.execute(_LATEST, {"target_id": target_id, "until": until,
                                        "limit": limit}).all()
    return [dict(zip(BEAT_FIELDS, row, strict=True)) for row in reversed(rows)]


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
