"""Migrations are the schema's truth: they build an empty database on both engines, agree with
the models, and every command refuses a database that is behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table
from sqlalchemy.types import TypeEngine

from monitor.domain import ProbeResult
from monitor.errors import SchemaNotAtHead
from monitor.store import codec, db
from monitor.store.models import (
    PROBE_FIELDS,
    PROBES_WITH_FACETS,
    Base,
    Json,
    ProbeFacetRow,
    ProbeRow,
    UtcDateTime,
)
from monitor.store.records import Recorder, _probe_values
from monitor.store.retention import EMPTY_BODY, EMPTY_HEADERS
from tests.conftest import POSTGRES_URL, _postgres_admin
from tests.test_codec import varied


def save_then(engine: Engine, result: ProbeResult) -> int:
    """Store a probe as the code of the database's revision did: only the columns its probes
    table has (today's Recorder writes columns added since), the uid and times as text (as
    before 0012), the upstream ids and start times as text (as before 0013), the facet values
    as columns of probes (as before 0014)."""
    recorder = Recorder(engine)
    columns = {column["name"] for column in inspect(engine).get_columns("probes")}
    revision = db.current_revision(engine) or ""
    as_before: dict[str, TypeEngine[Any]] = {}
    if revision < "0013":
        as_before.update(x_request_id=Text(), response_id=Text(), started_at=UtcDateTime())
    if revision < "0012":
        as_before.update(uid=String(32), response_created_at=UtcDateTime())
    probes = Table("probes", MetaData(), *[
        Column(c.name, as_before.get(c.name, c.type), primary_key=c.primary_key)
        for c in (*PROBE_FIELDS, ProbeRow.__table__.c.facet_id) if c.name in columns])
    with engine.begin() as connection:
        target = recorder._target_id(connection, result.target_name)
        config = recorder._config_id(connection, result.target_name, target,
                                     result.config_hash, {})
        payload = recorder._payload_id(connection, result.request_payload)
        values = _probe_values(result, target, config, payload)
        return int(connection.execute(
            insert(probes).returning(probes.c.id),
            {k: v for k, v in values.items() if k in columns}).scalar_one())


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"monitor_empty_{uuid.uuid4().hex[:10]}"
    with _postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    with _postgres_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_builds_an_empty_database_that_matches_the_models(empty_url: str) -> None:
    db.upgrade(empty_url)
    engine = db.open_store(empty_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            tables = set(inspect(connection).get_table_names())
        assert {t.name for t in Base.metadata.sorted_tables} <= tables
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(empty_url: str) -> None:
    db.upgrade(empty_url)
    command.downgrade(db.alembic_config(empty_url), "base")
    engine = db.create(empty_url)
    assert db.current_revision(engine) is None
    db.upgrade(empty_url)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def test_the_schema_gate_reads_revisions_as_alembic_does(empty_url: str) -> None:
    """db reads the head from the revision files and the current revision from the table
    itself, so that opening the store does not import Alembic; both agree with Alembic's own."""
    script = ScriptDirectory.from_config(db.alembic_config(empty_url))
    assert db.head_revision() == script.get_current_head()
    engine = db.create(empty_url)
    try:
        for revision in ("0001", script.get_current_head()):
            assert revision is not None
            db.upgrade(empty_url, revision)
            with engine.connect() as connection:
                expected = MigrationContext.configure(connection).get_current_revision()
            assert db.current_revision(engine) == expected == revision
    finally:
        engine.dispose()


def test_a_database_behind_head_is_refused_with_the_command_to_run(empty_url: str) -> None:
    with pytest.raises(SchemaNotAtHead) as caught:
        db.open_store(empty_url)
    assert "has no monitor schema" in str(caught.value)
    assert "run `monitor db upgrade`" in str(caught.value)


def test_every_index_and_constraint_is_named() -> None:
    for table in Base.metadata.sorted_tables:
        for constraint in table.constraints:
            assert constraint.name, f"{table.name} has an unnamed {type(constraint).__name__}"
        for index in table.indexes:
            assert index.name


