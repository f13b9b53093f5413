"""Group commit (issue 14): results that finish together share one transaction, each caller
returns only once its own row is committed, and a bad result fails alone."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text

from monitor.domain import ProbeResult, SlotState
from monitor.store import db, leases
from monitor.store.failures import Failure, classify
from monitor.store.models import ProbeRow, SlotRow
from monitor.store.records import Recorder
from monitor.store.writer import GroupWriter
from tests.test_codec import assert_read_back, varied
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
        self.saved_alone = 0  # results stored one by one (after their batch failed)

    def save_batch(self, batch: Sequence[tuple[ProbeResult, dict[str, Any] | None]],
                   slots: Sequence[datetime | None] = ()) -> list[int]:
        self.batches.append(len(batch))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.gate.wait(60)
        return super().save_batch(batch, slots)

    def save(self, result: ProbeResult, config: dict[str, Any] | None = None,
             slot_at: datetime | None = None) -> int:
        self.saved_alone += 1
        return super().save(result, config, slot_at)


def stored_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {uid: probe_id for uid, probe_id in connection.execute(
            select(ProbeRow.uid, ProbeRow.id))}


def queued(writer: GroupWriter) -> int:
    with writer._lock:  # the writer's own queue: what the test waits on
        return len(writer._queue)


def save_while_gated(engine: Engine, results: list[ProbeResult],
                     slots: Sequence[datetime | None] = (),
                     ) -> tuple[GatedRecorder, list[Any]]:
    """The first result leads and is held; the rest queue behind it; then the gate opens.
    `slots`: the slot each result settles, if any."""
    recorder = GatedRecorder(engine)
    writer = GroupWriter(recorder)
    settles = list(slots) or [None] * len(results)
    with ThreadPoolExecutor(len(results)) as pool:
        first = pool.submit(writer.save, results[0], None, settles[0])
        assert recorder.entered.wait(60)
        rest = [pool.submit(writer.save, r, None, s) for r, s in zip(results[1:], settles[1:])]
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
    engine = db.create(f"sqlite:///{tmp_path}/missing/dir/monitor.db")
    every_caller_finds_it_unavailable(GroupWriter(Recorder(engine)))


def every_caller_finds_it_unavailable(writer: GroupWriter) -> None:
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


def claimed_slots(engine: Engine, count: int) -> list[datetime]:
    """`count` slots of the test results' target, claimed by this instance."""
    target_id = Recorder(engine).target_id(result().target_name)
    first = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
    slots = [first + timedelta(minutes=i) for i in range(count)]
    for slot in slots:
        assert leases.claim(engine, target_id, slot, "test:1:a") is leases.Claim.OURS
    return slots


def slot_states(engine: Engine) -> dict[datetime, tuple[str, str | None]]:
    with engine.connect() as connection:
        return {slot: (state, uid) for slot, state, uid in connection.execute(
            select(SlotRow.slot_at, SlotRow.state, SlotRow.probe_uid))}


def test_each_stored_probe_settles_its_slot_in_the_same_commit(engine: Engine) -> None:
    results = [result(uid=uuid.uuid4().hex) for _ in range(6)]
    slots = claimed_slots(engine, 6)
    settles: list[datetime | None] = [*slots[:5], None]  # the last one has no slot of its own
    recorder, ids = save_while_gated(engine, results, settles)
    assert recorder.batches == [1, 5] and recorder.saved_alone == 0
    assert all(isinstance(i, int) for i in ids)
    states = slot_states(engine)
    assert [states[s] for s in slots[:5]] == [
        (SlotState.PROBED.value, r.uid) for r in results[:5]]
    assert states[slots[5]] == (SlotState.CLAIMED.value, None)


def test_a_poison_result_leaves_its_slot_claimed_and_the_others_settled(
        engine: Engine) -> None:
    results = [result(uid=uuid.uuid4().hex) for _ in range(4)]
    results[2] = poison(uid=uuid.uuid4().hex)
    slots = claimed_slots(engine, 4)
    recorder, outcomes = save_while_gated(engine, results, slots)
    assert recorder.batches == [1, 3] and recorder.saved_alone == 3
    assert classify(outcomes[2]) is Failure.POISON
    states = slot_states(engine)
    assert [states[s][0] for s in slots] == [SlotState.PROBED.value] * 2 + [
        SlotState.CLAIMED.value, SlotState.PROBED.value]
    assert states[slots[3]][1] == results[3].uid



