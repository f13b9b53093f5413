"""Rebuilding a target's detection state from a long stored history (after an upgrade, an import
or a change of its thresholds) happens off the probe thread, and gives exactly the state and the
events of folding the whole history in one go (`monitor detect`), on both databases."""

from __future__ import annotations

import copy
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from monitor.alerts import watch
from monitor.alerts.watch import Watcher
from monitor.daemon import Daemon
from monitor.detect import TargetDetector
from monitor.domain import (
    AlertSettings,
    Choice,
    DriftEvent,
    ErrorKind,
    ProbeResult,
    RateLimits,
    Target,
    Usage,
)
from monitor.store import db, history
from monitor.store.models import DetectorStateRow, ProbeRow
from monitor.store.records import Recorder
from tests.conftest import empty_postgres

START = datetime(2026, 3, 1, tzinfo=UTC)
EVERY = timedelta(minutes=5)  # a day is 288 probes: the day-long accept periods pass quickly
CHUNK = 500  # probes read per query here: the histories span several
STORED = 8 * 288  # more than one chunk: rebuilt in the background
LATER = 300  # probes after the first catch-up
LIMITS = RateLimits(limit_requests=10_000, limit_tokens=30_000_000, remaining_requests=9_990,
                    remaining_tokens=29_990_000)


def varied_history(target: Target, count: int, seed: int = 7) -> list[ProbeResult]:
    """One a minute: two fingerprints 3:1, then a third one that stays and an old one that
    goes; an alias re-pointed (with a flap back); a request changed and changed back; latency
    doubling for a while, and tripling to the end; outages and an error-rate stretch; limits
    halved; 429 bursts; remaining quota running low; the answer and its token count moving."""
    rng = random.Random(seed)
    end = count * EVERY / timedelta(days=1)
    payload = {"model": target.model, "messages": [{"role": "user", "content": "ping"}],
               "temperature": 0, "seed": 7}
    results = []
    for i in range(count):
        day = i * EVERY / timedelta(days=1)
        prints = ["fp_a", "fp_a", "fp_a", "fp_b"] if day < 3 else ["fp_a", "fp_c"]
        if 5 < day < 5.2:
            prints = ["fp_a", "fp_a", "fp_a", "fp_a", "fp_c"]  # a shifted mix
        model = "gpt-4o-2025-05-13" if day > 2 and not 2.5 < day < 2.51 else "gpt-4o-2024-08-06"
        latency = 200.0
        if 1.2 < day < 1.3 or day > end - 0.7:
            latency = 600.0 if day > end - 0.7 else 400.0
        limits = LIMITS
        if day > 4:
            limits = replace(limits, limit_requests=5_000, remaining_requests=4_990)
        if 6 < day < 6.1:
            limits = replace(limits, remaining_tokens=1_000)
        asked = dict(payload, model="gpt-4o-mini") if 3.5 < day < 3.6 else payload
        total = latency * rng.lognormvariate(0, 0.15)
        result = ProbeResult(
            uid=uuid.uuid5(uuid.NAMESPACE_URL, f"{target.name}-{i}").hex, target_name=target.name, config_hash=target.config_hash,
            started_at=START + i * EVERY, stream=False,
            request_url=f"{target.base_url}/chat/completions", request_payload=asked, ok=True,
            http_status=200, total_ms=total, openai_processing_ms=0.8 * total,
            rate_limits=limits, model=model, system_fingerprint=rng.choice(prints),
            choices=(Choice(0, "stop", "pong" if day < 4.5 else "pong."),),
            usage=Usage(prompt_tokens=14 if day < 6.5 else 39),
        )
        outage = (i % 300) in range(150, 154) or 7 < day < 7.2 and rng.random() < 0.3
        throttled = (i % 700) in (50, 53, 55)
        if outage or throttled or rng.random() < 0.005:
            kind = ErrorKind.RATE_LIMITED if throttled else ErrorKind.HTTP_SERVER_ERROR
            result = replace(result, ok=False, error_kind=kind,
                             http_status=429 if throttled else 503, model=None,
                             system_fingerprint=None, choices=(), usage=Usage(),
                             rate_limits=RateLimits())
        results.append(result)
    return results


class Jobs:
    """Background work held until the test runs it."""

    def __init__(self) -> None:
        self.waiting: list[Callable[[], None]] = []

    def __call__(self, job: Callable[[], None]) -> None:
        self.waiting.append(job)

    def run(self) -> None:
        job = self.waiting.pop(0)
        job()


def store(recorder: Recorder, results: list[ProbeResult]) -> None:
    for start in range(0, len(results), 2_000):
        recorder.save_many(results[start:start + 2_000])