def test_0007_keeps_every_row_and_then_takes_unbounded_values(empty_url: str) -> None:
    """Retyping probes (a table copy on SQLite) keeps the probes and the rows that point at
    them, whose ON DELETE actions must not fire; afterwards a 300-character model is taken."""
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from monitor.store.models import ReplayItemRow, ReplayRunRow, TargetRow
    from tests.test_store import result

    db.upgrade(empty_url, "0006")
    engine = db.create(empty_url)
    try:
        recorder = Recorder(engine)
        original = save_then(engine, result())
        now = datetime.now(UTC)
        target = recorder.target_id("gpt-4o")
        with engine.begin() as connection:
            run = connection.execute(insert(ReplayRunRow).returning(ReplayRunRow.id), {
                "key": "k" * 64, "open_key": None, "source_target_id": target,
                "destination_target_id": target, "items": 1, "created_at": now}).scalar_one()
            payload = connection.execute(
                select(ProbeRow.request_payload_id).where(ProbeRow.id == original)).scalar_one()
            connection.execute(insert(ReplayItemRow), {
                "run_id": run, "probe_id": original, "request_payload_id": payload,
                "position": 0, "state": "done", "rate_limited": 0, "replay_probe_id": original})
        db.upgrade(empty_url)
        with engine.connect() as connection:
            assert connection.execute(select(func.count(ProbeRow.id))).scalar_one() == 1
            item = connection.execute(select(ReplayItemRow.probe_id,
                                             ReplayItemRow.replay_probe_id)).one()
            assert tuple(item) == (original, original)
            assert connection.execute(select(func.count(TargetRow.id))).scalar_one() == 1
        long = Recorder(engine).save(result(model="m" * 300, system_fingerprint="f" * 300))
        with engine.connect() as connection:
            assert connection.execute(
                select(ProbeFacetRow.model).select_from(PROBES_WITH_FACETS)
                .where(ProbeRow.id == long)).scalar_one() == "m" * 300
    finally:
        engine.dispose()