def test_bursts_of_threads_reuse_the_pooled_connections(engine: Engine) -> None:
    """As many threads as the pool keeps, each in a transaction at the same moment, burst
    after burst (the daemon's probe threads on the slot grid): the connections are opened
    once and kept, not opened and closed per burst (on PostgreSQL a server backend each)."""
    kept = engine.pool.size()  # type: ignore[attr-defined]
    assert kept == (db.POOL_SIZE if engine.dialect.name == "postgresql" else db.SQLITE_POOL_SIZE)
    opened: list[object] = []
    event.listen(engine, "connect", lambda *_: opened.append(None))
    together = threading.Barrier(kept, timeout=60)

    def transaction(_: int) -> None:
        with engine.begin() as connection:
            connection.execute(text("SELECT 1"))
            together.wait()  # every thread holds a connection at once

    with ThreadPoolExecutor(kept) as pool:
        for _ in range(5):
            list(pool.map(transaction, range(kept)))
    assert len(opened) <= kept


def test_callers_beyond_the_pool_wait_for_a_connection_rather_than_open_one(
        postgres_url: str) -> None:
    """Three times as many threads as the pool keeps, each holding a connection a moment
    (a daemon that fell behind): on PostgreSQL they take turns on the pooled connections, and
    no backend is started and stopped for each."""
    engine = db.open_store(postgres_url)
    kept = engine.pool.size()  # type: ignore[attr-defined]
    opened: list[object] = []
    event.listen(engine, "connect", lambda *_: opened.append(None))
    ran = threading.Semaphore(0)

    def transaction(_: int) -> None:
        with engine.begin() as connection:
            connection.execute(text("SELECT 1"))
            ran.release()
            time.sleep(0.005)  # hold it: not a wait for anything, just a busy caller

    try:
        with ThreadPoolExecutor(3 * kept) as pool:
            for _ in range(3):
                list(pool.map(transaction, range(3 * kept)))
    finally:
        engine.dispose()
    assert len(opened) <= kept == db.POOL_SIZE
    assert ran.acquire(blocking=False)  # the transactions ran


def test_each_concurrent_caller_gets_the_id_of_its_own_answer(engine: Engine) -> None:
    recorder = Recorder(engine)
    recorder.save(varied(0))  # the configuration's dictionary: the others are stored against it
    writer = GroupWriter(recorder, max_batch=7)
    results = [varied(i) for i in range(1, 121)]  # each its own body, headers and ids
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(writer.save, results))
    assert len(set(ids)) == 120
    assert_read_back(engine, ids, results)  # each id's row holds its caller's bytes


def test_a_database_gone_after_ids_were_cached_fails_every_caller(
        sqlite_template: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(sqlite_template, folder / "monitor.db")
    engine = db.open_store(f"sqlite:///{folder}/monitor.db")
    recorder = Recorder(engine)
    recorder.save(result())  # ids and dictionary cached: no lookup before the insert fails
    engine.dispose()
    folder.rename(tmp_path / "moved")  # no file to open any more
    every_caller_finds_it_unavailable(GroupWriter(recorder))
    engine.dispose()


def _terminate_pool_backend(postgres_url: str, engine: Engine) -> None:
    """What a server restart or a firewall's idle timeout does to a pooled connection: the
    server ends it while it sits in the pool (the engine's pool holds one here)."""
    with engine.connect() as connection:
        own = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    admin = db.create(postgres_url)
    try:
        with admin.connect() as connection:
            ended = connection.execute(text("SELECT pg_terminate_backend(:pid)"),
                                       {"pid": own}).scalar_one()
    finally:
        admin.dispose()
    assert ended


def test_a_connection_closed_while_idle_is_replaced_before_use(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled connection that sat idle past PING_IDLE_S is pinged before use; the server
    having closed it meanwhile, the caller gets a new one and never sees an error."""
    engine = db.create(postgres_url)
    try:
        _terminate_pool_backend(postgres_url, engine)
        monkeypatch.setattr(db, "PING_IDLE_S", 0.0)  # every pooled connection counts as idle
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_a_connection_in_steady_use_is_not_pinged_and_a_dead_one_fails_only_once(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ping before a connection used a moment ago (a busy daemon's: a round trip saved per
    transaction). If the server closed it anyway, the first statement fails, the engine drops
    the pool, and the next caller gets a fresh connection: the daemon's retries and its spool
    keep the probe."""
    monkeypatch.setattr(db, "PING_IDLE_S", 3600.0)
    engine = db.create(postgres_url)
    pings: list[object] = []
    original_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping",
                        lambda conn: pings.append(conn) or original_ping(conn))
    try:
        for _ in range(3):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        assert pings == []
        _terminate_pool_backend(postgres_url, engine)
        with pytest.raises(Exception) as failed, engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        assert classify(failed.value) is Failure.UNAVAILABLE
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
