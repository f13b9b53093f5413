"""The health report (docs/report.md, JSON version 3) and the per-target numbers /metrics
exposes, read from rollups so that a year costs about what a day does.

A range [since, until) is read in three grains: whole days from daily rollups (only when the
series is daily, beyond 14 days), whole hours from hourly rollups, and raw probes only for the
partial hours at its two edges. Percentiles come from merged sketches (within 1%). Rollups are
read as last caught up: callers that want the newest probes in whole hours call
`rollups.catch_up` first.

The series follows the range: up to 48 hours every probe is a point (read lean, straight from
the probes); longer ranges get hourly, then daily points from the rollups. Uptime over the 24 h,
7 d and 30 d before `until` is summed by the database from hourly rollups plus the raw edges,
and the heartbeat is each target's last probes: both cost the same whatever the range.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, or_, select

from monitor.detect import SEVERITIES, TRAFFIC_KINDS
from monitor.domain import AlertState, CheckOutcome, SkipKind
from monitor.snapshot import (
    LATENCY_BUCKETS_S,
    Histogram,
    MetricsSnapshot,
    TargetMetrics,
    TrafficMetrics,
)
from monitor.store import (
    aggregate,
    alert_reads,
    check_results,
    leases,
    replays,
    rollups,
    timeline,
    traffic_reads,
)
from monitor.store.aggregate import (
    TOTAL_PHASES,
    Aggregate,
    floor_day,
    floor_hour,
    fraction,
    ms,
    percentiles,
    seen,
    segments,
)
from monitor.store.models import (
    AlertRow,
    TargetKind,
    TargetRow,
)

VERSION = 3
# Every probe a point up to two days (2,880 at one a minute), so a change shows the minute it
# happens; hourly points up to two weeks (336 of them); daily beyond, so a year is 365 points.
PROBE_SERIES_UP_TO = timedelta(hours=48)
HOURLY_SERIES_UP_TO = timedelta(days=14)
# The report lists at most this many replays (the newest): a batch replay of a month would
# otherwise be most of the document.
REPLAYS_LISTED = 500
UPTIME_WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
HEARTBEAT_PROBES = 60


def build_report(engine: Engine, since: datetime, until: datetime,
                 targets: Sequence[str] | None, now: datetime) -> dict[str, Any]:
    """The report over [since, until) for the named targets (None: every stored target)."""
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    # The grain totals are read in; a probe series reads totals from hours like an hourly one.
    grain = "hour" if until - since <= HOURLY_SERIES_UP_TO else "day"
    bucket = "probe" if until - since <= PROBE_SERIES_UP_TO else grain
    floor = floor_hour if grain == "hour" else floor_day
    with engine.connect() as connection:
        names = _target_names(connection, targets)
        ids = list(names)
        totals = {i: Aggregate() for i in ids}
        buckets: dict[int, dict[datetime, dict[str, Any]]] = {i: {} for i in ids}
        # Buckets cut by the range's edges, or made of finer rows than the series' bucket.
        partial: dict[int, dict[datetime, Aggregate]] = {i: {} for i in ids}
        for span, low, high in segments(since, until, grain) if ids else ():
            if span is None:
                for probe in rollups.read_probes(connection, low, high, ids):
                    point = floor(probe.started_at)
                    partial[probe.target_id].setdefault(point, Aggregate()).add(probe)
                continue
            for target_id, start, aggregate in rollups.read_rollups(
                    connection, span, low, high, ids):
                if span == grain:
                    # A whole bucket in one row: done at once, so a year of rows is never
                    # held in memory.
                    totals[target_id].merge(aggregate)
                    if bucket != "probe":
                        buckets[target_id][start] = _point(start, aggregate)
                else:
                    partial[target_id].setdefault(floor(start), Aggregate()).merge(aggregate)
        for target_id, pieces in partial.items():
            for start, aggregate in pieces.items():
                totals[target_id].merge(aggregate)
                if bucket != "probe":
                    buckets[target_id][start] = _point(start, aggregate)
        if bucket == "probe":
            columns = {i: timeline.read_points(connection, since, until, i) for i in ids}
        else:
            columns = {i: _columns([found[start] for start in sorted(found)])
                       for i, found in buckets.items()}
        alerts = _alerts(connection, ids, since, until)
        skipped = leases.skipped_counts(connection, since, until, ids) if ids else {}
        listed = replays.listed(connection, since, until, ids, REPLAYS_LISTED) if ids else []
        uptime = _uptime(connection, ids, until)
        checks = _checks(check_results.counts(connection, ids, since, until) if ids else [])
        heartbeat = {i: timeline.read_latest(connection, i, until, HEARTBEAT_PROBES)
                     for i in ids}
        traffic = traffic_reads.summary(connection, since, until) if targets is None else []
    return {
        "version": VERSION,
        "generated_at": now.astimezone(UTC).isoformat(),
        "since": since.isoformat(),
        "until": until.isoformat(),
        "targets": [_target(names[i], totals[i], columns[i], bucket, alerts.get(i, []),
                            since, until)
                    | {"uptime": uptime[i], "heartbeat": heartbeat[i],
                       "skipped": dict(sorted(skipped.get(i, {}).items())),
                       "checks": checks.get(i, [])}
                    for i in sorted(ids, key=names.__getitem__)],
        # Replays are kept apart: no number above counts them (rollups fold canaries only).
        "replays": [_replay(row) for row in listed],
        # The application's calls through `monitor proxy`, per route and model: never in the
        # canaries' numbers above.
        "traffic": traffic,
    }


def with_states(report: dict[str, Any],
                states: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The report with each target's watch `state` (monitor.watching) merged in: null for a
    stored target the configuration no longer names."""
    for entry in report["targets"]:
        entry["state"] = states.get(entry["target"])
    return report


