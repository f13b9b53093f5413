"""probe_facets: the values a target's probes repeat are stored once, each probe refers to its
own, and every reader sees the values as if they were the probe's columns."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime

import pytest
from sqlalchemy import Engine, func, select

from monitor.domain import Choice, ProbeResult, RateLimits
from monitor.store import check_results, db, replays
from monitor.store.history import ObservationReader
from monitor.store.models import ProbeAnswerRow, ProbeFacetRow, ProbeRow, TargetRow
from monitor.store.probe_reads import probe_records
from monitor.store.records import Recorder
from monitor.store.schema import FACET_FIELDS
from monitor.store.shared import FacetIds
from tests.test_store import result

LIMITS = RateLimits(limit_requests=500, limit_tokens=30_000, remaining_requests=499,
                    remaining_tokens=29_000, limit_input_tokens=2**40)


def facet_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count(ProbeFacetRow.id))).scalar_one())


def answer_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count(ProbeAnswerRow.id))).scalar_one())


def answered(text: str) -> ProbeResult:
    return result(choices=(Choice(index=0, finish_reason="stop", content=text),))


def fields(record: dict[str, object]) -> dict[str, object]:
    return {name: record[name] for name in FACET_FIELDS}


def test_probes_of_several_targets_share_one_facet_and_read_it_back(engine: Engine) -> None:
    recorder = Recorder(engine)
    same = {"openai_version": "2020-10-01", "openai_organization": "org-x",
                "system_fingerprint": "fp_a", "service_tier": "default", "rate_limits": LIMITS}
    stored = [result(target_name=name, **same) for name in ("a", "b", "a", "b")]
    other = result(target_name="a", **{**same, "system_fingerprint": "fp_b"})
    ids = [recorder.save(r) for r in stored]
    ids.append(recorder.save_batch([(other, None)])[0])
    assert facet_rows(engine) == 2
    records = probe_records(engine, ids)
    for record, sent in zip(records, [*stored, other], strict=True):
        assert fields(record) == {
            "openai_version": "2020-10-01", "openai_organization": "org-x",
            "model": "gpt-4o-2024-08-06", "system_fingerprint": sent.system_fingerprint,
            "service_tier": "default", "finish_reason": "stop",
            "ratelimit_limit_requests": 500, "ratelimit_limit_tokens": 30_000,
            "ratelimit_limit_input_tokens": 2**40, "ratelimit_limit_output_tokens": None}
        assert record["ratelimit_remaining_requests"] == 499
    # A second process knows nothing of the first's cache and finds the same rows.
    Recorder(engine).save_many([result(target_name="c", **same)])
    assert facet_rows(engine) == 2


def test_a_facet_new_on_every_probe_still_reads_back_each_probe_exactly(engine: Engine) -> None:
    """The worst case (a fingerprint that changes every probe): one facet row each, every
    probe still with its own values, in the detectors' read too."""
    recorder = Recorder(engine)
    sent = [result(system_fingerprint=f"fp_{i}", rate_limits=RateLimits(limit_tokens=i))
            for i in range(30)]
    recorder.save_batch([(r, None) for r in sent[:10]])
    recorder.save_many(sent[10:20])
    ids = [recorder.save(r) for r in sent[20:]]
    assert facet_rows(engine) == 30
    with engine.connect() as connection:
        [target] = connection.execute(select(TargetRow.id)).scalars().all()
        observations = [o for _, o in ObservationReader().all(connection, target)]
        [(_, columns)] = ObservationReader().all_columns(connection, target)
    assert [o.system_fingerprint for o in observations] == [f"fp_{i}" for i in range(30)]
    assert [o.rate_limits.limit_tokens for o in observations] == list(range(30))
    assert list(columns.system_fingerprint) == [f"fp_{i}" for i in range(30)]
    assert list(columns.limits["limit_tokens"]) == list(range(30))
    assert [r["system_fingerprint"] for r in probe_records(engine, ids)] == [
        f"fp_{i}" for i in range(20, 30)]


def naive(probe: ProbeResult) -> ProbeResult:
    """A result the database refuses (a naive start time: a poison record)."""
    return replace(probe, started_at=datetime(2026, 11, 26, 1, 2, 3))


