"""The report's numbers equal those computed independently from the probes that were stored:
counts, errors and tokens exactly, percentiles within 1%, for ranges that cut through hours
and days, on both databases. Replays stored among the probes count in none of them: they are
listed apart; skipped slots are counted by kind."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from monitor.domain import ProbeResult, RateLimits, SkipKind, SlotState
from monitor.health import build_report, metrics_snapshot
from monitor.store import aggregate, rollups, timeline
from monitor.store.models import AlertRow, ProbeRow, SlotRow, TargetRow
from monitor.store.replays import LinkedWriter
from monitor.store.schema import float32
from tests.test_rollups import START, nearest_rank, store, varied_history

NOW = datetime(2026, 12, 1, tzinfo=UTC)
PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
PHASES = {"total": "total_ms", "headers": "time_to_headers_ms",
          "ttft": "time_to_first_token_ms", "processing": "openai_processing_ms"}


@dataclass(frozen=True)
class History:
    canaries: dict[str, list[ProbeResult]]
    replays: list[tuple[int, int, ProbeResult]]  # (probe id, replay_of, what was stored)
    skips: list[tuple[str, datetime, str]]  # (target, slot, kind) of skipped slots


@pytest.fixture
def history(engine: Engine) -> History:
    """17 days of two targets, one streaming, every 20 minutes, with replays stored among
    them (answers unlike any canary's: another fingerprint and model, other latencies),
    skipped slots of every kind, and slots reserved or probed that are not skips; rollups
    caught up."""
    stored = {"gpt-4o": varied_history(1224, seed=11),
              "gpt-4o-stream": varied_history(1224, target="gpt-4o-stream", stream=True,
                                              seed=12)}
    rng = random.Random(13)
    results = [r for results in stored.values() for r in results]
    store(engine, results[:1500])
    replays = []
    writer = LinkedWriter(engine)
    with engine.connect() as connection:
        originals = connection.execute(select(ProbeRow.id)).scalars().all()
    for result in varied_history(150, target="gpt-4o", step=timedelta(hours=2), seed=14):
        sent = replace(result, target_name=rng.choice(list(stored)), system_fingerprint="fp_re",
                       model="replayed-model")
        original = rng.choice(originals)
        replays.append((writer.save(sent, {}, replay_of=original), original, sent))
    store(engine, results[1500:])  # canaries stored after the replays too
    skips = []
    with engine.begin() as connection:
        ids = dict(connection.execute(select(TargetRow.name, TargetRow.id)).all())
        for i in range(400):
            name, slot = rng.choice(list(stored)), START + timedelta(minutes=61 * i + 7)
            state = rng.choice([SlotState.SKIPPED, SlotState.SKIPPED, SlotState.RESERVED,
                                SlotState.PROBED])
            kind = rng.choice(list(SkipKind))
            connection.execute(insert(SlotRow), {
                "target_id": ids[name], "slot_at": slot, "instance_id": "test",
                "state": state.value, "reason": "why",
                "reason_kind": None if state is SlotState.PROBED else kind.value})
            if state is SlotState.SKIPPED:
                skips.append((name, slot, kind.value))
    rollups.catch_up(engine)
    return History({name: [as_stored(r) for r in results] for name, results in stored.items()},
                   [(probe_id, original, as_stored(r)) for probe_id, original, r in replays],
                   skips)


def as_stored(result: ProbeResult) -> ProbeResult:
    """`result` with its measured values as the store keeps them (schema.Float32)."""
    limits = result.rate_limits
    return replace(
        result, total_ms=float32(result.total_ms),
        time_to_headers_ms=float32(result.time_to_headers_ms),
        time_to_first_token_ms=float32(result.time_to_first_token_ms),
        output_tokens_per_s=float32(result.output_tokens_per_s),
        openai_processing_ms=float32(result.openai_processing_ms),
        retry_after_s=float32(result.retry_after_s),
        rate_limits=replace(limits, reset_requests_s=float32(limits.reset_requests_s),
                            reset_tokens_s=float32(limits.reset_tokens_s),
                            reset_input_tokens_s=float32(limits.reset_input_tokens_s),
                            reset_output_tokens_s=float32(limits.reset_output_tokens_s)))


def expected(results: list[ProbeResult], since: datetime, until: datetime,
             bucket: str, skips: list[tuple[str, datetime, str]],
             ids: dict[str, int] | None = None) -> dict[str, Any]:
    """The report's target entry, computed from the canaries and skipped slots alone."""
    inside = sorted((r for r in results if since <= r.started_at < until),
                    key=lambda r: r.started_at)
    ok = [r for r in inside if r.ok]
    failed = [r for r in inside if not r.ok]
    limited = [r for r in inside if r.rate_limits != RateLimits()]
    floor = aggregate.floor_hour if bucket == "hour" else aggregate.floor_day
    series: dict[datetime, list[ProbeResult]] = {}
    for r in inside:
        series.setdefault(floor(r.started_at), []).append(r)
    speeds = [r.output_tokens_per_s for r in ok if r.output_tokens_per_s is not None]
    return {
        "target": results[0].target_name,
        "probes": len(inside),
        "ok": len(ok),
        "success_rate": round(len(ok) / len(inside), 4) if inside else None,
        "errors": dict(sorted(Counter(r.error_kind.value for r in failed
                                      if r.error_kind).items())),
        "skipped": dict(sorted(Counter(
            kind for name, slot, kind in skips
            if name == results[0].target_name and since <= slot < until).items())),
        "checks": [],  # no checks on these canaries (tests/test_quality.py has some)
        "latency_ms": {key: percentiles([getattr(r, column) for r in ok])
                       for key, column in PHASES.items()},
        "output_tokens_per_s": percentiles(speeds),
        "tokens": {"prompt": sum(r.usage.prompt_tokens or 0 for r in ok),
                   "completion": sum(r.usage.completion_tokens or 0 for r in ok),
                   "total": sum(r.usage.total_tokens or 0 for r in ok)},
        "fingerprints": seen("fingerprint", [(r.system_fingerprint, r.started_at)
                                             for r in inside]),
        "models": seen("model", [(r.model, r.started_at) for r in inside]),
        "rate_limits": limits(limited[-1]) if limited else None,
        "last_error": {"at": failed[-1].started_at.isoformat(),
                       "error_kind": failed[-1].error_kind,
                       "http_status": failed[-1].http_status,
                       "detail": failed[-1].error_detail} if failed else None,
        "series": {"bucket": bucket, "columns": columns(
            [probe_point(r, (ids or {})[r.uid]) for r in inside], PROBE_FIELDS)
            if bucket == "probe" else columns([point(t, series[t]) for t in sorted(series)],
                                              BUCKET_FIELDS)},
    }


PROBE_FIELDS = ("t", "probe_id", "ok", "error_kind", "http_status", "total_ms", "processing_ms",
                "fingerprint", "model", "headroom_requests", "headroom_tokens")
BUCKET_FIELDS = ("t", "probes", "errors", "p50_ms", "p95_ms", "fingerprint", "headroom_requests",
                 "headroom_tokens")


def columns(points: list[dict[str, Any]], fields: tuple[str, ...]) -> dict[str, list[Any]]:
    """Points as the report's series carries them: a list per field (docs/report.md)."""
    return {field: [p[field] for p in points] for field in fields}


def percentiles(values: list[float | None]) -> dict[str, float] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {name: nearest_rank(present, q) for name, q in PERCENTILES.items()}


def seen(label: str, values: list[tuple[str | None, datetime]]) -> list[dict[str, Any]]:
    counts = Counter(v for v, _ in values if v is not None)
    carried = sum(counts.values())
    return [{label: v, "count": c, "share": round(c / carried, 4),
             "first_seen": min(at for x, at in values if x == v).isoformat(),
             "last_seen": max(at for x, at in values if x == v).isoformat()}
            for v, c in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def fraction(remaining: int | None, limit: int | None) -> float | None:
    return None if remaining is None or not limit else round(remaining / limit, 4)


def limits(r: ProbeResult) -> dict[str, Any]:
    rl = r.rate_limits
    return {"limit_requests": rl.limit_requests, "limit_tokens": rl.limit_tokens,
            "remaining_requests": rl.remaining_requests,
            "remaining_tokens": rl.remaining_tokens,
            "headroom_requests": fraction(rl.remaining_requests, rl.limit_requests),
            "headroom_tokens": fraction(rl.remaining_tokens, rl.limit_tokens),
            "at": r.started_at.isoformat()}


def point(t: datetime, results: list[ProbeResult]) -> dict[str, Any]:
    totals = [r.total_ms for r in results if r.ok and r.total_ms is not None]
    fingerprints = Counter(r.system_fingerprint for r in results if r.system_fingerprint)
    headrooms = [(fraction(r.rate_limits.remaining_requests, r.rate_limits.limit_requests),
                  fraction(r.rate_limits.remaining_tokens, r.rate_limits.limit_tokens))
                 for r in results]
    requests = [h for h, _ in headrooms if h is not None]
    tokens = [h for _, h in headrooms if h is not None]
    return {"t": t.isoformat(), "probes": len(results),
            "errors": sum(not r.ok for r in results),
            "p50_ms": nearest_rank(totals, 0.5) if totals else None,
            "p95_ms": nearest_rank(totals, 0.95) if totals else None,
            "fingerprint": min(fingerprints, key=lambda f: (-fingerprints[f], f))
            if fingerprints else None,
            "headroom_requests": min(requests) if requests else None,
            "headroom_tokens": min(tokens) if tokens else None}


def probe_point(r: ProbeResult, probe_id: int) -> dict[str, Any]:
    rl = r.rate_limits
    return {"t": r.started_at.isoformat(), "probe_id": probe_id, "ok": r.ok,
            "error_kind": r.error_kind, "http_status": r.http_status,
            "total_ms": r.total_ms, "processing_ms": r.openai_processing_ms,
            "fingerprint": r.system_fingerprint, "model": r.model,
            "headroom_requests": fraction(rl.remaining_requests, rl.limit_requests),
            "headroom_tokens": fraction(rl.remaining_tokens, rl.limit_tokens)}


def stored_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {uid: probe_id for uid, probe_id in connection.execute(
            select(ProbeRow.uid, ProbeRow.id))}


def assert_matches(got: Any, want: Any, path: str = "") -> None:
    """Equal, except percentiles (within 1%) and headroom (minima rounded after the min, a
    probe's rounded by the database: half up)."""
    name = path.rsplit(".", 1)[-1].split("[", 1)[0]  # a column's values are name[i]
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            assert_matches(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_matches(g, w, f"{path}[{i}]")
    elif name in {"p50", "p95", "p99", "p50_ms", "p95_ms"}:
        assert got == pytest.approx(want, rel=0.01), path
    elif name.startswith("headroom_") and want is not None:
        assert got == pytest.approx(want, abs=1e-4), path
    else:
        assert got == want, path


def target_entry(report: dict[str, Any], name: str) -> dict[str, Any]:
    [entry] = [t for t in report["targets"] if t["target"] == name]
    return {k: v for k, v in entry.items()
            if k not in ("open_alerts", "alerts", "uptime", "heartbeat")}


@pytest.mark.parametrize(("since", "until", "bucket"), [
    pytest.param(START + timedelta(hours=7, minutes=13, seconds=5),
                 START + timedelta(days=16, hours=5, minutes=41), "day", id="16-days"),
    pytest.param(START + timedelta(days=2, hours=22, minutes=59),
                 START + timedelta(days=5, hours=1, minutes=2), "hour", id="2-days"),
    pytest.param(START + timedelta(days=3, hours=4, minutes=10),
                 START + timedelta(days=3, hours=4, minutes=50), "probe", id="inside-an-hour"),
    pytest.param(START + timedelta(days=3, hours=4, minutes=10),
                 START + timedelta(days=5, hours=4, minutes=10), "probe", id="48-hours"),
    pytest.param(START + timedelta(days=1), START + timedelta(days=16), "day",
                 id="whole-days"),
    pytest.param(START - timedelta(days=30), NOW, "day", id="everything"),
])
def test_report_numbers_equal_those_computed_from_the_probes(
        engine: Engine, history: History, since: datetime,
        until: datetime, bucket: str) -> None:
    report = build_report(engine, since, until, None, NOW)
    assert report["version"] == 3
    assert (report["since"], report["until"]) == (since.isoformat(), until.isoformat())
    assert report["generated_at"] == NOW.isoformat()
    assert [t["target"] for t in report["targets"]] == ["gpt-4o", "gpt-4o-stream"]
    for name, results in history.canaries.items():
        assert_matches(target_entry(report, name),
                       expected(results, since, until, bucket, history.skips,
                                stored_ids(engine)))
    inside = sorted((r.started_at, probe_id, original, r)
                    for probe_id, original, r in history.replays if since <= r.started_at < until)
    assert inside  # every range holds some
    assert report["replays"] == [
        {"probe_id": probe_id, "replay_of": original, "target": r.target_name,
         "t": at.isoformat(), "ok": r.ok, "error_kind": r.error_kind, "http_status": r.http_status,
         "model": r.model, "fingerprint": r.system_fingerprint,
         "total_ms": None if r.total_ms is None else pytest.approx(r.total_ms, rel=1e-3)}
        for at, probe_id, original, r in inside]


def test_metrics_leave_replays_out_and_count_every_skipped_slot(
        engine: Engine, history: History) -> None:
    snapshot = {m.target: m for m in metrics_snapshot(engine).targets}
    for name, results in history.canaries.items():
        newest_ok = max((r for r in results if r.ok), key=lambda r: r.started_at)
        assert (snapshot[name].fingerprint, snapshot[name].model) == (
            newest_ok.system_fingerprint, newest_ok.model)
        assert sum(snapshot[name].outcomes.values()) == len(results)
        assert snapshot[name].latency["total"].count == sum(r.ok for r in results)
        kinds = Counter(kind for target, _, kind in history.skips if target == name)
        assert snapshot[name].skipped_slots == {k.value: kinds[k.value] for k in SkipKind}
        newest = max(results, key=lambda r: r.started_at)
        assert (snapshot[name].last_probe_timestamp_s, snapshot[name].last_probe_ok) == (
            newest.started_at.timestamp(), newest.ok)


def test_only_the_named_targets_are_reported(
        engine: Engine, history: History) -> None:
    report = build_report(engine, START, NOW, ["gpt-4o-stream", "unknown"], NOW)
    assert [t["target"] for t in report["targets"]] == ["gpt-4o-stream"]
    assert report["replays"] and {r["target"] for r in report["replays"]} == {"gpt-4o-stream"}


def test_a_range_without_probes_reports_nothing_measured(
        engine: Engine, history: History) -> None:
    entry = build_report(engine, NOW, NOW + timedelta(days=1), ["gpt-4o"], NOW)["targets"][0]
    assert (entry["probes"], entry["success_rate"], entry["rate_limits"]) == (0, None, None)
    assert entry["latency_ms"] == {"total": None, "headers": None, "ttft": None,
                                   "processing": None}
    assert entry["series"] == {"bucket": "probe", "columns": columns([], PROBE_FIELDS)}
    assert (entry["uptime"]["24h"], entry["uptime"]["7d"]) == (None, None)
    assert entry["uptime"]["30d"] is not None  # the 30 days before the range's end had probes


def test_uptime_and_heartbeat_are_those_of_the_probes_before_until(
        engine: Engine, history: History) -> None:
    until = START + timedelta(days=16, hours=7, minutes=13, seconds=5)  # cuts an hour
    report = build_report(engine, until - timedelta(hours=1), until, None, NOW)
    ids = stored_ids(engine)
    for name, results in history.canaries.items():
        entry = next(t for t in report["targets"] if t["target"] == name)
        for label, span in (("24h", timedelta(hours=24)), ("7d", timedelta(days=7)),
                            ("30d", timedelta(days=30))):
            inside = [r for r in results if until - span <= r.started_at < until]
            assert entry["uptime"][label] == round(sum(r.ok for r in inside) / len(inside), 4)
        latest = sorted((r for r in results if r.started_at < until),
                        key=lambda r: r.started_at)[-60:]
        assert entry["heartbeat"] == [
            {"probe_id": ids[r.uid], "t": r.started_at.isoformat(), "ok": r.ok,
             "total_ms": r.total_ms, "http_status": r.http_status, "error_kind": r.error_kind,
             "fingerprint": r.system_fingerprint, "model": r.model} for r in latest]
        assert all(type(beat["ok"]) is bool for beat in entry["heartbeat"])  # true, not 1


def test_alerts_open_in_the_range_and_open_now(engine: Engine) -> None:
    store(engine, varied_history(10))
    with engine.begin() as connection:
        target_id = connection.execute(select(TargetRow.id)).scalar_one()

        def alert(state: str, opened: datetime | None, resolved: datetime | None) -> int:
            return int(connection.execute(insert(AlertRow).returning(AlertRow.id).values(
                target_id=target_id, kind="latency", key="total_ms", severity="warning",
                state=state, streak=0, flaps=0, started_at=opened or START,
                opened_at=opened, resolved_at=resolved, probe_uids=[],
                explanation=f"{state} alert")).scalar_one())

        day = timedelta(days=1)
        before = alert("resolved", START - 3 * day, START - 2 * day)
        spans = alert("resolved", START - day, START + day)
        still_open = alert("open", START + 2 * day, None)
        alert("pending", START + 2 * day, None)
        later = alert("open", START + 9 * day, None)
    entry = build_report(engine, START, START + 3 * day, None, NOW)["targets"][0]
    assert [a["id"] for a in entry["alerts"]] == [spans, still_open]
    assert [a["id"] for a in entry["open_alerts"]] == [still_open, later]
    assert entry["alerts"][0] == {
        "id": spans, "kind": "latency", "key": "total_ms", "severity": "warning",
        "state": "resolved", "opened_at": (START - day).isoformat(),
        "resolved_at": (START + day).isoformat(), "explanation": "resolved alert"}
    assert set(entry["open_alerts"][0]) == {"id", "kind", "key", "severity", "opened_at",
                                            "explanation"}
    assert before not in [a["id"] for a in entry["alerts"]]
    open_now = metrics_snapshot(engine).targets[0].open_alerts
    assert {pair: count for pair, count in open_now.items() if count} == {
        ("latency", "warning"): 2}


def test_a_points_time_reads_as_isoformat_in_utc_on_both_databases(engine: Engine) -> None:
    """read_points has the database write each time; it must be exactly what
    datetime.isoformat() gives, with and without microseconds."""
    # SQLite stores integer microseconds (UtcMicros): before 1970 they are negative.
    early = datetime(1969, 12, 31, 23, 59, 59, 250000, tzinfo=UTC)
    moments = [early, START + timedelta(minutes=1),
               START + timedelta(minutes=2, microseconds=123456),
               START + timedelta(minutes=3, microseconds=1),
               START + timedelta(minutes=4, microseconds=999999), START + timedelta(days=400)]
    results = [replace(r, started_at=at) for r, at in zip(varied_history(6), moments,
                                                         strict=True)]
    store(engine, results)
    with engine.connect() as connection:
        target_id = connection.execute(select(TargetRow.id)).scalar_one()
        points = timeline.read_points(connection, early, START + timedelta(days=401), target_id)
    assert points["t"] == [at.isoformat() for at in moments]
    assert points["ok"] == [r.ok for r in results]
    assert all(type(ok) is bool for ok in points["ok"])


@pytest.mark.parametrize(("remaining", "limit", "share"), [
    (9_999, 10_000, 0.9999), (29_999_985, 30_000_000, 1.0), (12_345, 100_000, 0.1235),
    (1, 32, 0.0313),  # an exact tie goes up (Python's round() goes to even: 0.0312)
    (3, 20_000, 0.0001),  # 0.00015 is just under it as a float: down, as round() goes
    (1, 30_000_000, 0.0), (0, 10_000, 0.0), (-5, 10_000, 0.0), (10_001, 10_000, 1.0),
    (5, 0, None), (None, 10_000, None), (5, None, None),
])
def test_a_points_headroom_is_clamped_and_rounded_by_the_database(
        engine: Engine, remaining: int | None, limit: int | None, share: float | None) -> None:
    [result] = varied_history(1, seed=3)
    store(engine, [replace(result, rate_limits=RateLimits(
        limit_requests=limit, remaining_requests=remaining, limit_tokens=limit,
        remaining_tokens=remaining))])
    with engine.connect() as connection:
        target_id = connection.execute(select(TargetRow.id)).scalar_one()
        points = timeline.read_points(connection, START, START + timedelta(days=1), target_id)
    assert (points["headroom_requests"], points["headroom_tokens"]) == ([share], [share])
    assert share is None or type(points["headroom_requests"][0]) is float  # JSON, not Decimal
