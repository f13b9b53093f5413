"""A probe's raw headers and body are stored against its configuration's dictionary and its own
columns (codec format 2), read back byte for byte, and rows in older formats stay readable."""

from __future__ import annotations

import base64
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import StatementError

from monitor.domain import ErrorKind, ProbeResult
from monitor.store import codec
from monitor.store.models import CodecDictionaryRow, ProbeRow
from monitor.store.probe_reads import probe_records
from monitor.store.records import Recorder, _probe_values
from monitor.store.retention import EMPTY_BODY, EMPTY_HEADERS
from tests.test_store import result

DICTIONARY = codec.Dictionary(300, b'{"date":"Mon, 30 Nov 2026 00:00:00 GMT"}{"id":"chatcmpl-1"}')
CONTEXT = codec.context("req_0123", "chatcmpl-2", datetime(2026, 12, 1, tzinfo=UTC))


@pytest.mark.parametrize("data", [
    b"", b"\x00\xff binary", "\u00e9\u2028 \U0001f600".encode() * 3000, b"data: [DONE]\n\n",
    b'{"id":"chatcmpl-2","created":1796083200}'])
def test_format_2_round_trips_exactly(data: bytes) -> None:
    blob = codec.encode(data, DICTIONARY, CONTEXT)
    assert blob[0] == 2 and codec.dictionary_id(blob) == 300
    assert codec.decode(blob, CONTEXT, {300: DICTIONARY.data}.__getitem__) == data


def test_format_2_refuses_to_decode_with_another_context_or_dictionary() -> None:
    body = b'{"id":"chatcmpl-2","created":1796083200,"x":"req_0123"}'
    blob = codec.encode(body, DICTIONARY, CONTEXT)
    other = codec.context("req_9999", "chatcmpl-2", datetime(2026, 12, 1, tzinfo=UTC))
    with pytest.raises(codec.CodecError):
        codec.decode(blob, other, {300: DICTIONARY.data}.__getitem__)
    with pytest.raises(codec.CodecError):
        codec.decode(blob, CONTEXT, {300: DICTIONARY.data[::-1]}.__getitem__)


def varied(index: int, **changes: object) -> ProbeResult:
    """A probe whose per-probe values differ from every other's, as real ones do."""
    base = result()
    created = 1796083200 + 60 * index
    headers = dict(base.response_headers)
    headers.update({"date": f"Tue, 01 Dec 2026 00:{index % 60:02d}:00 GMT",
                    "x-request-id": f"req_{uuid.uuid4().hex}",
                    "cf-ray": f"{uuid.uuid4().hex[:16]}-SJC",
                    "x-note": "caf\u00e9 \u2028"})
    response_id = f"chatcmpl-{uuid.uuid4().hex[:29]}"
    body = (base.raw_response.replace(b"chatcmpl-BDXMEvOKQnSYFATQSDa0BbxRSDUrN",
                                      response_id.encode())
            .replace(b"1742566190", str(created).encode()))
    assert body != base.raw_response
    values: dict[str, object] = {
        "uid": uuid.uuid4().hex, "x_request_id": headers["x-request-id"],
        "response_id": response_id, "response_created": created, "response_headers": headers,
        "raw_response": body, "started_at": base.started_at + timedelta(minutes=index)}
    return replace(base, **{**values, **changes})  # type: ignore[arg-type]


def stored_blobs(engine: Engine, probe_id: int) -> tuple[bytes, bytes]:
    with engine.connect() as connection:
        row = connection.execute(select(ProbeRow.response_headers_zlib,
                                        ProbeRow.raw_response_zlib)
                                 .where(ProbeRow.id == probe_id)).one()
    return bytes(row[0]), bytes(row[1])


def assert_read_back(engine: Engine, ids: list[int], results: list[ProbeResult]) -> None:
    records = probe_records(engine, ids)
    assert [r["uid"] for r in records] == [r.uid for r in results]
    for record, sent in zip(records, results, strict=True):
        # Byte for byte, and the headers in the order they came.
        assert list(record["response_headers"].items()) == list(sent.response_headers.items())
        if "raw_response" in record:
            assert record["raw_response"].encode() == sent.raw_response
        else:
            assert base64.b64decode(record["raw_response_base64"]) == sent.raw_response