def _replay(row: Any) -> dict[str, Any]:
    return {"probe_id": row.id, "replay_of": row.replay_of, "target": row.name,
            "t": row.started_at.isoformat(), "ok": row.ok, "error_kind": row.error_kind,
            "http_status": row.http_status, "model": row.model,
            "fingerprint": row.system_fingerprint,
            "total_ms": None if row.total_ms is None else ms(row.total_ms)}


def _checks(counts: Iterable[check_results.PassCount]) -> dict[int, list[dict[str, Any]]]:
    """Per target, each check's outcomes and pass rate, overall and per backend (fingerprint
    and model), so one backend that answers worse than the others shows."""
    found: dict[int, dict[str, dict[tuple[str, str], dict[str, int]]]] = {}
    for c in counts:
        backend = (c.system_fingerprint or "", c.model or "")
        tally = found.setdefault(c.target_id, {}).setdefault(c.check, {}).setdefault(
            backend, dict.fromkeys(OUTCOMES, 0))
        tally[c.outcome.value] += c.probes
    return {target_id: [
        {"check": check, **_pass_rate(list(backends.values())),
         "by_backend": [{"fingerprint": fp or None, "model": model or None, **_pass_rate([tally])}
                        for (fp, model), tally in sorted(backends.items())]}
        for check, backends in sorted(checks.items())] for target_id, checks in found.items()}


OUTCOMES = tuple(outcome.value for outcome in CheckOutcome)


def _pass_rate(tallies: list[dict[str, int]]) -> dict[str, Any]:
    """The outcomes added up, and the share of the answers judged that passed."""
    total = {outcome: sum(t[outcome] for t in tallies) for outcome in OUTCOMES}
    judged = total["pass"] + total["fail"]
    return {**total, "pass_rate": fraction(total["pass"] / judged) if judged else None}


def _target_names(connection: Connection, targets: Sequence[str] | None) -> dict[int, str]:
    """The canary targets (by name when `targets` is given). Recorded traffic is filtered out
    here, target by target, so no probe query below pays for keeping it apart."""
    query = select(TargetRow.id, TargetRow.name).where(TargetRow.kind == TargetKind.CANARY)
    if targets is not None:
        query = query.where(TargetRow.name.in_(targets))
    return {row.id: row.name for row in connection.execute(query)}