def full_fold(engine: Engine, target: Target, target_id: int,
              until: int | None = None) -> tuple[TargetDetector, list[tuple[int, DriftEvent]]]:
    """Every stored probe (up to `until`) folded in one go, with each event's probe id."""
    detector = TargetDetector(target.name, target.detection)
    events = []
    with engine.connect() as connection:
        for stored_id, observation in history.ObservationReader().all(connection, target_id,
                                                                       until=until):
            events += [(stored_id, event) for event in detector.step(observation)]
    return detector, events


def saved_state(engine: Engine, target_id: int) -> tuple[str, int, dict[str, Any]]:
    with engine.connect() as connection:
        row = connection.execute(select(DetectorStateRow.thresholds_hash,
                                        DetectorStateRow.last_probe_id)
                                 .where(DetectorStateRow.target_id == target_id)).one()
        return row.thresholds_hash, row.last_probe_id, history.unpack_state(
            history.load_state(connection, target_id))


@pytest.fixture
def canary(make_target: Callable[..., Target], monkeypatch: pytest.MonkeyPatch) -> Target:
    monkeypatch.setattr(history, "CHUNK", CHUNK)
    return make_target()


def test_a_long_history_is_rebuilt_off_the_probe_thread_into_the_full_folds_state(
    engine: Engine, canary: Target
) -> None:
    recorder = Recorder(engine)
    recorder.register(canary.name, canary.config_hash, {})
    results = varied_history(canary, STORED + LATER)
    store(recorder, results[:STORED])
    target_id = recorder.target_id(canary.name)
    jobs = Jobs()
    watcher = Watcher(engine, AlertSettings(), clock=lambda: START, background=jobs)

    first = recorder.save(results[STORED])
    assert watcher.catch_up(canary, target_id, first) == []
    assert watcher.rebuilding(canary.name) and len(jobs.waiting) == 1
    # Probes stored while it runs return at once: nothing is folded, nothing waits.
    meanwhile = [recorder.save(result) for result in results[STORED + 1:STORED + 100]]
    for probe_id in meanwhile:
        assert watcher.catch_up(canary, target_id, probe_id) == []
    jobs.run()
    assert not watcher.rebuilding(canary.name) and not jobs.waiting

    # The saved state is the state of the whole history folded in one go, up to the probe
    # before the first one seen; the full fold did raise events along the way.
    reference, old_events = full_fold(engine, canary, target_id, until=first - 1)
    kinds = {event.kind.value for _, event in old_events}
    assert kinds == {"fingerprint", "model", "latency", "quota", "availability", "output"}
    assert saved_state(engine, target_id) == (watch.thresholds_hash(canary.detection),
                                               first - 1, reference.snapshot())

    # Live detection takes up from there: the probes stored meanwhile, then new ones, give
    # exactly the events `monitor detect` finds over the whole history.
    live = []
    for probe_id in [meanwhile[-1], *(recorder.save(r) for r in results[STORED + 100:])]:
        live += watcher.catch_up(canary, target_id, probe_id)
    everything, events = full_fold(engine, canary, target_id)
    assert live == [event for stored_id, event in events if stored_id >= first]
    assert {event.kind.value for event in live} >= {"latency", "availability"}
    assert live == [e for e in watch.rerun(engine, canary, target_id) if e.at >= results[STORED]
                    .started_at]
    assert saved_state(engine, target_id)[2] == everything.snapshot()


def test_new_thresholds_rebuild_up_to_where_the_old_ones_stood(
    engine: Engine, canary: Target
) -> None:
    recorder = Recorder(engine)
    recorder.register(canary.name, canary.config_hash, {})
    results = varied_history(canary, STORED + 20)
    store(recorder, results[:STORED])
    target_id = recorder.target_id(canary.name)
    jobs = Jobs()
    old = Watcher(engine, AlertSettings(), clock=lambda: START, background=jobs)
    first = recorder.save(results[STORED])
    old.catch_up(canary, target_id, first)
    jobs.run()
    old.catch_up(canary, target_id, recorder.save(results[STORED + 1]))

    stricter = replace(canary, detection=replace(canary.detection, latency_ratio=1.2))
    watcher = Watcher(engine, AlertSettings(), clock=lambda: START, background=jobs)
    later = recorder.save(results[STORED + 2])
    assert watcher.catch_up(stricter, target_id, later) == []
    jobs.run()
    reference, _ = full_fold(engine, stricter, target_id, until=first + 1)
    assert saved_state(engine, target_id) == (watch.thresholds_hash(stricter.detection),
                                               first + 1, reference.snapshot())
    live = watcher.catch_up(stricter, target_id, recorder.save(results[STORED + 3]))
    _, events = full_fold(engine, stricter, target_id)
    assert live == [event for stored_id, event in events if stored_id > first + 1]


