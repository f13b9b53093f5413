"""Rollups: folded incrementally from probes stored through the real write path, idempotent,
exactly once under concurrent callers, and a late probe lands in its own old hour."""

from __future__ import annotations

import math
import random
import threading
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, insert, select

from monitor.domain import CheckOutcome, CheckResult, ErrorKind, ProbeResult, RateLimits, Usage
from monitor.health import metrics_snapshot
from monitor.sketch import Sketch
from monitor.snapshot import LATENCY_BUCKETS_S
from monitor.store import aggregate as folded
from monitor.store import db, rollups
from monitor.store.models import (
    DailyRollupRow,
    HourlyRollupRow,
    ProbeRow,
    RollupStateRow,
    RollupTotalRow,
)
from monitor.store.records import Recorder, _probe_values, count_probes
from monitor.store.replays import LinkedWriter
from monitor.store.schema import check_results
from monitor.store.shared import FacetIds
from tests.conftest import empty_postgres

START = datetime(2026, 11, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
ERRORS = [(ErrorKind.READ_TIMEOUT, None), (ErrorKind.HTTP_SERVER_ERROR, 503),
          (ErrorKind.RATE_LIMITED, 429), (ErrorKind.CONNECTION_REFUSED, None)]


def varied_history(count: int, *, target: str = "gpt-4o", stream: bool = False,
                   start: datetime = START, step: timedelta = timedelta(minutes=20),
                   seed: int = 1) -> list[ProbeResult]:
    """Probes as probe.run returns them: lognormal latency, errors of several kinds, two
    fingerprints (and probes without one), a model re-pointed halfway, shrinking quota."""
    rng = random.Random(seed)
    results = []
    for i in range(count):
        # Jittered within the step, to the microsecond, so no two probes share an instant.
        at = start + i * step + timedelta(microseconds=rng.randrange(int(step / 2 / _US)))
        common: dict[str, Any] = {
            "uid": uuid.uuid4().hex, "target_name": target, "config_hash": "0" * 64,
            "started_at": at, "stream": stream, "request_url": "http://sim/v1/chat/completions",
            "request_payload": {"model": "gpt-4o", "messages": [], "stream": stream},
        }
        remaining = 10_000 - rng.randrange(3000)
        limits = RateLimits(limit_requests=10_000, limit_tokens=30_000_000,
                            remaining_requests=remaining,
                            remaining_tokens=30_000_000 - rng.randrange(10**6),
                            reset_requests_s=6.0, reset_tokens_s=0.01)
        if rng.random() < 0.06:
            kind, status = rng.choice(ERRORS)
            results.append(ProbeResult(
                **common, ok=False, error_kind=kind, http_status=status,
                error_detail=f"{kind.value} at probe {i}",
                total_ms=30_000.0 if kind is ErrorKind.READ_TIMEOUT else rng.uniform(1, 50),
                rate_limits=RateLimits(limit_requests=10_000, remaining_requests=0)
                if status == 429 else RateLimits()))
            continue
        total = 400 * rng.lognormvariate(0, 0.5)
        fingerprint = rng.choice(["fp_a", "fp_a", "fp_a", "fp_b", None])
        completion = rng.randrange(1, 9)
        results.append(ProbeResult(
            **common, ok=True, http_status=200, total_ms=total,
            time_to_headers_ms=total * rng.uniform(0.3, 0.99),
            time_to_first_token_ms=total * rng.uniform(0.2, 0.6) if stream else None,
            output_tokens_per_s=rng.lognormvariate(4, 0.3) if stream else None,
            openai_processing_ms=total * 0.8 if rng.random() < 0.9 else None,
            rate_limits=limits, system_fingerprint=fingerprint,
            model="gpt-4o-2024-08-06" if i < count // 2 else "gpt-4o-2024-11-20",
            usage=Usage(prompt_tokens=14, completion_tokens=completion,
                        total_tokens=14 + completion),
            raw_response=b'{"id":"chatcmpl-x","object":"chat.completion"}',
            response_headers={"x-request-id": f"req_{i}"}))
    return results


def store(engine: Engine, results: list[ProbeResult], seed: int = 2) -> None:
    """Through Recorder.save_many in shuffled batches: ids do not follow started_at, as when
    a spool drains probes from an outage after newer ones were stored."""
    shuffled = list(results)
    random.Random(seed).shuffle(shuffled)
    recorder = Recorder(engine)
    for i in range(0, len(shuffled), 250):
        recorder.save_many(shuffled[i:i + 250])


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(max(math.ceil(q * len(ordered)), 1), len(ordered)) - 1]