def test_0008_gives_old_skips_their_kind_and_refolds_rollups_that_counted_replays(
    empty_url: str,
) -> None:
    """Before 0008, rollups folded replays and skipped slots had a reason only: afterwards
    each skip has the kind its reason names, and the rollups, emptied, refold the canaries."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, select, update

    from monitor.store import rollups
    from monitor.store.models import HourlyRollupRow, RollupTotalRow, SlotRow
    from tests.test_store import result

    db.upgrade(empty_url, "0007")
    engine = db.create(empty_url)
    try:
        original = save_then(engine, result())
        replay = save_then(engine, result())
        at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
        reasons = ["rate limited: HTTP 429, waiting 30 s until ...",
                   "daily token budget spent (20 of 20 tokens today, UTC)",
                   "daily request budget spent (2 of 2 requests today, UTC)",
                   "missed: the scheduler could not start it within 1 s of its time",
                   "coalesced: the scheduler was late and ran only the latest slot",
                   "the previous probe was still running (maximum running instances reached)"]
        with engine.begin() as connection:
            connection.execute(update(ProbeRow).where(ProbeRow.id == replay)
                               .values(replay_of=original))
            target = connection.execute(select(ProbeRow.target_id)).scalars().first()
            # What the code before 0008 folded, the replay among them (today's catch_up
            # reads columns of later revisions).
            connection.execute(insert(RollupTotalRow), {
                "target_id": target, "probes": 2, "ok": 2, "errors": {}})
            connection.execute(insert(SlotRow.__table__), [
                {"target_id": target, "slot_at": at + timedelta(seconds=n), "instance_id": "i",
                 "state": "skipped", "reason": reason} for n, reason in enumerate(reasons)]
                + [{"target_id": target, "slot_at": at - timedelta(seconds=1),
                    "instance_id": "i", "state": "probed", "reason": None}])
            assert connection.execute(select(RollupTotalRow.probes)).scalar_one() == 2
        db.upgrade(empty_url)
        with engine.connect() as connection:
            kinds = connection.execute(select(SlotRow.reason_kind).order_by(SlotRow.slot_at))
            assert kinds.scalars().all() == [None, "rate_limited", "budget_spent",
                                             "budget_spent", "missed", "missed", "missed"]
            assert connection.execute(select(func.count(HourlyRollupRow.id))).scalar_one() == 0
        assert rollups.catch_up(engine) == 2
        with engine.connect() as connection:
            assert connection.execute(select(RollupTotalRow.probes)).scalar_one() == 1
    finally:
        engine.dispose()


def test_0011_up_and_down_keeps_every_row(empty_url: str) -> None:
    """targets.kind and the traffic columns come and go with plain ALTER TABLEs: on SQLite a
    batch (the table copied, then dropped) would cascade-delete what refers to a target or
    probe while foreign keys are on."""
    from sqlalchemy import func, select

    from monitor.store.models import SlotRow, TargetRow
    from tests.test_store import result

    db.upgrade(empty_url, "0010")
    engine = db.create(empty_url)
    try:
        probe = save_then(engine, result())
        with engine.begin() as connection:
            target = connection.execute(select(ProbeRow.target_id)).scalar_one()
            connection.execute(insert(SlotRow.__table__), {
                "target_id": target, "slot_at": result().started_at, "instance_id": "i",
                "state": "probed", "reason": None})
        for revision in ("head", "0010"):
            if revision == "head":
                db.upgrade(empty_url)
            else:
                command.downgrade(db.alembic_config(empty_url), revision)
            with engine.connect() as connection:
                assert connection.execute(select(ProbeRow.__table__.c.id)).scalar_one() == probe
                assert connection.execute(select(func.count()).select_from(
                    SlotRow.__table__)).scalar_one() == 1
                if revision == "head":
                    assert connection.execute(select(TargetRow.kind)).scalar_one() == "canary"
    finally:
        engine.dispose()


def test_downgrade_from_0012_rewrites_compact_blobs_for_the_code_before(empty_url: str) -> None:
    """Blobs in formats 2 (against a dictionary) and 0 (retention's empties) are rewritten to
    format 1, which the code before 0012 reads, with the same bytes inside."""
    db.upgrade(empty_url)
    engine = db.open_store(empty_url)
    try:
        results = [varied(i) for i in range(1, 4)]
        recorder = Recorder(engine)
        ids = [recorder.save(r) for r in results]
        with engine.begin() as connection:
            connection.execute(update(ProbeRow).where(ProbeRow.id == ids[2]).values(
                response_headers_zlib=EMPTY_HEADERS, raw_response_zlib=EMPTY_BODY))
        assert {row[0][0] for row in blobs_of(engine, ids)} == {2, 0}
        command.downgrade(db.alembic_config(empty_url), "0011")
        stored = blobs_of(engine, ids)
        assert {blob[0] for pair in stored for blob in pair} == {1}
        assert [(codec.decompress_headers(h), codec.decompress(b)) for h, b in stored] == [
            (r.response_headers, r.raw_response) for r in results[:2]] + [({}, b"")]
        # Times as the code before stores them (text on SQLite).
        created = sa_table("probes", sa_column("id"),
                           sa_column("response_created_at", UtcDateTime()))
        with engine.connect() as connection:
            assert list(connection.execute(select(created.c.response_created_at)
                                           .order_by(created.c.id)).scalars()) == [
                datetime.fromtimestamp(r.response_created or 0, UTC) for r in results]
        db.upgrade(empty_url)
    finally:
        engine.dispose()


def blobs_of(engine: Engine, ids: list[int]) -> list[tuple[bytes, bytes]]:
    table = sa_table("probes", sa_column("id"), sa_column("response_headers_zlib"),
                     sa_column("raw_response_zlib"))
    with engine.connect() as connection:
        return [(bytes(h), bytes(b)) for h, b in connection.execute(
            select(table.c.response_headers_zlib, table.c.raw_response_zlib)
            .where(table.c.id.in_(ids)).order_by(table.c.id))]


def test_0012_stores_uids_in_16_bytes_and_still_finds_the_old_ones(empty_url: str) -> None:
    """uids stored as text before 0012 are converted: looking one up, and storing the same
    probe again (a spool replayed after the upgrade), find the row as before."""
    from tests.test_store import result

    db.upgrade(empty_url, "0010")
    engine = db.create(empty_url)
    try:
        old = [result() for _ in range(3)]
        ids = [save_then(engine, r) for r in old]
        db.upgrade(empty_url)
        recorder = Recorder(engine)
        assert [recorder.probe_id(r.uid) for r in old] == ids
        assert recorder.save(old[1]) == ids[1]
        new = recorder.save(result())
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                kinds = connection.exec_driver_sql("SELECT typeof(uid), length(uid) FROM probes")
                assert set(kinds.all()) == {("blob", 16)}
            uids = dict(connection.execute(select(ProbeRow.id, ProbeRow.uid)).all())
        assert [uids[i] for i in ids] == [r.uid for r in old] and len(uids[new]) == 32
    finally:
        engine.dispose()


def test_0013_packs_upstream_ids_and_reads_them_back_as_they_were(empty_url: str) -> None:
    """Ids stored as text before 0013 are packed on upgrade (an equality lookup finds them) and
    are text again after a downgrade, each exactly the string it was."""
    from tests.test_store import result

    db.upgrade(empty_url, "0012")
    engine = db.create(empty_url)
    try:
        ids = [("req_" + uuid.uuid4().hex, "chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012"),
               (str(uuid.uuid4()), "msg_01XFDUDYJgAACzvnptvVoYEL"),
               ("r" * 250, None), (None, "chatcmpl-\u00e9t\u00e9")]
        old = [save_then(engine, replace(result(), x_request_id=x, response_id=r))
               for x, r in ids]
        db.upgrade(empty_url)
        new = Recorder(engine).save(replace(result(), x_request_id=ids[0][0],
                                            response_id=ids[0][1]))
        columns = select(ProbeRow.x_request_id, ProbeRow.response_id)
        with engine.connect() as connection:
            assert [tuple(connection.execute(columns.where(ProbeRow.id == i)).one())
                    for i in old + [new]] == ids + ids[:1]
            found = connection.execute(select(ProbeRow.id).where(
                ProbeRow.x_request_id == ids[0][0])).scalars().all()
            assert sorted(found) == [old[0], new]
            stored = sa_table("probes", sa_column("id"), sa_column("x_request_id"))
            assert len(connection.execute(select(stored.c.x_request_id).where(
                stored.c.id == old[0])).scalar_one()) == 18
        command.downgrade(db.alembic_config(empty_url), "0012")
        text_columns = sa_table("probes", sa_column("id"), sa_column("x_request_id", Text()),
                                sa_column("response_id", Text()))
        with engine.connect() as connection:
            assert [tuple(row) for row in connection.execute(
                select(text_columns.c.x_request_id, text_columns.c.response_id)
                .order_by(text_columns.c.id))] == ids + ids[:1]
        db.upgrade(empty_url)
    finally:
        engine.dispose()


def test_0013_stores_start_times_as_microseconds_on_sqlite(empty_url: str) -> None:
    """Start times stored as text before 0013 read back the same after it, sort and select
    with the new ones, and are the same text again after a downgrade."""
    from tests.test_store import result

    db.upgrade(empty_url, "0012")
    engine = db.create(empty_url)
    base = datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=UTC)
    times = [base, base.replace(microsecond=0), base.replace(year=1969, microsecond=1),
             base.replace(microsecond=999999)]
    try:
        old = [save_then(engine, replace(result(), started_at=t)) for t in times[:3]]
        stored = sa_table("probes", sa_column("id"), sa_column("started_at"))
        with engine.connect() as connection:
            before = connection.execute(select(stored.c.started_at).order_by(stored.c.id)).all()
        db.upgrade(empty_url)
        new = Recorder(engine).save(replace(result(), started_at=times[3]))
        with engine.connect() as connection:
            assert connection.execute(select(ProbeRow.started_at).order_by(
                ProbeRow.id)).scalars().all() == times
            assert connection.execute(select(ProbeRow.id).where(
                ProbeRow.started_at >= base).order_by(ProbeRow.started_at)).scalars().all() == [
                    old[0], new]
            if engine.dialect.name == "sqlite":
                kinds = connection.exec_driver_sql("SELECT DISTINCT typeof(started_at) FROM probes")
                assert kinds.scalars().all() == ["integer"]
        command.downgrade(db.alembic_config(empty_url), "0012")
        with engine.connect() as connection:
            after = connection.execute(select(stored.c.started_at).order_by(stored.c.id)).all()
        assert after[:3] == before
        db.upgrade(empty_url)
    finally:
        engine.dispose()


def test_0014_moves_repeated_values_to_probe_facets_and_back(empty_url: str) -> None:
    """Probes stored with their facet values and answers as columns (before 0014) read back the
    same after it, sharing one facet row per distinct combination across targets and one
    answer row per answer stored more than once; a downgrade puts every value back on its
    probe."""
    from monitor.domain import Choice, RateLimits
    from monitor.store.models import ProbeAnswerRow, ProbeFacetRow
    from monitor.store.probe_reads import probe_records
    from monitor.store.schema import FACET_FIELDS
    from tests.test_store import result

    db.upgrade(empty_url, "0013")
    engine = db.create(empty_url)
    limits = RateLimits(limit_requests=500, limit_tokens=2**40, remaining_requests=7)
    sent = [result(target_name="a", openai_version="2020-10-01", rate_limits=limits),
            result(target_name="b", openai_version="2020-10-01", rate_limits=limits),
            result(target_name="a", system_fingerprint="fp_\u00e9", service_tier="flex",
                   choices=(Choice(index=0, finish_reason="stop", content="once"),)),
            result(target_name="a", ok=False, model=None, choices=(), rate_limits=RateLimits())]
    try:
        old = [save_then(engine, r) for r in sent]
        stored = sa_table("probes", sa_column("id"), *[sa_column(n) for n in FACET_FIELDS],
                          sa_column("choices", Json()))
        with engine.connect() as connection:
            before = connection.execute(select(stored).order_by(stored.c.id)).all()
        assert before[0][1:] == before[1][1:] != before[2][1:]
        db.upgrade(empty_url)
        new = Recorder(engine).save(replace(sent[2], uid=uuid.uuid4().hex))
        with engine.connect() as connection:
            assert connection.execute(select(ProbeFacetRow.id).order_by(
                ProbeFacetRow.id)).scalars().all() == [1, 2, 3]
            facets = connection.execute(select(ProbeRow.facet_id).order_by(ProbeRow.id))
            assert facets.scalars().all() == [1, 1, 2, 3, 2]
            # The answer of the first two, once; the others' stay (the new probe's was not
            # seen repeating by its Recorder).
            assert connection.execute(select(ProbeAnswerRow.choices)).scalars().all() == [
                before[0][-1]]
            answers = connection.execute(select(ProbeRow.answer_id).order_by(ProbeRow.id))
            assert answers.scalars().all() == [1, 1, None, None, None]
        records = probe_records(engine, [*old, new])
        assert [tuple(r[n] for n in (*FACET_FIELDS, "choices")) for r in records] == [
            tuple(row[1:]) for row in [*before, before[2]]]
        assert [r["ratelimit_remaining_requests"] for r in records] == [7, 7, None, None, None]
        command.downgrade(db.alembic_config(empty_url), "0013")
        with engine.connect() as connection:
            after = connection.execute(select(stored).order_by(stored.c.id)).all()
            assert "probe_facets" not in inspect(connection).get_table_names()
        assert [tuple(row) for row in after] == [
            *[tuple(row) for row in before], (new, *before[2][1:])]
        db.upgrade(empty_url)
    finally:
        engine.dispose()


def test_0015_fills_totals_from_what_they_had_folded(empty_url: str) -> None:
    """Totals folded before 0015 get the newest probe, answer and rate limits of the history
    (never a replay's) and the check outcomes of the probes they hold: not those of probes in
    the fold's gaps or beyond its watermark, which the next fold adds. After it they equal a
    fold from scratch."""
    from monitor.store import rollups
    from monitor.store.aggregate import micros
    from monitor.store.models import RollupStateRow, RollupTotalRow
    from monitor.store.replays import LinkedWriter
    from monitor.store.schema import check_results
    from tests.test_rollups import checked, varied_history

    new_columns = (RollupTotalRow.newest_at, RollupTotalRow.newest_ok, RollupTotalRow.ok_at,
                   RollupTotalRow.ok_fingerprint, RollupTotalRow.ok_model,
                   RollupTotalRow.limits_at, RollupTotalRow.limit_requests,
                   RollupTotalRow.limit_tokens, RollupTotalRow.remaining_requests,
                   RollupTotalRow.remaining_tokens, RollupTotalRow.checks)
    db.upgrade(empty_url, "0014")
    engine = db.create(empty_url)
    results = checked(varied_history(60, seed=21))
    try:
        recorder = Recorder(engine)
        ids = [recorder.save(r) for r in results[:40]]
        replay = LinkedWriter(engine).save(
            replace(results[39], uid=uuid.uuid4().hex, started_at=datetime.now(UTC)), {},
            replay_of=ids[0])
        totals = sa_table("rollup_totals", sa_column("target_id"), sa_column("probes"),
                          sa_column("ok"), sa_column("errors", Json()))
        with engine.begin() as connection:
            connection.execute(insert(check_results), {  # as `monitor import` stores one
                "probe_id": replay, "check_name": "answer_format", "target_id": 1,
                "started_at": results[39].started_at, "outcome": "fail"})
            # As the code before 0015 left it: everything up to the replay folded but ids[3:7].
            connection.execute(insert(totals), {"target_id": 1, "probes": 37, "ok": 0,
                                                "errors": {}})
            connection.execute(insert(RollupStateRow.__table__), {
                "id": 1, "last_probe_id": replay, "updated_at": datetime.now(UTC),
                "gaps": [[ids[3], ids[6], micros(datetime.now(UTC))]]})
        db.upgrade(empty_url)
        held = [r for i, r in enumerate(results[:40]) if not 3 <= i <= 6]
        with engine.connect() as connection:
            row = connection.execute(select(*new_columns)).one()
        newest = max(results[:40], key=lambda r: r.started_at)
        served = max((r for r in results[:40] if r.ok), key=lambda r: r.started_at)
        limited = max((r for r in results[:40] if r.rate_limits.remaining_requests),
                      key=lambda r: r.started_at)
        assert (row.newest_at, row.newest_ok) == (newest.started_at, newest.ok)
        assert (row.ok_at, row.ok_fingerprint, row.ok_model) == (
            served.started_at, served.system_fingerprint, served.model)
        assert (row.limits_at, row.remaining_requests) == (
            limited.started_at, limited.rate_limits.remaining_requests)
        counted: dict[str, dict[str, int]] = {}
        for check in (c for r in held for c in r.checks):
            outcomes = counted.setdefault(check.check, {})
            outcomes[check.outcome.value] = outcomes.get(check.outcome.value, 0) + 1
        assert row.checks == counted
        recorder = Recorder(engine)
        for result in results[40:]:
            recorder.save(result)
        rollups.catch_up(engine)
        with engine.connect() as connection:
            upgraded = connection.execute(select(*new_columns)).one()
        with engine.begin() as connection:
            for table in ("hourly_rollups", "daily_rollups", "rollup_totals", "rollup_state"):
                connection.execute(sa_table(table).delete())
        rollups.catch_up(engine)
        with engine.connect() as connection:
            assert connection.execute(select(*new_columns)).one() == upgraded
    finally:
        engine.dispose()


def test_0016_keeps_every_count_and_shrinks_a_probe_on_postgresql(empty_url: str) -> None:
    """Token counts, stream chunks and the body's length become NUMERIC on PostgreSQL: the same
    ints come back through the upgrade and the downgrade, and a canary's row is smaller."""
    from monitor.domain import Usage
    from monitor.store.schema import Count
    from tests.test_store import result

    usage = Usage(prompt_tokens=27, completion_tokens=9_999, total_tokens=10_026,
                  cached_tokens=0, prompt_audio_tokens=0, reasoning_tokens=2**63 - 1,
                  completion_audio_tokens=0, accepted_prediction_tokens=0,
                  rejected_prediction_tokens=0)
    counts = [c for c in ProbeRow.__table__.c if isinstance(c.type, Count)]
    assert len(counts) == 12  # the columns revision 0016 retypes

    def read(engine: Engine, probe_id: int) -> list[Any]:
        with engine.connect() as connection:
            return list(connection.execute(
                select(*counts).where(ProbeRow.id == probe_id)).one())

    def row_bytes(engine: Engine, probe_id: int) -> int:
        with engine.connect() as connection:
            return int(connection.exec_driver_sql(
                f"SELECT pg_column_size(p.*) FROM probes p WHERE id = {probe_id}").scalar_one())

    db.upgrade(empty_url, "0015")
    engine = db.create(empty_url)
    try:
        before = Recorder(engine).save(result(usage=usage, stream_chunks=12))
        as_stored = read(engine, before)
        assert as_stored[:3] == [12, 27, 9_999]  # stream_chunks, prompt, completion
        postgres = engine.dialect.name == "postgresql"
        bytes_before = row_bytes(engine, before) if postgres else 0
        db.upgrade(empty_url)
        engine.dispose()
        upgraded = read(engine, before)
        assert upgraded == as_stored
        assert all(type(value) is int for value in upgraded if value is not None)
        after = Recorder(engine).save(result(usage=usage, stream_chunks=12))
        assert read(engine, after) == as_stored
        if postgres:
            # Eleven 8-byte values, most of them 0, each in 3-5 bytes now.
            assert row_bytes(engine, before) <= bytes_before - 30
        command.downgrade(db.alembic_config(empty_url), "0015")
        engine.dispose()
        assert read(engine, before) == as_stored
    finally:
        engine.dispose()


def test_0017_keeps_measured_values_to_float32_and_shrinks_a_probe_on_postgresql(
        empty_url: str) -> None:
    """Durations, rates and reset times become real and the target's, configuration's and
    facet's ids integer on PostgreSQL: values come back as float32 holds them (the same on
    both databases), one beyond float32's range becomes NULL instead of stopping the upgrade,
    and a canary's row is smaller. SQLite's columns are untouched."""
    from monitor.domain import RateLimits
    from monitor.store.schema import Float32, float32
    from tests.test_store import result

    measured = [c for c in ProbeRow.__table__.c if isinstance(c.type, Float32)]
    assert len(measured) == 11  # the columns revision 0017 retypes
    precise = 230.14901945408266  # as perf_counter measures: more digits than float32 holds

    def read(engine: Engine, probe_id: int) -> Any:
        with engine.connect() as connection:
            return connection.execute(
                select(ProbeRow.total_ms, ProbeRow.time_to_headers_ms, ProbeRow.retry_after_s,
                       ProbeRow.ratelimit_reset_tokens_s, ProbeRow.target_id)
                .where(ProbeRow.id == probe_id)).one()

    def row_bytes(engine: Engine, probe_id: int) -> int:
        with engine.connect() as connection:
            return int(connection.exec_driver_sql(
                f"SELECT pg_column_size(p.*) FROM probes p WHERE id = {probe_id}").scalar_one())

    canary = result(time_to_headers_ms=101.3, openai_processing_ms=88.0,
                    rate_limits=RateLimits(limit_requests=500, reset_requests_s=0.006,
                                           reset_tokens_s=59.992))
    db.upgrade(empty_url, "0016")
    engine = db.create(empty_url)
    try:
        before = Recorder(engine).save(canary)
        with engine.begin() as connection:  # as code before 0017 stored them: every digit
            connection.execute(text("UPDATE probes SET total_ms = :total, retry_after_s = 1e300 "
                                    "WHERE id = :id"), {"total": precise, "id": before})
        postgres = engine.dialect.name == "postgresql"
        bytes_before = row_bytes(engine, before) if postgres else 0
        db.upgrade(empty_url)
        engine.dispose()
        upgraded = read(engine, before)
        if postgres:
            assert upgraded == (float32(precise), float32(101.3), None, float32(59.992), 1)
            # Eight bytes less for each of four measured values and two ids (alignment aside).
            assert row_bytes(engine, before) <= bytes_before - 24
            with engine.connect() as connection:
                types = dict(connection.exec_driver_sql(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'probes' AND column_name IN "
                    "('total_ms', 'target_id', 'facet_id', 'request_payload_id')").all())
            assert types == {"total_ms": "real", "target_id": "integer",
                             "facet_id": "integer", "request_payload_id": "bigint"}
        else:
            assert upgraded == (precise, float32(101.3), 1e300, float32(59.992), 1)
        # New values are rounded to float32 on both databases alike; an absurd one is None.
        after = Recorder(engine).save(replace(canary, uid=uuid.uuid4().hex, total_ms=precise,
                                              retry_after_s=1e300))
        assert read(engine, after) == (float32(precise), float32(101.3), None,
                                       float32(59.992), 1)
        assert float32(precise) != precise and abs(float32(precise) - precise) < 1e-4
        command.downgrade(db.alembic_config(empty_url), "0016")
        engine.dispose()
        assert read(engine, after)[:2] == (float32(precise), float32(101.3))
    finally:
        engine.dispose()
