"""Raw-probe retention: old probes keep every parsed column but lose their raw body and headers.

`prune(engine, raw_older_than, now)` sets response_headers_zlib and raw_response_zlib of every
probe started before the cutoff to the canonical empty encodings (3 and 1 bytes; 15 and 13
before revision 0012), which decode to `{}` and `b""` like any other blob, so `probe_records`
(`monitor probe --json`) still reads a pruned probe: its raw_response is "" and
raw_response_bytes still says how big the body was. Reports,
fingerprint history and detection read parsed columns and rollups only, and rollups are caught
up first, so aggregates and first/last seen are kept forever.

Work goes in batches of BATCH probes, a transaction each, so a writer waits at most one batch.
A run looks at the ids spanned by the probes started between the previous cutoff and this one,
plus the ids stored since the previous run (a spool drain stores old probes late): never the
whole history again.

Giving the space back differs by database:
- PostgreSQL: the emptied rows' old versions are dead tuples, reusable only once vacuumed, and
  a day's trickle of updates is far below what triggers autovacuum on a big table; a plain
  VACUUM of probes (which blocks no reads or writes) lets new probes reuse the space at once.
- SQLite: rows shrink in place, so few pages become wholly free, and new probes (higher rowids)
  are appended at the table's end, never into the holes; incremental_vacuum only returns whole
  free pages (and needs auto_vacuum set when the file was made). Only VACUUM rewrites the file
  compactly. It blocks writers while it runs (the daemon spools meanwhile) and needs the
  file's size again in free disk, so it runs only once the bytes emptied since the last one
  reach a quarter of the file: the first prune of a long history, then rarely (the standard
  canary's raw bytes are about a sixth of a probe since revision 0012, so a year's pruning
  stays below).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from monitor.store import codec, db, rollups
from monitor.store.models import ProbeRow, RetentionStateRow, TargetRow

# Probes emptied per transaction: tens of milliseconds of writing.
BATCH = 2000
# SQLite is vacuumed once the space emptied since the last VACUUM is this share of the file.
VACUUM_FRACTION = 0.25

EMPTY_HEADERS = codec.stored(codec.headers_bytes({}))
EMPTY_BODY = codec.stored(b"")
_EMPTY_BYTES = len(EMPTY_HEADERS) + len(EMPTY_BODY)
# What pruning wrote before revision 0012: still counts as pruned.
_EMPTY_V1 = (codec.compress_headers({}), codec.compress(b""))
_SIZE = func.length(ProbeRow.response_headers_zlib) + func.length(ProbeRow.raw_response_zlib)
_UNPRUNED = (((ProbeRow.raw_response_zlib != EMPTY_BODY)
              | (ProbeRow.response_headers_zlib != EMPTY_HEADERS))
             & ((ProbeRow.raw_response_zlib != _EMPTY_V1[1])
                | (ProbeRow.response_headers_zlib != _EMPTY_V1[0])))


def prune(engine: Engine, raw_older_than: datetime, now: datetime,
          batch: int = BATCH) -> dict[str, int]:
    """Empty the raw body and headers of probes started before `raw_older_than`; returns how
    many probes were folded into rollups first, pruned, the bytes emptied, and whether the
    database was vacuumed (1) or not (0)."""
    # The wall clock, not `now`: how long a missing id has been missing is real time.
    folded = rollups.catch_up(engine)
    top = rollups.settled_id(engine)
    with engine.begin() as connection:
        pruned_before, checked_id = _position(connection, now)
        target_ids = list(connection.execute(select(TargetRow.id)).scalars())
    if pruned_before is None:
        ranges = [(1, top)]  # the first run reads the whole history, once
    else:
        # Probes started since the previous cutoff, and any stored since the previous run
        # (a spool drain stores old probes late).
        ranges = [(checked_id + 1, top)]
        if raw_older_than > pruned_before:
            ranges.insert(0, _id_range(engine, target_ids, pruned_before, raw_older_than))
    pruned = freed = 0
    for low, high in ranges:
        count, size = _prune_ids(engine, low, high, raw_older_than, batch)
        pruned, freed = pruned + count, freed + size
    with engine.begin() as connection:
        connection.execute(update(RetentionStateRow).where(RetentionStateRow.id == 1).values(
            pruned_before=max(raw_older_than, pruned_before or raw_older_than),
            checked_id=max(checked_id, top),
            unreclaimed_bytes=RetentionStateRow.unreclaimed_bytes + freed,
            updated_at=now))
    vacuumed = _reclaim(engine, pruned)
    return {"folded": folded, "pruned": pruned, "freed_bytes": freed, "vacuumed": vacuumed}


def _position(connection: Connection, now: datetime) -> tuple[datetime | None, int]:
    dialect_insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    connection.execute(dialect_insert(RetentionStateRow).values(
        id=1, pruned_before=None, checked_id=0, unreclaimed_bytes=0, updated_at=now
    ).on_conflict_do_nothing(index_elements=["id"]))
    row = connection.execute(select(RetentionStateRow.pruned_before,
                                    RetentionStateRow.checked_id)
                             .where(RetentionStateRow.id == 1)).one()
    return row.pruned_before, int(row.checked_id)


def _id_range(engine: Engine, target_ids: list[int], since: datetime,
              until: datetime) -> tuple[int, int]:
    """The ids of the probes started in [since, until) span this range (found through the
    per-target started_at index); empty ranges come back as (1, 0)."""
    with engine.connect() as connection:
        low, high = connection.execute(
            select(func.min(ProbeRow.id), func.max(ProbeRow.id))
            .where(ProbeRow.target_id.in_(target_ids), ProbeRow.started_at >= since,
                   ProbeRow.started_at < until)).one()
    return (low, high) if low is not None else (1, 0)


def _prune_ids(engine: Engine, low: int, high: int, before: datetime,
               batch: int) -> tuple[int, int]:
    """Prune the probes with ids in [low, high] started before `before`. Ids follow time
    closely, so walking them in order reads each page once; walking one target at a time
    along its started_at index would read every page once per target."""
    pruned = freed = 0
    after = low - 1
    while after < high:
        query = (select(ProbeRow.id, _SIZE.label("size"))
                 .where(ProbeRow.id > after, ProbeRow.id <= high,
                        ProbeRow.started_at < before, _UNPRUNED)
                 .order_by(ProbeRow.id).limit(batch))
        with engine.begin() as connection:
            rows = connection.execute(query).all()
            count, size = _empty(connection, rows)
        pruned, freed = pruned + count, freed + size
        if len(rows) < batch:
            break
        after = rows[-1].id
    return pruned, freed


def _empty(connection: Connection, rows: Any) -> tuple[int, int]:
    """Empty these rows' raw bytes; (how many, bytes freed)."""
    if not rows:
        return 0, 0
    result = connection.execute(
        update(ProbeRow).where(ProbeRow.id.in_([row.id for row in rows]), _UNPRUNED)
        .values(response_headers_zlib=EMPTY_HEADERS, raw_response_zlib=EMPTY_BODY))
    return result.rowcount, sum(row.size for row in rows) - _EMPTY_BYTES * len(rows)


def _reclaim(engine: Engine, pruned: int) -> int:
    """Make the emptied space usable (see the module docstring); 1 if a vacuum ran."""
    if engine.dialect.name == "postgresql":
        if not pruned:
            return 0
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM probes")
        return 1
    with engine.connect() as connection:
        unreclaimed = connection.execute(select(RetentionStateRow.unreclaimed_bytes)).scalar()
    size = db.size_bytes(engine)
    if not unreclaimed or not size or unreclaimed < VACUUM_FRACTION * size:
        return 0
    with engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        autocommit.exec_driver_sql("VACUUM")
        autocommit.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        autocommit.execute(update(RetentionStateRow).where(RetentionStateRow.id == 1)
                           .values(unreclaimed_bytes=0))
    return 1