def test_probes_are_stored_against_their_configuration_and_read_back_exactly(
        engine: Engine) -> None:
    failed = varied(0, ok=False, error_kind=ErrorKind.HTTP_SERVER_ERROR, raw_response=b"busy",
                    x_request_id=None, response_id=None, response_created=None)
    results = [failed] + [varied(i) for i in range(1, 40)]
    results.append(varied(40, raw_response=b"\xff\x00 not utf-8"))
    recorder = Recorder(engine)
    ids = [recorder.save(r) for r in results[:10]]
    # The spool's batch path and a new process (no cached dictionary) store the same way.
    Recorder(engine).save_many(results[10:20])
    ids += [Recorder(engine).probe_id(r.uid) or 0 for r in results[10:20]]
    ids += Recorder(engine).save_batch([(r, None) for r in results[20:]])
    assert_read_back(engine, ids, results)
    with engine.connect() as connection:
        assert connection.execute(select(func.count(CodecDictionaryRow.id))).scalar() == 1
    # An error before the first answer has no dictionary to use yet.
    assert [blob[0] for blob in stored_blobs(engine, ids[0])] == [1, 1]
    v1 = len(codec.compress_headers(results[5].response_headers)) + len(
        codec.compress(results[5].raw_response))
    for probe_id in ids[1:]:
        headers, body = stored_blobs(engine, probe_id)
        assert headers[0] == body[0] == 2
        # What changed since the dictionary, and little else.
        assert len(headers) + len(body) < v1 / 2
    binary = probe_records(engine, [ids[-1]])[0]
    assert binary["raw_response_base64"] == "/wAgbm90IHV0Zi04"


def test_a_new_configuration_gets_its_own_dictionary(engine: Engine) -> None:
    recorder = Recorder(engine)
    first, second = varied(1), varied(2, config_hash="d" * 64, stream=True)
    ids = [recorder.save(first), recorder.save(second)]
    assert_read_back(engine, ids, [first, second])
    with engine.connect() as connection:
        configs = connection.execute(select(CodecDictionaryRow.target_config_id)).scalars().all()
        stored = connection.execute(select(ProbeRow.target_config_id)
                                    .where(ProbeRow.id.in_(ids))).scalars().all()
    assert sorted(configs) == sorted(stored) and len(set(configs)) == 2



def test_alike_targets_share_their_dictionary_s_bytes(engine: Engine) -> None:
    """Targets sending the same request to the same URL get dictionary rows of their own with
    the first one's bytes, held once in memory; another URL gets its exchange's own."""
    recorder = Recorder(engine)
    first, second = varied(1), varied(2, target_name="gpt-4o-eu")
    elsewhere = varied(3, target_name="gpt-4o-proxy",
                       request_url="https://proxy.example/v1/chat/completions")
    ids = [recorder.save(first), recorder.save(second), recorder.save(elsewhere)]
    assert_read_back(engine, ids, [first, second, elsewhere])
    with engine.connect() as connection:
        rows = connection.execute(select(CodecDictionaryRow.id, CodecDictionaryRow.dictionary)
                                  .order_by(CodecDictionaryRow.id)).all()
    assert len(rows) == 3 and len({row.id for row in rows}) == 3
    assert bytes(rows[0].dictionary) == bytes(rows[1].dictionary) != bytes(rows[2].dictionary)
    held = recorder._encoders._known  # the one process's view of each configuration's
    first_held, second_held, other_held = (held[i] for i in sorted(held))
    assert first_held is not None and second_held is not None and other_held is not None
    assert first_held.data is second_held.data and other_held.data is not first_held.data
    # A new process reads the equal bytes back and holds them once as well.
    reader = Recorder(engine)
    reader.save_batch([(varied(4), None), (varied(5, target_name="gpt-4o-eu"), None)])
    again = [d for d in reader._encoders._known.values() if d is not None]
    assert len(again) == 2 and again[0].data is again[1].data

