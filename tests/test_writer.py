"""Group commit (issue 14): results that finish together share one transaction, each caller
returns only once its own row is committed, and a bad result fails alone. Callers build their
own rows when the ids they need are cached, and those rows are stored exactly as the
transaction would have built them, never with ids a failed transaction left behind."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from monitor.domain import ErrorKind, ProbeResult
from monitor.store import db
from monitor.store.failures import Failure, classify
from monitor.store.models import CodecDictionaryRow, ProbeRow
from monitor.store.records import Prepared, Recorder
from monitor.store.schema import probes
from monitor.store.writer import GroupWriter
from tests.test_codec import assert_read_back, stored_blobs, varied
from tests.test_poison import poison
from tests.test_store import result
from tests.waiting import wait_until


class GatedRecorder(Recorder):
    """Holds its first batch until the test opens the gate, so that the others queue behind
    it deterministically; records every batch's size."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.prepared_rows: list[int] = []  # per batch, the rows its callers built
        self.saved_alone = 0  # results stored one by one (after their batch failed)

    def save_batch(self, batch: Sequence[tuple[ProbeResult, dict[str, Any] | None]],
                   prepared: Sequence[Prepared | None] = ()) -> list[int]:
        self.batches.append(len(batch))
        self.prepared_rows.append(sum(row is not None for row in prepared))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.gate.wait(60)
        return super().save_batch(batch, prepared)

    def save(self, result: ProbeResult, config: dict[str, Any] | None = None) -> int:
        self.saved_alone += 1
        return super().save(result, config)


def stored_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {uid: probe_id for uid, probe_id in connection.execute(
            select(ProbeRow.uid, ProbeRow.id))}


def queued(writer: GroupWriter) -> int:
    with writer._lock:  # the writer's own queue: what the test waits on
        return len(writer._queue)


def save_while_gated(engine: Engine, results: list[ProbeResult], warm: bool = False,
                     ) -> tuple[GatedRecorder, list[Any]]:
    """The first result leads and is held; the rest queue behind it; then the gate opens.
    `warm`: a probe is stored first, so that the ids and dictionary the others need are
    cached and their callers build their rows."""
    recorder = GatedRecorder(engine)
    if warm:
        Recorder.save(recorder, result())  # not counted as saved alone
    writer = GroupWriter(recorder)
    with ThreadPoolExecutor(len(results)) as pool:
        first = pool.submit(writer.save, results[0])
        assert recorder.entered.wait(60)
        rest = [pool.submit(writer.save, r) for r in results[1:]]
        wait_until(lambda: queued(writer) == len(results) - 1, "the others to queue")
        recorder.gate.set()
        outcomes: list[Any] = []
        for future in [first, *rest]:
            try:
                outcomes.append(future.result(60))
            except Exception as exc:  # noqa: BLE001 - the test looks at each verdict
                outcomes.append(exc)
    return recorder, outcomes


def test_results_queued_during_a_commit_share_the_next_one(engine: Engine) -> None:
    results = [result(uid=uuid.uuid4().hex) for _ in range(12)]
    recorder, ids = save_while_gated(engine, results)
    assert recorder.batches == [1, 11]
    stored = stored_ids(engine)
    assert ids == [stored[r.uid] for r in results]
    assert len(set(ids)) == 12


def test_a_poison_result_fails_alone_and_the_rest_of_its_batch_is_stored(
        engine: Engine) -> None:
    results = [result(uid=uuid.uuid4().hex) for _ in range(6)]
    results[3] = poison(uid=uuid.uuid4().hex)
    recorder, outcomes = save_while_gated(engine, results)
    assert recorder.batches == [1, 5]
    refused = outcomes.pop(3)
    assert isinstance(refused, Exception) and classify(refused) is Failure.POISON
    stored = stored_ids(engine)
    assert outcomes == [stored[r.uid] for i, r in enumerate(results) if i != 3]
    assert results[3].uid not in stored


def test_a_uid_already_stored_returns_its_row(engine: Engine) -> None:
    again = result(uid=uuid.uuid4().hex)
    first_id = Recorder(engine).save(again)
    results = [result(uid=uuid.uuid4().hex), again, result(uid=uuid.uuid4().hex)]
    _, ids = save_while_gated(engine, results)
    assert ids[1] == first_id
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(ProbeRow)).scalar() == 3


def test_many_concurrent_writers_store_every_result_once(engine: Engine) -> None:
    writer = GroupWriter(Recorder(engine), max_batch=7)  # small: leaders take several turns
    results = [replace(result(), uid=uuid.uuid4().hex) for _ in range(200)]
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(writer.save, results))
    stored = stored_ids(engine)
    assert ids == [stored[r.uid] for r in results]
    assert len(stored) == 200


def test_an_unreachable_database_fails_every_caller(tmp_path: Any) -> None:
    from monitor.store import db

    engine = db.create(f"sqlite:///{tmp_path}/missing/dir/monitor.db")
    writer = GroupWriter(Recorder(engine))
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(writer.save, result(uid=uuid.uuid4().hex)) for _ in range(4)]
    for future in futures:
        with pytest.raises(Exception) as raised:
            future.result(60)
        assert classify(raised.value) is Failure.UNAVAILABLE


def test_a_batch_is_inserted_at_once_and_gives_each_result_its_own_id(engine: Engine) -> None:
    results = [result(uid=uuid.uuid4().hex) for _ in range(5)]
    ids = Recorder(engine).save_batch([(r, None) for r in results])
    stored = stored_ids(engine)
    assert ids == [stored[r.uid] for r in results]
    assert len(set(ids)) == 5