def _alerts(connection: Connection, target_ids: Sequence[int], since: datetime,
            until: datetime) -> dict[int, list[Any]]:
    """Per target: alerts open now, and those open at any time in the range (pending
    conditions are not alerts)."""
    if not target_ids:
        return {}
    query = (
        select(AlertRow.__table__)
        .where(AlertRow.target_id.in_(target_ids), AlertRow.state != AlertState.PENDING,
               or_(AlertRow.state == AlertState.OPEN,
                   (AlertRow.opened_at < until)
                   & (AlertRow.resolved_at.is_(None) | (AlertRow.resolved_at >= since))))
        .order_by(AlertRow.opened_at, AlertRow.id)
    )
    found: dict[int, list[Any]] = {}
    for alert in connection.execute(query):
        found.setdefault(alert.target_id, []).append(alert)
    return found


def _target(name: str, total: Aggregate, columns: dict[str, list[Any]], bucket: str,
            alerts: list[Any], since: datetime, until: datetime) -> dict[str, Any]:
    error = total.last_error
    return {
        "target": name,
        "probes": total.probes,
        "ok": total.ok,
        "success_rate": fraction(total.ok / total.probes) if total.probes else None,
        "errors": dict(sorted(total.errors.items())),
        "latency_ms": {phase: percentiles(total.sketch(phase)) for phase in TOTAL_PHASES},
        "output_tokens_per_s": percentiles(total.sketch("tokens_per_s")),
        "tokens": {"prompt": total.prompt_tokens, "completion": total.completion_tokens,
                   "total": total.total_tokens},
        "fingerprints": seen("fingerprint", total.fingerprints),
        "models": seen("model", total.models),
        "rate_limits": _rate_limits(total),
        "open_alerts": [
            {"id": a.id, "kind": a.kind, "key": a.key, "severity": a.severity,
             "opened_at": _iso(a.opened_at), "explanation": a.explanation}
            for a in alerts if a.state == AlertState.OPEN],
        "alerts": [
            {"id": a.id, "kind": a.kind, "key": a.key, "severity": a.severity,
             "state": a.state, "opened_at": _iso(a.opened_at),
             "resolved_at": _iso(a.resolved_at), "explanation": a.explanation}
            for a in alerts if _open_within(a, since, until)],
        "last_error": None if error is None else {
            "at": error.at.isoformat(), "error_kind": error.kind,
            "http_status": error.status, "detail": error.detail},
        "series": {"bucket": bucket, "columns": columns},
    }


def _open_within(alert: Any, since: datetime, until: datetime) -> bool:
    return (alert.opened_at is not None and alert.opened_at < until
            and (alert.resolved_at is None or alert.resolved_at >= since))


# A bucket point's fields (docs/report.md, series of bucket "hour" or "day").
BUCKET_POINT_FIELDS = ("t", "probes", "errors", "p50_ms", "p95_ms", "fingerprint",
                       "headroom_requests", "headroom_tokens")