def rollup(engine: Engine, span: str, start: datetime) -> folded.Aggregate:
    with engine.connect() as connection:
        model = HourlyRollupRow if span == "hour" else DailyRollupRow
        row = connection.execute(select(model.__table__).where(model.start_at == start)).one()
    return folded.Aggregate.from_row(row)


def test_hours_and_days_hold_exactly_their_probes(engine: Engine) -> None:
    results = varied_history(200, stream=True)
    store(engine, results)
    assert rollups.catch_up(engine, batch=64) == 200
    hour = folded.floor_hour(results[50].started_at)
    inside = [r for r in results if folded.floor_hour(r.started_at) == hour]
    aggregate = rollup(engine, "hour", hour)
    assert aggregate.probes == len(inside)
    assert aggregate.ok == sum(r.ok for r in inside)
    day = folded.floor_day(results[0].started_at)
    inside = [r for r in results if folded.floor_day(r.started_at) == day]
    aggregate = rollup(engine, "day", day)
    ok = [r for r in inside if r.ok]
    assert aggregate.probes == len(inside)
    assert aggregate.errors == dict(Counter(r.error_kind.value for r in inside
                                            if r.error_kind))
    assert aggregate.total_tokens == sum(r.usage.total_tokens or 0 for r in ok)
    assert aggregate.sketch("ttft").count == len(ok)
    totals = [r.total_ms for r in ok if r.total_ms is not None]
    assert aggregate.sketch("total").quantile(0.95) == pytest.approx(
        nearest_rank(totals, 0.95), rel=0.01)
    fp_a = [r.started_at for r in inside if r.system_fingerprint == "fp_a"]
    assert aggregate.fingerprints["fp_a"] == [len(fp_a), folded.micros(min(fp_a)),
                                              folded.micros(max(fp_a))]
    failed = max((r for r in inside if not r.ok), key=lambda r: r.started_at)
    assert aggregate.last_error == folded.LastError(
        failed.started_at, failed.error_kind.value if failed.error_kind else None,
        failed.http_status, failed.error_detail)
    newest = max((r for r in inside if r.rate_limits != RateLimits()),
                 key=lambda r: r.started_at)
    assert aggregate.limits is not None
    assert aggregate.limits.remaining_requests == newest.rate_limits.remaining_requests
    assert aggregate.min_headroom_requests == min(
        r.rate_limits.remaining_requests / r.rate_limits.limit_requests for r in inside
        if r.rate_limits.remaining_requests is not None and r.rate_limits.limit_requests)


def test_catching_up_twice_folds_nothing_new(engine: Engine) -> None:
    store(engine, varied_history(120))
    assert rollups.catch_up(engine) == 120
    assert rollups.catch_up(engine) == 0
    with engine.connect() as connection:
        assert connection.execute(select(func.sum(DailyRollupRow.probes))).scalar() == 120
        assert connection.execute(select(func.sum(HourlyRollupRow.probes))).scalar() == 120
        assert connection.execute(select(RollupTotalRow.probes)).scalar() == 120


def test_a_probe_drained_late_lands_in_its_own_old_hour(engine: Engine) -> None:
    results = varied_history(30)
    store(engine, results[1:])
    rollups.catch_up(engine)
    hour = folded.floor_hour(results[0].started_at)
    before = rollup(engine, "hour", hour).probes
    Recorder(engine).save_many(results[:1])
    assert rollups.catch_up(engine) == 1
    assert rollup(engine, "hour", hour).probes == before + 1
    assert rollup(engine, "day", folded.floor_day(hour)).probes == 30


def test_folding_in_many_small_batches_equals_folding_at_once(
        engine: Engine, database_url: str) -> None:
    results = checked(varied_history(150, seed=5))
    store(engine, results)
    rollups.catch_up(engine, batch=7)
    small = _everything(engine)
    with engine.begin() as connection:
        connection.execute(HourlyRollupRow.__table__.delete())
        connection.execute(DailyRollupRow.__table__.delete())
        connection.execute(RollupTotalRow.__table__.delete())
        connection.execute(RollupStateRow.__table__.delete())
    rollups.catch_up(engine)
    assert _everything(engine) == small