@pytest.mark.parametrize("path", ["save_batch", "save_many"])
def test_a_failed_transaction_leaves_no_facet_or_answer_id_cached(engine: Engine, path: str) -> None:
    """A facet created inside a transaction that rolled back is gone: its id, remembered, would
    make every later probe with those values fail on the foreign key."""
    recorder = Recorder(engine)
    recorder.save(result())
    new = {"system_fingerprint": "fp_rolled_back", "choices": answered("again").choices}
    # The second stores the answer the first left on its probe in probe_answers.
    batch = [result(**new), result(**new), naive(result())]
    with pytest.raises(Exception):  # noqa: B017 - whichever error the driver raises
        if path == "save_batch":
            recorder.save_batch([(r, None) for r in batch])
        else:
            recorder.save_many(batch)
    assert facet_rows(engine) == 1 and answer_rows(engine) == 0
    again = result(**new)
    if path == "save_batch":
        recorder.save_batch([(again, None)])
    else:
        recorder.save_many([again])
    assert facet_rows(engine) == 2 and answer_rows(engine) == 1
    [record] = probe_records(engine, [recorder.probe_id(again.uid) or 0])
    assert record["choices"][0]["content"] == "again"


def test_two_writers_creating_the_same_facet_at_once_both_succeed(database_url: str) -> None:
    """One writer's transaction holds a new facet uncommitted while another stores a probe with
    the same values: the second waits (PostgreSQL on the conflict, SQLite on the write lock),
    then finds the row the first committed."""
    engines = [db.open_store(database_url) for _ in range(2)]
    try:
        Recorder(engines[0]).save(result())  # target, config and payload exist
        values = {"system_fingerprint": "fp_raced", "rate_limits": LIMITS}
        second = Recorder(engines[1])
        saved: list[int] = []
        with engines[0].begin() as connection:
            row = {name: None for name in FACET_FIELDS} | {"system_fingerprint": "fp_raced"}
            row |= {f"ratelimit_{k}": v for k, v in vars(LIMITS).items() if k.startswith("limit")}
            row["model"], row["finish_reason"] = "gpt-4o-2024-08-06", "stop"
            FacetIds().take(connection, row)
            thread = threading.Thread(target=lambda: saved.append(second.save(result(**values))))
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # waiting for the first writer
        thread.join(30)
        assert saved and facet_rows(engines[0]) == 2
        [record] = probe_records(engines[0], saved)
        assert record["system_fingerprint"] == "fp_raced" and record["ratelimit_limit_tokens"] == 30_000
        with engines[0].connect() as connection:
            assert connection.execute(select(ProbeRow.facet_id).where(
                ProbeRow.id == saved[0])).scalar_one() == row["facet_id"]
    finally:
        for engine in engines:
            engine.dispose()


def test_facet_values_beyond_what_a_column_holds_are_stored_as_any_other_column(
    engine: Engine,
) -> None:
    """Scrubbed before the facet is looked up: a NUL in a fingerprint, a limit beyond 64 bits."""
    recorder = Recorder(engine)
    probe_id = recorder.save(result(system_fingerprint="fp\x00x",
                                    rate_limits=RateLimits(limit_requests=2**70)))
    [record] = probe_records(engine, [probe_id])
    assert record["system_fingerprint"] == "fp\ufffdx"
    assert record["ratelimit_limit_requests"] is None