def test_a_rebuild_finished_by_another_daemon_first_is_dropped(
    engine: Engine, canary: Target
) -> None:
    recorder = Recorder(engine)
    recorder.register(canary.name, canary.config_hash, {})
    results = varied_history(canary, STORED + 5)
    store(recorder, results[:STORED])
    target_id = recorder.target_id(canary.name)
    jobs = Jobs()
    ours = Watcher(engine, AlertSettings(), clock=lambda: START, background=jobs)
    theirs = Watcher(engine, AlertSettings(), clock=lambda: START, background=jobs)
    first = recorder.save(results[STORED])
    ours.catch_up(canary, target_id, first)
    theirs.catch_up(canary, target_id, first)
    jobs.run()
    # Theirs also folds the next probe before our rebuild finishes.
    theirs.catch_up(canary, target_id, recorder.save(results[STORED + 1]))
    moved = saved_state(engine, target_id)
    jobs.run()
    assert saved_state(engine, target_id) == moved
    assert not ours.rebuilding(canary.name)


def test_rebuilds_queue_behind_one_worker(engine: Engine, canary: Target) -> None:
    other = replace(canary, name="other")
    recorder = Recorder(engine)
    jobs = Jobs()
    watcher = Watcher(engine, AlertSettings(), clock=lambda: START, background=jobs)
    firsts = {}
    for target in (canary, other):
        recorder.register(target.name, target.config_hash, {})
        results = varied_history(target, CHUNK + 2)
        store(recorder, results[:-1])
        firsts[target.name] = recorder.save(results[-1])
    for target in (canary, other):
        assert watcher.catch_up(target, recorder.target_id(target.name),
                                firsts[target.name]) == []
        assert watcher.rebuilding(target.name)
    assert len(jobs.waiting) == 1  # one worker takes both, one after the other
    jobs.run()
    for target in (canary, other):
        assert not watcher.rebuilding(target.name)
        target_id = recorder.target_id(target.name)
        reference, _ = full_fold(engine, target, target_id, until=firsts[target.name] - 1)
        assert saved_state(engine, target_id)[1:] == (firsts[target.name] - 1,
                                                      reference.snapshot())


def test_probes_keep_their_schedule_while_a_history_is_rebuilt(
    engine: Engine, make_daemon: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "CHUNK", CHUNK)
    daemon = make_daemon(engine, {"name": "canary", "interval": "1m"})
    [target] = daemon.settings.targets
    recorder = daemon.recorder
    results = varied_history(target, STORED)
    store(recorder, results)
    jobs = Jobs()
    daemon.watcher.background = jobs
    now = results[-1].started_at + timedelta(minutes=1)
    for minute in range(5):
        assert daemon.tick(now + timedelta(minutes=minute)) == 1  # probed while it waits
        assert daemon.watcher.rebuilding(target.name)
    jobs.run()
    assert daemon.tick(now + timedelta(minutes=5)) == 1
    target_id = recorder.target_id(target.name)
    with engine.connect() as connection:
        last = connection.execute(select(func.max(ProbeRow.id))
                                  .where(ProbeRow.target_id == target_id)).scalar_one()
    assert saved_state(engine, target_id)[1] == last


