"""Hourly and daily rollups per target, and all-time totals, folded incrementally from probes.

`catch_up(engine)` folds every stored probe not folded yet into the hour and the day it started
in (a probe drained late from the spool lands in its own old hour) and into its target's
totals, in the transaction that moves the watermark: a second call folds nothing, and a crash
loses a batch's fold whole or not at all. Several daemons may call it at once: each first locks
the one state row (a row lock on PostgreSQL, the write lock on SQLite), so every probe is
folded exactly once. Folding reads parsed columns only, never raw bodies, so retention may
empty those.

Probes are read in id order above a watermark. PostgreSQL hands out ids when a transaction
inserts but shows the row only when it commits, so one daemon (or probe thread) can commit id
101 while id 100 is still in flight: ids missing below the watermark are kept as gaps and
looked for again at every catch_up until GAP_WAIT has passed (a rolled-back insert's id never
appears).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from monitor.sketch import Sketch
from monitor.store.models import (
    DailyRollupRow,
    HourlyRollupRow,
    ProbeRow,
    RollupStateRow,
    RollupTotalRow,
)

# Probes folded per transaction: about a tenth of a second of work, so the state lock (and on
# SQLite the write lock) is never held long.
BATCH = 2000
# Far longer than any transaction that inserts probes (one probe, or a spool batch) stays open.
GAP_WAIT = timedelta(hours=1)
# Bounds the state row and the gap query if ids are ever skipped wholesale.
MAX_GAPS = 1000

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Each sketch and the probe column it summarizes (successful probes only, as the latency
# detectors judge them); totals keep the latency ones, which /metrics exposes.
PHASES = {
    "total": "total_ms",
    "headers": "time_to_headers_ms",
    "ttft": "time_to_first_token_ms",
    "processing": "openai_processing_ms",
    "tokens_per_s": "output_tokens_per_s",
}
TOTAL_PHASES = ("total", "headers", "ttft", "processing")
_SKETCH_COLUMN = {
    "total": "total_ms_sketch",
    "headers": "headers_ms_sketch",
    "ttft": "ttft_ms_sketch",
    "processing": "processing_ms_sketch",
    "tokens_per_s": "tokens_per_s_sketch",
}

# What folding reads of a probe (reports read raw probes the same way at a range's edges).
PROBE_COLUMNS = (
    ProbeRow.id, ProbeRow.target_id, ProbeRow.started_at, ProbeRow.ok, ProbeRow.error_kind,
    ProbeRow.http_status, ProbeRow.error_detail, ProbeRow.total_ms, ProbeRow.time_to_headers_ms,
    ProbeRow.time_to_first_token_ms, ProbeRow.openai_processing_ms, ProbeRow.output_tokens_per_s,
    ProbeRow.prompt_tokens, ProbeRow.completion_tokens, ProbeRow.total_tokens,
    ProbeRow.system_fingerprint, ProbeRow.model, ProbeRow.ratelimit_limit_requests,
    ProbeRow.ratelimit_limit_tokens, ProbeRow.ratelimit_remaining_requests,
    ProbeRow.ratelimit_remaining_tokens,
)
_NEW = (select(*PROBE_COLUMNS).where(ProbeRow.id > bindparam("after"))
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


def micros(at: datetime) -> int:
    return (at - EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return EPOCH + value * _MICROSECOND


def floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def floor_day(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def headroom(remaining: int | None, limit: int | None) -> float | None:
    """remaining / limit in [0, 1]; None unless both were sent."""
    if remaining is None or limit is None or limit <= 0:
        return None
    return min(max(remaining / limit, 0.0), 1.0)


def _lowest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


@dataclass(frozen=True)
class Limits:
    """The rate-limit values of the newest probe that carried any."""

    at: datetime
    limit_requests: int | None
    limit_tokens: int | None
    remaining_requests: int | None
    remaining_tokens: int | None


@dataclass(frozen=True)
class LastError:
    at: datetime
    kind: str | None
    status: int | None
    detail: str | None


@dataclass
class Aggregate:
    """What a rollup row holds, as an accumulator: built from probes or stored rows, merged
    with others (an hour into its day; the rows of a report's range into one)."""

    probes: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # Only the phases measured: most targets never measure ttft or tokens/s.
    sketches: dict[str, Sketch] = field(default_factory=dict)
    # value -> [count, first seen, last seen], times in microseconds since the epoch
    fingerprints: dict[str, list[int]] = field(default_factory=dict)
    models: dict[str, list[int]] = field(default_factory=dict)
    limits: Limits | None = None
    min_headroom_requests: float | None = None
    min_headroom_tokens: float | None = None
    last_error: LastError | None = None

    def add(self, probe: Any) -> None:
        """Fold one probe (a row of PROBE_COLUMNS). Probes come in id order: of two at the
        same instant, the later-stored one is the newer."""
        at = probe.started_at
        self.probes += 1
        if probe.ok:
            self.ok += 1
            self.prompt_tokens += probe.prompt_tokens or 0
            self.completion_tokens += probe.completion_tokens or 0
            self.total_tokens += probe.total_tokens or 0
            for phase, column in PHASES.items():
                value = getattr(probe, column)
                if value is not None:
                    self._sketch_for(phase).add(value)
        else:
            kind = probe.error_kind or "unknown"
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if self.last_error is None or at >= self.last_error.at:
                self.last_error = LastError(at, probe.error_kind, probe.http_status,
                                            probe.error_detail)
        if probe.system_fingerprint is not None:
            _seen(self.fingerprints, probe.system_fingerprint, micros(at))
        if probe.model is not None:
            _seen(self.models, probe.model, micros(at))
        limits = Limits(at, probe.ratelimit_limit_requests, probe.ratelimit_limit_tokens,
                        probe.ratelimit_remaining_requests, probe.ratelimit_remaining_tokens)
        if any(v is not None for v in (limits.limit_requests, limits.limit_tokens,
                                       limits.remaining_requests, limits.remaining_tokens)):
            if self.limits is None or at >= self.limits.at:
                self.limits = limits
            self.min_headroom_requests = _lowest(
                self.min_headroom_requests, headroom(limits.remaining_requests,
                                                     limits.limit_requests))
            self.min_headroom_tokens = _lowest(
                self.min_headroom_tokens, headroom(limits.remaining_tokens, limits.limit_tokens))

    def merge(self, other: Aggregate) -> None:
        self.probes += other.probes
        self.ok += other.ok
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        for phase, sketch in other.sketches.items():
            if sketch:
                self._sketch_for(phase).merge(sketch)
        for mine, theirs in ((self.fingerprints, other.fingerprints),
                             (self.models, other.models)):
            for value, (count, first, last) in theirs.items():
                entry = mine.get(value)
                if entry is None:
                    mine[value] = [count, first, last]
                else:
                    entry[0] += count
                    entry[1] = min(entry[1], first)
                    entry[2] = max(entry[2], last)
        if other.limits is not None and (self.limits is None
                                         or other.limits.at >= self.limits.at):
            self.limits = other.limits
        self.min_headroom_requests = _lowest(self.min_headroom_requests,
                                             other.min_headroom_requests)
        self.min_headroom_tokens = _lowest(self.min_headroom_tokens, other.min_headroom_tokens)
        if other.last_error is not None and (self.last_error is None
                                             or other.last_error.at >= self.last_error.at):
            self.last_error = other.last_error

    def sketch(self, phase: str) -> Sketch:
        """The phase's sketch; an empty one if nothing was measured."""
        return self.sketches.get(phase) or Sketch()

    def _sketch_for(self, phase: str) -> Sketch:
        sketch = self.sketches.get(phase)
        if sketch is None:
            sketch = self.sketches[phase] = Sketch()
        return sketch

    @classmethod
    def from_row(cls, row: Any) -> Aggregate:
        """From a stored rollups row. It takes the row's decoded JSON as its own (merging
        changes it): reports read a year of rows, and copying them would be a tenth of that."""
        aggregate = cls(
            probes=row.probes, ok=row.ok, errors=row.errors,
            prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
            total_tokens=row.total_tokens, sketches=_sketches(row, PHASES),
            fingerprints=row.fingerprints, models=row.models,
            min_headroom_requests=row.min_headroom_requests,
            min_headroom_tokens=row.min_headroom_tokens,
        )
        if row.limits_at is not None:
            aggregate.limits = Limits(row.limits_at, row.limit_requests, row.limit_tokens,
                                      row.remaining_requests, row.remaining_tokens)
        if row.last_error_at is not None:
            aggregate.last_error = LastError(row.last_error_at, row.last_error_kind,
                                             row.last_error_status, row.last_error_detail)
        return aggregate

    @classmethod
    def from_total(cls, row: Any) -> Aggregate:
        """From a stored rollup_totals row: outcomes and latency sketches only."""
        return cls(probes=row.probes, ok=row.ok, errors=row.errors,
                   sketches=_sketches(row, TOTAL_PHASES))

    def row_values(self) -> dict[str, Any]:
        limits, error = self.limits, self.last_error
        return {
            "probes": self.probes, "ok": self.ok, "errors": self.errors,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            **self._sketch_values(PHASES),
            "fingerprints": self.fingerprints, "models": self.models,
            "limits_at": limits.at if limits else None,
            "limit_requests": limits.limit_requests if limits else None,
            "limit_tokens": limits.limit_tokens if limits else None,
            "remaining_requests": limits.remaining_requests if limits else None,
            "remaining_tokens": limits.remaining_tokens if limits else None,
            "min_headroom_requests": self.min_headroom_requests,
            "min_headroom_tokens": self.min_headroom_tokens,
            "last_error_at": error.at if error else None,
            "last_error_kind": error.kind if error else None,
            "last_error_status": error.status if error else None,
            "last_error_detail": error.detail if error else None,
        }

    def total_values(self) -> dict[str, Any]:
        return {"probes": self.probes, "ok": self.ok, "errors": self.errors,
                **self._sketch_values(TOTAL_PHASES)}

    def _sketch_values(self, phases: Iterable[str]) -> dict[str, bytes | None]:
        # An empty sketch is stored as NULL: most targets never measure ttft or tokens/s.
        return {_SKETCH_COLUMN[p]: self.sketch(p).to_bytes() if self.sketches.get(p) else None
                for p in phases}


def _sketches(row: Any, phases: Iterable[str]) -> dict[str, Sketch]:
    blobs = ((phase, getattr(row, _SKETCH_COLUMN[phase])) for phase in phases)
    return {phase: Sketch.from_bytes(blob) for phase, blob in blobs if blob is not None}


def _seen(table: dict[str, list[int]], value: str, at: int) -> None:
    entry = table.get(value)
    if entry is None:
        table[value] = [1, at, at]
    else:
        entry[0] += 1
        entry[1] = min(entry[1], at)
        entry[2] = max(entry[2], at)


# --- catching up ----------------------------------------------------------------------------


def catch_up(engine: Engine, batch: int = BATCH, now: datetime | None = None) -> int:
    """Fold every stored probe not folded yet into rollups; returns how many were folded."""
    folded = 0
    while True:
        with engine.begin() as connection:
            done, more = _fold_batch(connection, batch, now or datetime.now(UTC))
        folded += done
        if not more:
            return folded


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
        late = connection.execute(select(*PROBE_COLUMNS).where(
            or_(*[ProbeRow.id.between(lo, hi) for lo, hi, _ in gaps]))).all()
    new_ids = [row.id for row in rows]
    still_missing = _next_gaps(gaps, sorted(row.id for row in late), last, new_ids,
                               micros(now))
    if rows or late:
        _fold(connection, [*rows, *late])
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


def _fold(connection: Connection, probes: Sequence[Any]) -> None:
    """Add the probes to their hours, days and targets' totals: the deltas are built in
    memory (an hour's probes into the hour, hours into days, days into totals), then each
    touched row is read, merged and written back once."""
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
    """The targets' probes started in [since, until), as rows of PROBE_COLUMNS in id order."""
    query = select(*PROBE_COLUMNS).where(
        ProbeRow.target_id.in_(target_ids), ProbeRow.started_at >= since,
        ProbeRow.started_at < until).order_by(ProbeRow.id)
    yield from connection.execute(query)


def read_totals(connection: Connection) -> dict[int, Aggregate]:
    """Every target's all-time totals, by target id."""
    return {row.target_id: Aggregate.from_total(row)
            for row in connection.execute(select(_TOTALS))}
