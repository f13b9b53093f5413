"""Hourly and daily rollups per target, and all-time totals, folded incrementally from probes.

`catch_up(engine)` folds every stored probe not folded yet into the hour and the day it started
in (a probe drained late from the spool lands in its own old hour) and into its target's
totals (which also keep its newest probe and its check outcomes, for /metrics), in the
transaction that moves the watermark: a second call folds nothing, and a crash
loses a batch's fold whole or not at all. Several daemons may call it at once: each first locks
the one state row (a row lock on PostgreSQL, the write lock on SQLite), so every probe is
folded exactly once. Folding reads parsed columns only, never raw bodies, so retention may
empty those. Replays (`probes.replay_of`) move the watermark like any probe but are never
folded: rollups are the canary's numbers, and re-sending an old request must not change them.

Probes are read in id order above a watermark. PostgreSQL hands out ids when a transaction
inserts but shows the row only when it commits, so one daemon (or probe thread) can commit id
101 while id 100 is still in flight: ids missing below the watermark are kept as gaps and
looked for again at every catch_up until GAP_WAIT has passed (a rolled-back insert's id never
appears).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from monitor.store.aggregate import _MICROSECOND, Aggregate, floor_day, floor_hour, micros
from monitor.store.models import (
    CANARY,
    PROBES_WITH_FACETS,
    DailyRollupRow,
    HourlyRollupRow,
    ProbeFacetRow,
    ProbeRow,
    RollupStateRow,
    RollupTotalRow,
)
from monitor.store.schema import check_results

# Probes folded per transaction: about a tenth of a second of work, so the state lock (and on
# SQLite the write lock) is never held long.
BATCH = 2000
# Far longer than any transaction that inserts probes (one probe, or a spool batch) stays open.
GAP_WAIT = timedelta(hours=1)
# Bounds the state row and the gap query if ids are ever skipped wholesale.
MAX_GAPS = 1000

PROBE_COLUMNS = (
    ProbeRow.id, ProbeRow.target_id, ProbeRow.started_at, ProbeRow.ok, ProbeRow.error_kind,
    ProbeRow.http_status, ProbeRow.error_detail, ProbeRow.total_ms, ProbeRow.time_to_headers_ms,
    ProbeRow.time_to_first_token_ms, ProbeRow.openai_processing_ms, ProbeRow.output_tokens_per_s,
    ProbeRow.prompt_tokens, ProbeRow.completion_tokens, ProbeRow.total_tokens,
    ProbeFacetRow.system_fingerprint, ProbeFacetRow.model,
    ProbeFacetRow.ratelimit_limit_requests, ProbeFacetRow.ratelimit_limit_tokens,
    ProbeRow.ratelimit_remaining_requests, ProbeRow.ratelimit_remaining_tokens,
)
# Every stored probe, replays included, so that the watermark and its gaps follow the ids.
_READ_COLUMNS = (*PROBE_COLUMNS, ProbeRow.replay_of)
_NEW = (select(*_READ_COLUMNS).select_from(PROBES_WITH_FACETS).where(ProbeRow.id > bindparam("after"))
        .order_by(ProbeRow.id).limit(bindparam("limit")))
_LOCK = (update(RollupStateRow).where(RollupStateRow.id == 1)
         .values(updated_at=bindparam("now"))
         .returning(RollupStateRow.last_probe_id, RollupStateRow.gaps))
_TOTALS = RollupTotalRow.__table__
# Built once: constructing a statement costs more than running it on a few rows.
_MODELS: dict[str, type[HourlyRollupRow | DailyRollupRow]] = {
    "hour": HourlyRollupRow, "day": DailyRollupRow}
_STORED = {span: select(model.__table__).where(
    model.target_id.in_(bindparam("targets", expanding=True)),
    model.start_at.in_(bindparam("starts", expanding=True))) for span, model in _MODELS.items()}
_INSERT = {span: insert(model) for span, model in _MODELS.items()}
_UPDATE = {span: update(model).where(model.id == bindparam("row_id"))
           for span, model in _MODELS.items()}
_STORED_TOTALS = select(_TOTALS).where(
    _TOTALS.c.target_id.in_(bindparam("targets", expanding=True)))
_INSERT_TOTAL = insert(RollupTotalRow)
_UPDATE_TOTAL = update(RollupTotalRow).where(RollupTotalRow.target_id == bindparam("row_target_id"))
_SAVE_STATE = update(RollupStateRow).where(RollupStateRow.id == 1)
_CHECKS = select(check_results.c.probe_id, check_results.c.target_id,
                 check_results.c.check_name, check_results.c.outcome)
# New probes are a contiguous id range (a range scan of check_results' primary key); the late
# ones found in gaps are few and anywhere, so they are looked up by id.
_CHECKS_BETWEEN = _CHECKS.where(check_results.c.probe_id.between(bindparam("lo"), bindparam("hi")))
_CHECKS_OF = _CHECKS.where(check_results.c.probe_id.in_(bindparam("ids", expanding=True)))


# --- catching up ----------------------------------------------------------------------------

def catch_up(engine: Engine, batch: int = BATCH, now: datetime | None = None) -> int:
    """Fold every stored probe not folded yet into rollups; returns how many were read
    (replays included, which are read past but not folded)."""
    folded = 0
    while True:
        with engine.begin() as connection:
            done, more = _fold_batch(connection, batch, now or datetime.now(UTC))
        folded += done
        if not more:
            return folded


def behind(engine: Engine) -> bool:
    """Whether a catch_up may have anything to fold: read-only, so a caller that asks often
    (each /metrics scrape) takes no write lock while the rollups keep up."""
    with engine.connect() as connection:
        state = connection.execute(
            select(RollupStateRow.last_probe_id, RollupStateRow.gaps)
            .where(RollupStateRow.id == 1)).first()
        newest = connection.execute(select(func.max(ProbeRow.id))).scalar()
    if newest is None:
        return False
    return state is None or bool(state.gaps) or newest > state.last_probe_id


def settled_id(engine: Engine) -> int:
    """The highest probe id below which every probe is folded (or will never appear)."""
    with engine.connect() as connection:
        row = connection.execute(
            select(RollupStateRow.last_probe_id, RollupStateRow.gaps)
            .where(RollupStateRow.id == 1)).first()
    if row is None:
        return 0
    return min(lo for lo, _, _ in row.gaps) - 1 if row.gaps else int(row.last_probe_id)


def _lock(connection: Connection, now: datetime) -> tuple[int, list[list[int]]]:
    """The watermark and gaps, locked until the transaction ends. An UPDATE rather than a
    SELECT ... FOR UPDATE: on SQLite it takes the write lock up front, so two writers queue
    on busy_timeout instead of one failing to upgrade its read snapshot."""
    row = connection.execute(_LOCK, {"now": now}).first()
    if row is None:
        dialect_insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
        connection.execute(dialect_insert(RollupStateRow).values(
            id=1, last_probe_id=0, gaps=[], updated_at=now
        ).on_conflict_do_nothing(index_elements=["id"]))
        row = connection.execute(_LOCK, {"now": now}).one()
    return int(row.last_probe_id), [list(gap) for gap in row.gaps]


def _fold_batch(connection: Connection, batch: int, now: datetime) -> tuple[int, bool]:
    if connection.dialect.name == "postgresql":
        # Safe to lose in a crash: rollups and the watermark commit together, so a lost
        # commit is simply folded again; no need to wait for the WAL flush.
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
    last, gaps = _lock(connection, now)
    rows = connection.execute(_NEW, {"after": last, "limit": batch}).all()
    late: Sequence[Any] = []
    if gaps:
        late = connection.execute(select(*_READ_COLUMNS).select_from(PROBES_WITH_FACETS).where(
            or_(*[ProbeRow.id.between(lo, hi) for lo, hi, _ in gaps]))).all()
    new_ids = [row.id for row in rows]
    still_missing = _next_gaps(gaps, sorted(row.id for row in late), last, new_ids,
                               micros(now))
    canaries = [row for row in (*rows, *late) if row.replay_of is None]
    if canaries:
        _fold(connection, canaries, _check_outcomes(connection, rows, late,
                                                    {row.id for row in canaries}))
    if rows or still_missing != gaps:
        connection.execute(_SAVE_STATE, {"last_probe_id": new_ids[-1] if new_ids else last,
                                         "gaps": still_missing, "updated_at": now})
    return len(rows) + len(late), len(rows) == batch


def _next_gaps(gaps: list[list[int]], found: list[int], last: int, new_ids: list[int],
               now_us: int) -> list[list[int]]:
    """Gaps minus the ids found in them and minus the expired ones, plus the ids skipped
    between the newly read ones."""
    expiry = now_us - GAP_WAIT // _MICROSECOND
    kept = []
    for lo, hi, noticed in gaps:
        if noticed < expiry:
            continue
        start = lo
        for probe_id in found:
            if start <= probe_id <= hi:
                if probe_id > start:
                    kept.append([start, probe_id - 1, noticed])
                start = probe_id + 1
        if start <= hi:
            kept.append([start, hi, noticed])
    previous = last
    for probe_id in new_ids:
        if probe_id > previous + 1:
            kept.append([previous + 1, probe_id - 1, now_us])
        previous = probe_id
    return kept[-MAX_GAPS:]


def _check_outcomes(connection: Connection, rows: Sequence[Any], late: Sequence[Any],
                    canary_ids: set[int]) -> list[tuple[int, str, str]]:
    """(target id, check, outcome) of each check of the canaries being folded: a probe's
    outcomes are stored in the transaction that stores it, so they are there when it is."""
    found: list[Any] = []
    if rows:
        found += connection.execute(_CHECKS_BETWEEN, {"lo": rows[0].id, "hi": rows[-1].id}).all()
    if late:
        found += connection.execute(_CHECKS_OF, {"ids": [row.id for row in late]}).all()
    return [(target_id, check, outcome) for probe_id, target_id, check, outcome in found
            if probe_id in canary_ids]


def _fold(connection: Connection, probes: Sequence[Any],
          checks: Sequence[tuple[int, str, str]]) -> None:
    """Add the probes to their hours, days and targets' totals, and their check outcomes to
    the totals: the deltas are built in memory (an hour's probes into the hour, hours into
    days, days into totals), then each touched row is read, merged and written back once."""
    hours: dict[tuple[int, datetime], Aggregate] = {}
    for probe in sorted(probes, key=lambda p: p.id):
        key = (probe.target_id, floor_hour(probe.started_at))
        hours.setdefault(key, Aggregate()).add(probe)
    days: dict[tuple[int, datetime], Aggregate] = {}
    for (target_id, hour), delta in hours.items():
        days.setdefault((target_id, floor_day(hour)), Aggregate()).merge(delta)
    totals: dict[int, Aggregate] = {}
    for (target_id, _), delta in days.items():
        totals.setdefault(target_id, Aggregate()).merge(delta)
    for target_id, check, outcome in checks:
        totals[target_id].add_check(check, outcome)

    for span, deltas in (("hour", hours), ("day", days)):
        stored = connection.execute(_STORED[span], {
            "targets": list({t for t, _ in deltas}), "starts": list({s for _, s in deltas})})
        updates = []
        for row in stored:
            found = (row.target_id, row.start_at)
            if found in deltas:
                merged = Aggregate.from_row(row)
                merged.merge(deltas.pop(found))
                updates.append({"row_id": row.id, **merged.row_values()})
        if updates:
            connection.execute(_UPDATE[span], updates)
        if deltas:
            connection.execute(_INSERT[span], [
                {"target_id": target_id, "start_at": start, **delta.row_values()}
                for (target_id, start), delta in deltas.items()])

    stored_totals = connection.execute(_STORED_TOTALS, {"targets": list(totals)}).all()
    total_updates = []
    for row in stored_totals:
        merged = Aggregate.from_total(row)
        merged.merge(totals.pop(row.target_id))
        total_updates.append({"row_target_id": row.target_id, **merged.total_values()})
    if total_updates:
        connection.execute(_UPDATE_TOTAL, total_updates)
    if totals:
        connection.execute(_INSERT_TOTAL, [
            {"target_id": target_id, **delta.total_values()}
            for target_id, delta in totals.items()])


# --- reading --------------------------------------------------------------------------------


def read_rollups(connection: Connection, span: str, since: datetime, until: datetime,
                 target_ids: Sequence[int]) -> Iterator[tuple[int, datetime, Aggregate]]:
    """(target id, bucket start, aggregate) of the targets' hours or days (`span`) starting in
    [since, until)."""
    model = _MODELS[span]
    query = select(model.__table__).where(
        model.target_id.in_(target_ids), model.start_at >= since, model.start_at < until)
    for row in connection.execute(query):
        yield row.target_id, row.start_at, Aggregate.from_row(row)


def read_probes(connection: Connection, since: datetime, until: datetime,
                target_ids: Sequence[int]) -> Iterator[Any]:
    """The targets' canary probes (no replays) started in [since, until), as rows of
    PROBE_COLUMNS in id order."""
    query = select(*PROBE_COLUMNS).select_from(PROBES_WITH_FACETS).where(
        CANARY, ProbeRow.target_id.in_(target_ids), ProbeRow.started_at >= since,
        ProbeRow.started_at < until).order_by(ProbeRow.id)
    yield from connection.execute(query)


def read_totals(connection: Connection) -> dict[int, Aggregate]:
    """Every target's all-time totals, by target id."""
    return {row.target_id: Aggregate.from_total(row)
            for row in connection.execute(select(_TOTALS))}