def _columns(points: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Bucket points (at most a few hundred a target) as the series' columns."""
    return {field: [p[field] for p in points] for field in BUCKET_POINT_FIELDS}


def _point(start: datetime, aggregate: Aggregate) -> dict[str, Any]:
    p50, p95 = aggregate.sketch("total").quantiles((0.5, 0.95))
    fingerprints = aggregate.fingerprints
    return {
        "t": start.isoformat(),
        "probes": aggregate.probes,
        "errors": aggregate.probes - aggregate.ok,
        "p50_ms": None if p50 is None else ms(p50),
        "p95_ms": None if p95 is None else ms(p95),
        # Most frequent; of equally frequent ones, the first by name, so output is stable.
        "fingerprint": min(fingerprints, key=lambda f: (-fingerprints[f][0], f))
        if fingerprints else None,
        "headroom_requests": fraction(aggregate.min_headroom_requests),
        "headroom_tokens": fraction(aggregate.min_headroom_tokens),
    }


def _uptime(connection: Connection, ids: Sequence[int],
            until: datetime) -> dict[int, dict[str, float | None]]:
    """Per target, the share of probes that succeeded in each window ending at `until`."""
    uptime: dict[int, dict[str, float | None]] = {i: {} for i in ids}
    for label, span in UPTIME_WINDOWS.items():
        counts = timeline.count_outcomes(connection, until - span, until, ids)
        for target_id, (probes, ok) in counts.items():
            uptime[target_id][label] = fraction(ok / probes) if probes else None
    return uptime


def _rate_limits(total: Aggregate) -> dict[str, Any] | None:
    limits = total.limits
    if limits is None:
        return None
    return {
        "limit_requests": limits.limit_requests, "limit_tokens": limits.limit_tokens,
        "remaining_requests": limits.remaining_requests,
        "remaining_tokens": limits.remaining_tokens,
        "headroom_requests": fraction(
            aggregate.headroom(limits.remaining_requests, limits.limit_requests)),
        "headroom_tokens": fraction(
            aggregate.headroom(limits.remaining_tokens, limits.limit_tokens)),
        "at": limits.at.isoformat(),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# --- /metrics -------------------------------------------------------------------------------


def metrics_snapshot(engine: Engine) -> MetricsSnapshot:
    """Per stored target, from its rollup totals (as last caught up; replays left out):
    latency histograms, outcomes and check outcomes over all history, the newest probe, the
    newest successful probe's fingerprint and model and the newest rate-limit values; open
    alerts by kind and severity and skipped slots by kind; and failed notification
    deliveries by channel. No probe is read, so a scrape costs the same after a year."""
    bounds_ms = [bound * 1000 for bound in LATENCY_BUCKETS_S]
    with engine.connect() as connection:
        names = _target_names(connection, None)
        totals = rollups.read_totals(connection)
        skipped = leases.skipped_counts(connection)
        open_alerts = _open_alerts(connection)
        metrics = []
        for target_id in sorted(names, key=names.__getitem__):
            total = totals.get(target_id, Aggregate())
            limits, newest, served = total.limits, total.newest, total.served
            metrics.append(TargetMetrics(
                target=names[target_id],
                latency={phase: Histogram(
                    bounds_s=LATENCY_BUCKETS_S,
                    cumulative=tuple(sketch.cumulative_at(bounds_ms)),
                    count=sketch.count, sum_s=sketch.sum / 1000)
                    for phase in TOTAL_PHASES if (sketch := total.sketch(phase))},
                outcomes={"ok": total.ok, **total.errors} if total.probes else {},
                fingerprint=served.fingerprint if served else None,
                model=served.model if served else None,
                limit_requests=limits.limit_requests if limits else None,
                limit_tokens=limits.limit_tokens if limits else None,
                remaining_requests=limits.remaining_requests if limits else None,
                remaining_tokens=limits.remaining_tokens if limits else None,
                open_alerts=_ZERO_ALERTS | open_alerts.get(target_id, {}),
                skipped_slots={kind.value: skipped.get(target_id, {}).get(kind.value, 0)
                               for kind in SkipKind},
                last_probe_timestamp_s=newest.at.timestamp() if newest else None,
                last_probe_ok=newest.ok if newest else None,
                check_results={(check, outcome): count
                               for check, outcomes in total.checks.items()
                               for outcome, count in outcomes.items()},
            ))
        failed = alert_reads.failed_attempts(connection)
        traffic = [TrafficMetrics(route, model, {"ok": calls.ok, **calls.errors},
                                  _ZERO_TRAFFIC_ALERTS | open_alerts.get(target_id, {}))
                   for (route, _, model), target_id in sorted(
                       (name.rpartition("/"), i) for i, name in
                       traffic_reads.targets(connection).items())
                   if (calls := totals.get(target_id)) is not None and calls.probes]
    return MetricsSnapshot(targets=metrics, notifications_failed=failed, traffic=traffic)


# Every (kind, severity) a detector can raise, at zero: "sum(monitor_open_alerts) > 0" then
# reads 0 rather than "no data" while all is well, in a few series per target (not every
# kind times every severity).
_ZERO_ALERTS = {(kind.value, severity.value): 0
                for kind, severities in SEVERITIES.items() for severity in severities}
_ZERO_TRAFFIC_ALERTS = {pair: 0 for pair in _ZERO_ALERTS if pair[0] in TRAFFIC_KINDS}


def _open_alerts(connection: Connection) -> dict[int, dict[tuple[str, str], int]]:
    found: dict[int, dict[tuple[str, str], int]] = {}
    for target_id, kind, severity, count in connection.execute(
            select(AlertRow.target_id, AlertRow.kind, AlertRow.severity, func.count())
            .where(AlertRow.state == AlertState.OPEN)
            .group_by(AlertRow.target_id, AlertRow.kind, AlertRow.severity)):
        found.setdefault(target_id, {})[(kind, severity)] = count
    return found