def test_live_detectors_kept_for_a_few_targets_give_the_full_folds_events(
    engine: Engine, make_target: Callable[..., Target], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two targets caught up in turn with room for one live detector: a catch-up either takes
    the detector kept from its target's last one or, when it was pushed out or another daemon
    folded since, restores the saved state; each target gets the events and the state of
    folding its history in one go."""
    monkeypatch.setattr(watch, "LIVE_DETECTORS", 1)
    one, two = make_target(name="one"), make_target(name="two")
    recorder = Recorder(engine)
    watcher = Watcher(engine, AlertSettings(), clock=lambda: START)
    for target in (one, two):
        recorder.register(target.name, target.config_hash, {})
    count = 3 * 288
    first, second = varied_history(one, count, seed=1), varied_history(two, count, seed=2)
    # "one" every time, "two" two times in three: runs of "one" use its kept detector, the
    # turns after "two" restore it.
    order = [(one, result) for result in first]
    for n, result in enumerate(second):
        order.insert(n * 3 // 2 + n, (two, result))
    # Now and then another daemon folds "one": the detector kept here is then behind.
    other = Watcher(engine, AlertSettings(), clock=lambda: START)
    live: dict[str, list[DriftEvent]] = {one.name: [], two.name: []}
    for n, (target, result) in enumerate(order):
        by = other if target is one and n % 100 == 7 else watcher
        live[target.name] += by.catch_up(target, recorder.target_id(target.name),
                                         recorder.save(result))
    for target in (one, two):
        target_id = recorder.target_id(target.name)
        everything, events = full_fold(engine, target, target_id)
        assert live[target.name] == [event for _, event in events]
        assert {event.kind.value for event in live[target.name]} >= {"availability", "latency"}
        assert saved_state(engine, target_id)[2] == everything.snapshot()
    assert len(watcher._live) == 1


def test_recorded_traffic_is_rebuilt_without_the_applications_own_rejected_requests(
    engine: Engine, canary: Target
) -> None:
    """On recorded traffic the application's own 4xx are not folded (watch._folds): the
    bulk rebuild and `monitor detect` leave them out exactly as stepping does."""
    traffic = replace(canary, traffic=True)
    recorder = Recorder(engine)
    recorder.register(traffic.name, traffic.config_hash, {})
    results = [
        replace(result, ok=False, error_kind=ErrorKind.HTTP_CLIENT_ERROR, http_status=400,
                model=None, system_fingerprint=None, choices=(), usage=Usage(),
                rate_limits=RateLimits())
        if n % 7 == 3 or 1_000 < n < 1_040 else result
        for n, result in enumerate(varied_history(traffic, STORED + 1))
    ]
    store(recorder, results[:STORED])
    target_id = recorder.target_id(traffic.name)
    jobs = Jobs()
    watcher = Watcher(engine, AlertSettings(), clock=lambda: START, background=jobs)
    first = recorder.save(results[STORED])
    assert watcher.catch_up(traffic, target_id, first) == []
    jobs.run()

    reference = TargetDetector(traffic.name, traffic.detection, watch.TRAFFIC_KINDS)
    events = []
    with engine.connect() as connection:
        for _, observation in history.ObservationReader().all(connection, target_id):
            if observation.error_kind is not ErrorKind.HTTP_CLIENT_ERROR:
                events += reference.step(observation)
                if observation.uid == results[STORED - 1].uid:
                    state = copy.deepcopy(reference.snapshot())  # it shares live parts
    assert saved_state(engine, target_id)[1:] == (first - 1, state)
    assert {event.kind.value for event in events} >= {"availability", "model", "fingerprint"}
    assert watch.rerun(engine, traffic, target_id) == events


@pytest.fixture
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    """PostgreSQL alone: SQLite has one writer, so there the position is locked and read apart."""
    empty_postgres(postgres_url)
    engine = db.open_store(postgres_url)
    yield engine
    engine.dispose()


def test_a_catch_up_that_waited_for_another_daemons_fold_reads_after_the_position_it_saved(
    postgres_engine: Engine, canary: Target
) -> None:
    """On PostgreSQL a catch-up locks the position and reads the probes after it in one
    statement. When the lock waited for another daemon's fold, PostgreSQL hands back the position
    that daemon saved but the probes read from the one before it: those are not used, and the
    probes after the saved position are read again."""
    engine = postgres_engine
    recorder = Recorder(engine)
    recorder.register(canary.name, canary.config_hash, {})
    results = varied_history(canary, 40)
    target_id = recorder.target_id(canary.name)
    watcher = Watcher(engine, AlertSettings(), clock=lambda: START)
    for result in results[:30]:
        watcher.catch_up(canary, target_id, recorder.save(result))
    later = [recorder.save(result) for result in results[30:]]
    reader = history.ObservationReader()
    with engine.begin() as connection:  # nobody else folding: the probes after it, at once
        position, packed, newer = reader.locked_after(connection, target_id)
        assert newer == reader.after(connection, target_id, later[0] - 1)
        assert packed == history.load_state(connection, target_id)  # once, on the first row
    assert position == (watch.thresholds_hash(canary.detection), later[0] - 1)

    theirs, _ = full_fold(engine, canary, target_id, until=later[4])
    got: list[Any] = []
    with engine.begin() as other:  # another daemon folds the first five and saves
        history.lock_position(other, target_id)
        history.save_state(other, target_id, position[0], later[4],
                           history.pack_state(theirs.snapshot()), START)
        waiting = threading.Thread(target=lambda: got.append(_locked_after(engine, target_id)))
        waiting.start()
        deadline = time.monotonic() + 10
        while not _waiting_for_a_lock(engine):
            assert time.monotonic() < deadline, "the catch-up never waited for the lock"
            time.sleep(0.01)
    waiting.join(10)
    assert got == [((position[0], later[4]), history.pack_state(theirs.snapshot()), None)]
    # Then a catch-up here folds the probes after the position saved, not those before it.
    live = watcher.catch_up(canary, target_id, later[-1])
    everything, events = full_fold(engine, canary, target_id)
    assert saved_state(engine, target_id)[1:] == (later[-1], everything.snapshot())
    assert live == [event for stored_id, event in events if stored_id > later[4]]


def _locked_after(engine: Engine, target_id: int) -> Any:
    with engine.begin() as connection:
        return history.ObservationReader().locked_after(connection, target_id)


def _waiting_for_a_lock(engine: Engine) -> bool:
    # A connection of its own: pg_stat_activity stays as it was for a whole transaction.
    with engine.connect() as connection:
        return bool(connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()").scalar_one())
