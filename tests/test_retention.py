"""Retention empties old probes' raw bodies and headers in batches, keeps every parsed column
and every aggregate, and leaves pruned probes readable."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, func, select

from monitor.health import build_report
from monitor.store import db, rollups
from monitor.store.models import ProbeRow, RetentionStateRow
from monitor.store.probe_reads import probe_records
from monitor.store.records import Recorder
from monitor.store.retention import EMPTY_BODY, EMPTY_HEADERS, prune
from tests.test_rollups import START, store, varied_history

CUTOFF = START + timedelta(days=2, minutes=7)
NOW = START + timedelta(days=40)


def pruned_ids(engine: Engine) -> set[int]:
    with engine.connect() as connection:
        return set(connection.execute(select(ProbeRow.id).where(
            ProbeRow.raw_response_zlib == EMPTY_BODY,
            ProbeRow.response_headers_zlib == EMPTY_HEADERS)).scalars())


def started_before(engine: Engine, cutoff: object) -> set[int]:
    with engine.connect() as connection:
        return set(connection.execute(select(ProbeRow.id).where(
            ProbeRow.started_at < cutoff, ProbeRow.ok.is_(True))).scalars())


def test_old_probes_lose_raw_bytes_and_keep_everything_else(engine: Engine) -> None:
    results = varied_history(300)  # 100 hours
    store(engine, results)
    old = started_before(engine, CUTOFF)
    rollups.catch_up(engine)
    report_before = build_report(engine, START, NOW, None, NOW)
    records_before = {r["id"]: r for r in probe_records(engine, sorted(old))}

    counts = prune(engine, CUTOFF, NOW, batch=16)

    # Successful probes carry a body and headers; most failed ones never got any.
    assert old <= pruned_ids(engine)
    assert not pruned_ids(engine) & started_before(engine, NOW) - started_before(
        engine, CUTOFF)
    assert counts["folded"] == 0
    assert counts["pruned"] >= len(old)
    assert counts["freed_bytes"] > 0
    assert build_report(engine, START, NOW, None, NOW) == report_before
    for record in probe_records(engine, sorted(old)):
        assert record["raw_response"] == ""
        assert record["response_headers"] == {}
        before = records_before[record["id"]]
        assert record["raw_response_bytes"] == before["raw_response_bytes"] > 0
        assert {k: v for k, v in record.items() if k not in ("raw_response",
                                                             "response_headers")} == {
            k: v for k, v in before.items() if k not in ("raw_response", "response_headers")}


def test_pruning_again_finds_nothing_and_a_later_cutoff_only_the_new_range(
        engine: Engine) -> None:
    store(engine, varied_history(300))
    first = prune(engine, CUTOFF, NOW)
    assert prune(engine, CUTOFF, NOW)["pruned"] == 0
    later = prune(engine, CUTOFF + timedelta(days=1), NOW)
    assert 0 < later["pruned"] < first["pruned"] * 1.5
    assert started_before(engine, CUTOFF + timedelta(days=1)) <= pruned_ids(engine)


def test_a_probe_drained_late_is_pruned_by_the_next_run(engine: Engine) -> None:
    results = [r for r in varied_history(300) if r.ok]
    late, rest = results[0], results[1:]
    store(engine, rest)
    prune(engine, CUTOFF, NOW)
    Recorder(engine).save(late)  # started long before the cutoff, stored after the run
    counts = prune(engine, CUTOFF, NOW)
    assert (counts["folded"], counts["pruned"]) == (1, 1)
    assert started_before(engine, CUTOFF) <= pruned_ids(engine)


def test_pruning_a_large_share_vacuums_sqlite_and_the_file_shrinks(
        engine: Engine, database_url: str) -> None:
    store(engine, varied_history(1200, step=timedelta(minutes=2)))
    if engine.dialect.name == "sqlite":
        # Realistic body sizes: the test history's bodies are small, so make them bigger.
        with engine.begin() as connection:
            connection.execute(ProbeRow.__table__.update().values(
                raw_response_zlib=func.randomblob(1500)))
        path = Path(db.make_url(database_url).database or "")
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        size_before = os.path.getsize(path)
    counts = prune(engine, NOW, NOW)
    assert counts["vacuumed"] == 1
    with engine.connect() as connection:
        assert connection.execute(select(RetentionStateRow.unreclaimed_bytes)).scalar() == (
            0 if engine.dialect.name == "sqlite" else counts["freed_bytes"])
    if engine.dialect.name == "sqlite":
        assert os.path.getsize(path) < size_before / 3
