"""Storage pieces that need no server: the codec and the spool file."""

from __future__ import annotations

import json
import random
import struct
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, Table, func, insert, select

from monitor.domain import Choice, ErrorKind, ProbeResult, RateLimits, Usage
from monitor.store import codec
from monitor.store.models import ProbeRow
from monitor.store.probe_reads import probe_records
from monitor.store.records import Recorder
from monitor.store.schema import Float32, float32
from monitor.store.spool import Spool, decode, encode

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "openai-chat-completion.json"


def result(**changes: object) -> ProbeResult:
    exchange = json.loads(FIXTURE.read_text())
    base = ProbeResult(
        uid=uuid.uuid4().hex,
        target_name="gpt-4o",
        config_hash="c" * 64,
        started_at=datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=UTC),
        stream=False,
        request_url="https://api.openai.com/v1/chat/completions",
        request_payload=exchange["request"],
        ok=True,
        http_status=200,
        total_ms=912.5,
        response_headers=exchange["response_headers"],
        rate_limits=RateLimits(limit_requests=500, reset_tokens_s=0.038),
        model="gpt-4o-2024-08-06",
        choices=(Choice(index=0, finish_reason="stop", content="Hello\n\u2028<b>"),),
        usage=Usage(prompt_tokens=27, completion_tokens=44, total_tokens=71),
        raw_response=json.dumps(exchange["response_body"], indent=2).encode(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\xff binary", json.dumps({"a": "\u00e9" * 5000}).encode(), b"data: [DONE]\n\n"],
)
def test_codec_round_trips_exactly(data: bytes) -> None:
    assert codec.decompress(codec.compress(data)) == data


def test_codec_shrinks_a_canary_response() -> None:
    body = result().raw_response
    assert len(codec.compress(body)) < len(body) / 3


def test_spool_lines_round_trip_every_field() -> None:
    original = result(ok=False, error_kind=ErrorKind.READ_TIMEOUT, error_detail="slow",
                      raw_response=b"\x00\x01partial")
    assert decode(encode(original)) == original