def test_concurrent_results_are_committed_in_batches_not_one_by_one(engine: Engine) -> None:
    results = [result(uid=uuid.uuid4().hex) for _ in range(8)]
    recorder, ids = save_while_gated(engine, results)
    stored = stored_ids(engine)
    assert ids == [stored[r.uid] for r in results]
    assert recorder.batches == [1, 7]
    assert recorder.saved_alone == 0  # no batch fell back to storing its results one by one


def test_a_poison_result_fails_alone_when_its_callers_built_the_rows(engine: Engine) -> None:
    results = [result(uid=uuid.uuid4().hex) for _ in range(6)]
    results[3] = poison(uid=uuid.uuid4().hex)
    recorder, outcomes = save_while_gated(engine, results, warm=True)
    assert recorder.batches[:2] == [1, 5]
    assert recorder.prepared_rows[:2] == [1, 5]  # the poison's row too: the database refuses it
    refused = outcomes.pop(3)
    assert isinstance(refused, Exception) and classify(refused) is Failure.POISON
    stored = stored_ids(engine)
    assert outcomes == [stored[r.uid] for i, r in enumerate(results) if i != 3]
    assert results[3].uid not in stored


def test_each_caller_builds_its_row_and_gets_its_own_answer_back(engine: Engine) -> None:
    recorder = GatedRecorder(engine)
    recorder.gate.set()
    recorder.save(varied(0))  # caches the ids and makes the configuration's dictionary
    writer = GroupWriter(recorder, max_batch=7)
    results = [varied(i) for i in range(1, 121)]  # each its own body, headers, ids
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(writer.save, results))
    assert sum(recorder.prepared_rows) == sum(recorder.batches) == 120
    assert len(set(ids)) == 120
    assert_read_back(engine, ids, results)


def stored_row(engine: Engine, probe_id: int) -> dict[str, Any]:
    """Every column of a probe row but its id and uid."""
    with engine.connect() as connection:
        row = connection.execute(select(probes).where(probes.c.id == probe_id)).one()
    return {key: value for key, value in row._asdict().items() if key not in ("id", "uid")}


def test_a_row_its_caller_built_is_stored_as_the_transaction_builds_it(engine: Engine) -> None:
    recorder = Recorder(engine)
    assert recorder.prepare(varied(0)) is None  # nothing cached: built in the transaction
    recorder.save(varied(0))
    one = varied(1)
    prepared = recorder.prepare(one)
    assert prepared is not None
    [by_caller] = recorder.save_batch([(one, None)], [prepared])
    [in_transaction] = recorder.save_batch([(replace(one, uid=uuid.uuid4().hex), None)])
    assert stored_row(engine, by_caller) == stored_row(engine, in_transaction)
    assert [blob[0] for blob in stored_blobs(engine, by_caller)] == [2, 2]


def test_the_first_answer_after_errors_still_makes_the_dictionary(engine: Engine) -> None:
    recorder = Recorder(engine)
    failed = varied(0, ok=False, error_kind=ErrorKind.HTTP_SERVER_ERROR, raw_response=b"busy")
    recorder.save(failed)
    # The configuration is cached without a dictionary: an answer would make it.
    assert recorder.prepare(varied(1)) is None
    assert recorder.prepare(replace(failed, uid=uuid.uuid4().hex)) is not None
    writer = GroupWriter(recorder)
    results = [varied(1), varied(2)]
    ids = [writer.save(r) for r in results]
    assert_read_back(engine, ids, results)
    with engine.connect() as connection:
        assert connection.execute(select(func.count(CodecDictionaryRow.id))).scalar() == 1
    assert [blob[0] for blob in stored_blobs(engine, ids[1])] == [2, 2]


class PreparingAsItForgets(Recorder):
    """Builds `late`'s row at the last moment the ids of a failed transaction are cached: as
    a caller does that prepares while the leader's batch fails."""

    def __init__(self, engine: Engine, late: ProbeResult) -> None:
        super().__init__(engine)
        self.late = late
        self.stale: Prepared | None = None

    def _forget(self) -> None:
        if self.stale is None:
            self.stale = self.prepare(self.late)
        super()._forget()


def test_a_row_built_before_a_failed_transaction_is_built_again(engine: Engine) -> None:
    later = varied(2)
    recorder = PreparingAsItForgets(engine, later)
    # The first result creates its target, configuration, payload and dictionary; the poison
    # rolls them back with it.
    with pytest.raises(Exception) as raised:
        recorder.save_batch([(varied(1), None), (poison(), None)])
    assert classify(raised.value) is Failure.POISON
    assert recorder.stale is not None  # built with the ids rolled back
    [probe_id] = recorder.save_batch([(later, None)], [recorder.stale])
    assert_read_back(engine, [probe_id], [later])
    with engine.connect() as connection:
        [stored] = connection.execute(select(CodecDictionaryRow.dictionary)).scalars().all()
    assert later.raw_response in stored  # the dictionary was made again, from this answer


def test_a_database_gone_after_rows_were_built_fails_every_caller(
        sqlite_template: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(sqlite_template, folder / "monitor.db")
    engine = db.open_store(f"sqlite:///{folder}/monitor.db")
    recorder = GatedRecorder(engine)
    recorder.gate.set()
    recorder.save(result())
    engine.dispose()
    folder.rename(tmp_path / "moved")  # no file to open any more
    writer = GroupWriter(recorder)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(writer.save, result(uid=uuid.uuid4().hex)) for _ in range(4)]
    for future in futures:
        with pytest.raises(Exception) as raised:
            future.result(60)
        assert classify(raised.value) is Failure.UNAVAILABLE
    assert sum(recorder.prepared_rows) >= 1  # the first batch's rows were built by callers
    engine.dispose()