def _everything(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        rows = [*connection.execute(select(HourlyRollupRow.__table__).order_by(
            HourlyRollupRow.target_id, HourlyRollupRow.start_at)),
                *connection.execute(select(DailyRollupRow.__table__).order_by(
                    DailyRollupRow.target_id, DailyRollupRow.start_at))]
        totals = connection.execute(select(
            RollupTotalRow.target_id, RollupTotalRow.probes, RollupTotalRow.newest_at,
            RollupTotalRow.newest_ok, RollupTotalRow.ok_at, RollupTotalRow.ok_fingerprint,
            RollupTotalRow.ok_model, RollupTotalRow.limits_at, RollupTotalRow.remaining_requests,
            RollupTotalRow.checks)).all()
    # Sketch sums may differ in the last bit with the order of addition.
    return [*[(r.start_at, r.probes, r.errors, r.fingerprints, r.models, r.limits_at,
               r.min_headroom_tokens, r.last_error_at,
               Sketch.from_bytes(r.total_ms_sketch)._buckets() if r.total_ms_sketch else None)
              for r in rows], *map(tuple, totals)]


def test_concurrent_callers_fold_each_probe_once(engine: Engine, database_url: str) -> None:
    store(engine, varied_history(400, seed=3))
    others = [db.create(database_url) for _ in range(3)]
    folded: list[int] = []
    threads = [threading.Thread(target=lambda e=e: folded.append(rollups.catch_up(e, batch=20)))
               for e in [engine, *others]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for other in others:
        other.dispose()
    assert sum(folded) == 400
    with engine.connect() as connection:
        assert connection.execute(select(RollupTotalRow.probes)).scalar() == 400


def test_an_id_committed_after_a_higher_one_is_still_folded(postgres_url: str) -> None:
    """PostgreSQL hands out ids before commit: id 2 can commit after id 3 was folded."""
    empty_postgres(postgres_url)
    engine = db.open_store(postgres_url)
    try:
        stored, late, early = varied_history(3, seed=7)
        recorder = Recorder(engine)
        recorder.save(stored)
        with engine.connect() as connection:
            row = connection.execute(select(ProbeRow.__table__)).one()
            keys = (row.target_id, row.target_config_id, row.request_payload_id)
        row = _probe_values(late, *keys)
        with engine.begin() as connection:
            FacetIds().take(connection, row)
        with engine.connect() as slow:
            slow.execute(insert(ProbeRow), row)  # takes id 2
            recorder.save(early)  # id 3, committed first
            assert rollups.catch_up(engine) == 2
            assert rollups.settled_id(engine) == 1
            assert count_probes(engine) == 2
            slow.commit()
        assert count_probes(engine) == 3  # id 2, in the watermark's gap
        assert rollups.catch_up(engine) == 1
        assert rollups.catch_up(engine) == 0
        with engine.connect() as connection:
            assert connection.execute(select(RollupTotalRow.probes)).scalar() == 3
            assert connection.execute(select(RollupStateRow.gaps)).scalar() == []
        assert rollups.settled_id(engine) == 3
    finally:
        engine.dispose()


def test_gaps_expire_and_found_ids_split_them() -> None:
    now = 10**12
    gaps = rollups._next_gaps([[5, 9, now], [20, 20, 0]], [7], 10, [12, 13, 16], now)
    assert gaps == [[5, 6, now], [8, 9, now], [11, 11, now], [14, 15, now]]


def test_metrics_come_from_totals_and_the_newest_probes(engine: Engine) -> None:
    results = varied_history(300, seed=4)
    store(engine, results)
    rollups.catch_up(engine)
    snapshot = metrics_snapshot(engine)
    [metrics] = snapshot.targets
    ok = [r for r in results if r.ok]
    assert metrics.outcomes == {"ok": len(ok), **Counter(
        r.error_kind.value for r in results if r.error_kind)}
    histogram = metrics.latency["total"]
    assert histogram.count == len(ok)
    assert histogram.sum_s == pytest.approx(sum(r.total_ms or 0 for r in ok) / 1000)
    for bound, got in zip(LATENCY_BUCKETS_S, histogram.cumulative, strict=True):
        sure = sum((r.total_ms or 0) <= bound * 995 for r in ok)
        possible = sum((r.total_ms or 0) <= bound * 1005 for r in ok)
        assert sure <= got <= possible
    assert "ttft" not in metrics.latency
    newest_ok = max(ok, key=lambda r: r.started_at)
    assert (metrics.fingerprint, metrics.model) == (newest_ok.system_fingerprint,
                                                    newest_ok.model)
    newest = max((r for r in results if r.rate_limits != RateLimits()),
                 key=lambda r: r.started_at)
    assert metrics.remaining_requests == newest.rate_limits.remaining_requests
    assert not any(metrics.open_alerts.values())
    last = max(results, key=lambda r: r.started_at)
    assert (metrics.last_probe_timestamp_s, metrics.last_probe_ok) == (
        last.started_at.timestamp(), last.ok)
    assert snapshot.notifications_failed == {"log": 0}


def test_probes_are_counted_exactly_from_the_totals_and_what_is_not_folded(
        engine: Engine) -> None:
    def counted() -> tuple[int, int]:
        with engine.connect() as connection:
            return (count_probes(engine),
                    connection.execute(select(func.count(ProbeRow.id))).scalar_one())

    results = varied_history(120, seed=8)
    store(engine, results[:50])
    assert counted() == (50, 50)  # never rolled up: all counted one by one
    rollups.catch_up(engine, batch=7)
    assert counted() == (50, 50)  # all from the totals
    store(engine, results[50:])
    LinkedWriter(engine).save(replace(results[0], uid=uuid.uuid4().hex), {}, replay_of=1)
    assert counted() == (121, 121)  # 50 folded, 70 above the watermark, a replay
    rollups.catch_up(engine)
    assert counted() == (121, 121)  # the replay is never folded, but still counted


def checked(results: list[ProbeResult]) -> list[ProbeResult]:
    """Every third probe with two checks, as a quality canary stores them."""
    return [replace(r, checks=(
        CheckResult("answer_format", CheckOutcome.PASS if r.ok else CheckOutcome.NOT_APPLICABLE),
        CheckResult("json_schema", CheckOutcome.FAIL if i % 2 else CheckOutcome.PASS),
    )) if i % 3 == 0 else r for i, r in enumerate(results)]


def test_totals_count_each_check_outcome_once_and_none_of_replays(engine: Engine) -> None:
    results = checked(varied_history(150, seed=6))
    store(engine, results[:90])
    rollups.catch_up(engine, batch=7)
    store(engine, results[90:])
    LinkedWriter(engine).save(replace(results[0], uid=uuid.uuid4().hex), {}, replay_of=1)
    with engine.begin() as connection:
        replay = connection.execute(select(func.max(ProbeRow.id))).scalar_one()
        connection.execute(insert(check_results), {  # as `monitor import` stores a replay's
            "probe_id": replay, "check_name": "answer_format", "target_id": 1,
            "started_at": results[0].started_at, "outcome": "fail"})
    rollups.catch_up(engine, batch=11)
    expected = Counter((c.check, c.outcome.value) for r in results for c in r.checks)
    [metrics] = metrics_snapshot(engine).targets
    assert metrics.check_results == dict(expected)
    assert rollups.catch_up(engine) == 0
    assert metrics_snapshot(engine).targets[0].check_results == dict(expected)


def test_a_scrape_runs_as_many_statements_for_many_targets_as_for_one(
        engine: Engine) -> None:
    """/metrics reads totals, never the probes target by target: at 10,000 targets those
    were 30,000 statements a scrape (bench/metrics_scrape.py)."""
    def statements() -> int:
        counted = []

        def count(*_: object) -> None:
            counted.append(1)

        event.listen(engine, "before_cursor_execute", count)
        try:
            metrics_snapshot(engine)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return len(counted)

    store(engine, varied_history(20, seed=8))
    rollups.catch_up(engine)
    one = statements()
    for i in range(5):
        store(engine, varied_history(20, target=f"other-{i}", seed=9 + i))
    rollups.catch_up(engine)
    assert len(metrics_snapshot(engine).targets) == 6
    assert statements() == one