def test_spool_drains_in_order_and_empties(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    results = [result() for _ in range(5)]
    for item in results:
        spool.append(item)
    assert spool.backlog() == 5
    taken: list[ProbeResult] = []
    assert spool.drain(taken.extend, batch_size=2) == 5
    assert [r.uid for r in taken] == [r.uid for r in results]
    assert spool.backlog() == 0 and spool.empty()
    assert not spool.path.exists() and not spool.offset_path.exists()


def test_spool_keeps_what_the_database_did_not_take(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    results = [result() for _ in range(4)]
    for item in results:
        spool.append(item)
    taken: list[str] = []

    def save(batch: list[ProbeResult]) -> None:
        if taken:
            raise ConnectionError("database went away")
        taken.extend(item.uid for item in batch)

    with pytest.raises(ConnectionError):
        spool.drain(save, batch_size=2)
    assert spool.backlog() == 2 and not spool.empty()
    # A new Spool on the same file (a restart) continues from the recorded offset.
    rest: list[ProbeResult] = []
    Spool(spool.path).drain(rest.extend)
    assert [r.uid for r in rest] == [r.uid for r in results[2:]]
    assert not spool.path.exists()


def test_a_drain_stops_at_the_end_it_saw_and_the_next_takes_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    first = [result() for _ in range(3)]
    for item in first:
        spool.append(item)
    late = result()
    taken: list[str] = []

    def save(batch: list[ProbeResult]) -> None:
        taken.extend(item.uid for item in batch)
        if len(taken) == 1:
            spool.append(late)  # a probe finishing while the backlog drains

    # Bounded however fast results arrive: what came in meanwhile waits for the next call.
    assert spool.drain(save, batch_size=1) == 3
    assert taken == [item.uid for item in first] and spool.backlog() == 1
    assert spool.drain(save) == 1
    assert taken == [item.uid for item in first] + [late.uid]
    assert spool.empty() and not spool.path.exists()


def test_a_drain_ends_after_max_batches_or_when_told_to_stop(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    results = [result() for _ in range(6)]
    for item in results:
        spool.append(item)
    taken: list[ProbeResult] = []
    assert spool.drain(taken.extend, batch_size=2, max_batches=1) == 2
    assert spool.drain(taken.extend, batch_size=2, stop=lambda: len(taken) >= 4) == 2
    assert spool.drain(taken.extend, batch_size=2, stop=lambda: True) == 0
    assert spool.backlog() == 2
    assert spool.drain(taken.extend, batch_size=2) == 2
    assert [r.uid for r in taken] == [r.uid for r in results] and spool.empty()


def test_an_offset_beyond_the_file_counts_as_none(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.offset_path.write_text("999999")  # left over after the spool was removed by hand
    item = result()
    spool.append(item)
    taken: list[ProbeResult] = []
    assert spool.drain(taken.extend) == 1 and taken == [item]


def test_a_damaged_line_is_quarantined_and_does_not_block_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    first, second = result(), result()
    spool.append(first)
    with open(spool.path, "ab") as file:
        file.write(b"deadbeef {\"torn\": ")  # a crash mid-write: no newline
    spool.append(second)
    taken: list[ProbeResult] = []
    assert spool.drain(taken.extend) == 2
    assert [r.uid for r in taken] == [first.uid, second.uid]
    assert b"torn" in spool.quarantine_path.read_bytes()


def test_drained_results_are_stored_once_even_if_replayed(tmp_path: Path, engine: Engine) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    items = [result() for _ in range(3)]
    for item in items:
        spool.append(item)
    recorder = Recorder(engine)
    for item in items[:2]:  # a crash after these were written but before the offset was
        recorder.save(item)
    spool.drain(recorder.save_many)
    with engine.connect() as connection:
        assert connection.execute(select(func.count(ProbeRow.id))).scalar() == 3
    [record] = probe_records(engine, [recorder.probe_id(items[0].uid) or 0])
    assert record["choices"][0]["content"] == "Hello\n\u2028<b>"
    assert record["started_at"] == "2026-11-26T01:02:03.456789+00:00"


def test_the_orm_classes_type_exactly_the_columns_of_their_tables() -> None:
    """store/schema.py defines each column once; store/models.py's annotations only type it
    for the code that names columns through the ORM classes. A column added to one and not
    the other is caught here (a class cannot add a column of its own: its table is given)."""
    from monitor.store import models

    mapped = [m.class_ for m in models.Base.registry.mappers]
    assert len(mapped) == len(models.Base.metadata.tables)
    for cls in mapped:
        annotated = {name for klass in cls.__mro__ if klass.__module__ == models.__name__
                     for name in vars(klass).get("__annotations__", {})}
        assert annotated == set(cls.__table__.columns.keys()), cls.__name__


def test_measured_values_read_back_alike_on_both_databases_as_float32s_shortest_decimal(
        engine: Engine) -> None:
    """schema.Float32 binds the shortest decimal of a value's float32; PostgreSQL's real prints
    that same decimal, so both databases return what float32() gives: 61.307, not its float32's
    exact 61.30699920654297, and nothing beyond float32's range."""
    rng = random.Random(17)
    values = [rng.uniform(0, 10) ** rng.uniform(-3, 6) for _ in range(3000)]
    values += [61.307, 0.006, 59.992, 412.0, 1e-50, 3.4028235e38, 1e300, -1e39, float("inf")]
    table = Table("float32_check", MetaData(), Column("n", Integer, primary_key=True),
                  Column("v", Float32))
    table.create(engine)
    try:
        with engine.begin() as connection:
            connection.execute(insert(table), [{"n": n, "v": v} for n, v in enumerate(values)])
        with engine.connect() as connection:
            read = connection.execute(select(table.c.v).order_by(table.c.n)).scalars().all()
    finally:
        table.drop(engine)
    assert read == [float32(v) for v in values]
    assert read[-9:] == [61.307, 0.006, 59.992, 412.0, 0.0, 3.4028235e38, None, None,
                         float("inf")]
    single = struct.Struct("<f")
    assert all(single.pack(r) == single.pack(v) for r, v in zip(read[:3000], values))
    # Decimals of at most 9 digits, where float32's exact values mostly need 17 or more.
    assert all(float(f"{r:.9g}") == r for r in read[:3000])
    assert sum(float(f"{single.unpack(single.pack(v))[0]:.9g}") !=
               single.unpack(single.pack(v))[0] for v in values[:3000]) > 2000