def test_rows_written_by_the_old_codec_stay_readable(engine: Engine) -> None:
    """Rows as the code before revision 0012 wrote them (format 1, and format 1 empties after
    retention) beside rows written now."""
    recorder = Recorder(engine)
    old, pruned, new = varied(1), varied(2), varied(3)
    with engine.begin() as connection:
        target = recorder._target_id(connection, old.target_name)
        config = recorder._config_id(connection, old.target_name, target, old.config_hash, {})
        payload = recorder._payload_id(connection, old.request_payload)
        rows = [_probe_values(r, target, config, payload) for r in (old, pruned)]
        for row in rows:
            recorder._facet_ids.take(connection, row)
        old_ids = [int(connection.execute(
            insert(ProbeRow).returning(ProbeRow.id), row).scalar_one()) for row in rows]
        connection.execute(update(ProbeRow).where(ProbeRow.id == old_ids[1]).values(
            response_headers_zlib=codec.compress_headers({}),
            raw_response_zlib=codec.compress(b"")))
    new_id = recorder.save(new)
    assert stored_blobs(engine, old_ids[0])[1][0] == 1 and stored_blobs(engine, new_id)[1][0] == 2
    assert_read_back(engine, [old_ids[0], new_id], [old, new])
    [emptied] = probe_records(engine, [old_ids[1]])
    assert emptied["raw_response"] == "" and emptied["response_headers"] == {}


def test_retention_leaves_the_smallest_empties() -> None:
    assert codec.decompress(EMPTY_BODY) == b"" and len(EMPTY_BODY) == 1
    assert codec.decode(EMPTY_HEADERS, b"", {}.__getitem__) == b"{}" and len(EMPTY_HEADERS) == 3


def test_a_response_created_time_is_stored_as_unix_seconds_on_sqlite(engine: Engine) -> None:
    """Whole seconds, which nothing compares in SQL: 4 bytes on SQLite instead of 26 of text;
    text stored before (and a time with microseconds) still reads."""
    recorder = Recorder(engine)
    # The two rewritten below are errors stored before any dictionary (format 1): a format 2
    # blob would no longer decode once its row's created time changed.
    text, fraction = (varied(i, ok=False, error_kind=ErrorKind.HTTP_SERVER_ERROR)
                      for i in (2, 3))
    new = varied(1)
    ids = [recorder.save(r) for r in (text, fraction, new)]
    ids = ids[2:] + ids[:2]
    created = datetime.fromtimestamp(new.response_created or 0, UTC)
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql(
                f"SELECT typeof(response_created_at) FROM probes WHERE id = {ids[0]}"
            ).scalar() == "integer"
            # As UtcDateTime stored it before revision 0012.
            connection.exec_driver_sql("UPDATE probes SET response_created_at = "
                                       f"'2026-12-01 00:00:00.000000' WHERE id = {ids[1]}")
        connection.execute(update(ProbeRow).where(ProbeRow.id == ids[2]).values(
            response_created_at=created + timedelta(microseconds=5)))
    records = probe_records(engine, ids)
    assert records[0]["response_created_at"] == created.isoformat()
    if engine.dialect.name == "sqlite":
        assert records[1]["response_created_at"] == "2026-12-01T00:00:00+00:00"
    assert records[2]["response_created_at"] == (
        created + timedelta(microseconds=5)).isoformat()


def test_a_uid_that_is_not_a_uuid_s_hex_is_refused_before_the_database_sees_it(
        engine: Engine) -> None:
    """uids are stored as the 16 bytes of their hex (models.HexUuid): anything else would be
    stored wrongly on SQLite or refused by PostgreSQL with less to go on."""
    with pytest.raises(StatementError, match="uid 'canary-1': expected 32 lower-case hex"):
        Recorder(engine).save(varied(1, uid="canary-1"))
    with pytest.raises(StatementError, match="expected 32 lower-case hex"):
        Recorder(engine).save(varied(1, uid=uuid.uuid4().hex.upper()))


def test_uids_and_times_read_back_as_written_whatever_the_session_s_time_zone(
        engine: Engine) -> None:
    """PostgreSQL hands back uuid objects and times in the session's zone; readers get the
    32 hex digits written and aware UTC (the PostgreSQL result processors skip the generic
    conversions, so this holds them to the same answers)."""
    from sqlalchemy import event

    if engine.dialect.name == "postgresql":
        def zoned(connection: Any, _: object) -> None:
            connection.execute("SET TIME ZONE 'Asia/Kathmandu'")  # +05:45: no slip unseen
            connection.commit()  # else the pool's reset on return rolls it back

        event.listen(engine, "connect", zoned)
        engine.dispose()
    sent = varied(1)
    probe_id = Recorder(engine).save(sent)
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            assert connection.exec_driver_sql("SHOW TIME ZONE").scalar() == "Asia/Kathmandu"
        uid, started_at = connection.execute(select(ProbeRow.uid, ProbeRow.started_at)
                                             .where(ProbeRow.id == probe_id)).one()
    assert uid == sent.uid and started_at == sent.started_at
    assert started_at.utcoffset() == timedelta(0)