@pytest.mark.parametrize("read", ["report_points", "heartbeat", "detectors", "rollups"])
def test_the_hot_reads_still_walk_their_index_with_the_facet_joined(
        engine: Engine, read: str) -> None:
    """The facet comes by primary key per probe (or, for the detectors, by id from what the
    reader learnt: no join at all); the probes are still found through the same index, and no
    read sorts on SQLite, where the index order is the result's order."""
    from sqlalchemy import event

    from monitor.store import history, rollups, timeline

    recorder = Recorder(engine)
    start = result().started_at
    recorder.save_many([result(started_at=start.replace(minute=i), system_fingerprint=f"fp_{i % 3}")
                        for i in range(30)])
    until = start.replace(hour=start.hour + 1)
    query, params, index = {
        "report_points": (timeline._POINTS, {"target_id": 1, "since": start, "until": until},
                          "ix_probes_target_id_started_at"),
        "heartbeat": (timeline._LATEST, {"target_id": 1, "until": until, "limit": 10},
                      "ix_probes_target_id_started_at"),
        "detectors": (history._AFTER, {"target_id": 1, "after_id": 0, "limit": 5000},
                      "ix_probes_target_id_id"),
        "rollups": (rollups._NEW, {"after": 0, "limit": 2000}, "pk_probes"),
    }[read]
    sqlite = engine.dialect.name == "sqlite"
    prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "

    def explain(*args: object) -> tuple[object, object]:
        return prefix + str(args[2]), args[3]

    with engine.connect() as connection:
        if not sqlite:
            connection.exec_driver_sql("SET enable_seqscan = off")
        event.listen(connection, "before_cursor_execute", explain, retval=True)
        plan = " | ".join(str(row[-1]) for row in connection.execute(query, params))
        event.remove(connection, "before_cursor_execute", explain)
        if not sqlite:
            connection.exec_driver_sql("RESET enable_seqscan")
    if sqlite:
        # The rowid is the primary key: SQLite names no index for it.
        assert (index in plan) if index != "pk_probes" else ("SCAN probes" in plan
                                                               or "USING INTEGER PRIMARY KEY" in plan)
        assert "TEMP B-TREE" not in plan
        assert ("probe_facets" in plan) == (read != "detectors")
        if read != "detectors":
            assert "SEARCH probe_facets USING INTEGER PRIMARY KEY" in plan
    else:
        assert index in plan and "Seq Scan on probes" not in plan
        assert ("probe_facets" in plan) == (read != "detectors")


def test_a_repeated_answer_is_stored_once_and_every_reader_sees_it_on_each_probe(
    engine: Engine,
) -> None:
    """The first probe keeps its answer (it has not repeated yet); from the second on, the
    probes refer to one probe_answers row. Every reader gives the same choices either way."""
    recorder = Recorder(engine)
    sent = [answered("pong") for _ in range(3)] + [answered("other")] + [answered("pong")]
    ids = [recorder.save(r) for r in sent[:2]] + recorder.save_batch(
        [(r, None) for r in sent[2:4]]) + [recorder.save(sent[4])]
    assert answer_rows(engine) == 1
    with engine.connect() as connection:
        stored = connection.execute(select(ProbeRow.answer_id, ProbeRow.choices)
                                    .order_by(ProbeRow.id)).all()
        [target] = connection.execute(select(TargetRow.id)).scalars().all()
        contents = [o.content for _, o in ObservationReader().all(connection, target)]
        [(_, columns)] = ObservationReader().all_columns(connection, target)
        answers = check_results.answers(connection, ids)
        # SQL NULL, not JSON null: no bytes where the answer is elsewhere.
        empty = connection.execute(select(func.count()).where(ProbeRow.choices.is_(None)))
        assert empty.scalar_one() == 3
    assert [answer_id is None for answer_id, _ in stored] == [True, False, False, True, False]
    assert [choices is None for _, choices in stored] == [False, True, True, False, True]
    texts = ["pong", "pong", "pong", "other", "pong"]
    assert contents == texts and list(columns.content) == texts
    assert [r["choices"] for r in probe_records(engine, ids)] == [
        [{"index": 0, "finish_reason": "stop", "content": text}] for text in texts]
    assert [answers[i][1][0]["content"] for i in ids] == texts  # type: ignore[index]
    assert [a.content for a in replays.answers(engine, ids).values()] == texts


def test_answers_that_never_repeat_stay_on_their_probes(engine: Engine) -> None:
    """Recorded traffic whose every answer differs: nothing goes to probe_answers, so each
    probe costs what it did before (an empty answer_id besides)."""
    recorder = Recorder(engine)
    sent = [answered(f"answer {i}") for i in range(12)]
    recorder.save_many(sent[:6])
    ids = [recorder.save(r) for r in sent[6:]]
    assert answer_rows(engine) == 0
    assert [r["choices"][0]["content"] for r in probe_records(engine, ids)] == [
        f"answer {i}" for i in range(6, 12)]


def test_a_known_facet_and_answer_cost_no_statement(engine: Engine) -> None:
    """Once a target's facet and repeated answer are known, storing a probe is still one
    INSERT, on each write path."""
    from sqlalchemy import event

    recorder = Recorder(engine)
    for _ in range(2):
        recorder.save(answered("pong"))
    statements: list[str] = []

    def seen(*args: object) -> None:
        statements.append(str(args[2]).split()[0])

    event.listen(engine, "before_cursor_execute", seen)
    try:
        recorder.save(answered("pong"))
        recorder.save_batch([(answered("pong"), None)])
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements == ["INSERT", "INSERT"]
