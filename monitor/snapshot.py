"""What /metrics exposes per target: plain data read from the store by `health` and turned into
metric families by `render.metrics`. Like `domain`, it imports nothing from `monitor`."""

from __future__ import annotations

from dataclasses import dataclass, field

# Prometheus histogram buckets for probe latency, in seconds: 25 ms to a minute.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts over all stored history, Prometheus-style: `cumulative[i]` probes took
    at most `bounds_s[i]`; `count` and `sum_s` cover every probe (the +Inf bucket)."""

    bounds_s: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum_s: float


@dataclass(frozen=True)
class TargetMetrics:
    """What /metrics exposes for one target, read from the store (rollups, newest probe,
    alerts), so `monitor serve` and `monitor run --http` expose the same numbers."""

    target: str
    latency: dict[str, Histogram]  # "total", "headers", "ttft", "processing"; absent if never measured
    outcomes: dict[str, int]  # "ok" and each error kind -> probes, over all stored history
    fingerprint: str | None  # of the newest successful probe
    model: str | None
    limit_requests: int | None
    limit_tokens: int | None
    remaining_requests: int | None
    remaining_tokens: int | None
    # (kind, severity) -> alerts open now; every pair a detector can raise, zeros included
    open_alerts: dict[tuple[str, str], int]
    skipped_slots: dict[str, int]  # skip kind (every one) -> slots skipped, all stored history
    # The newest canary probe (replays are not the canary): when it started (seconds since
    # the epoch) and whether it succeeded; None before the first.
    last_probe_timestamp_s: float | None
    last_probe_ok: bool | None
    # (check, outcome) -> probes, over all stored history; empty for a target without checks
    check_results: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrafficMetrics:
    """One route and model of recorded traffic (monitor proxy): its calls over all stored
    history (as last rolled up), by outcome ("ok" or the error kind)."""

    route: str
    model: str
    outcomes: dict[str, int]
    # (drift kind, severity) -> alerts open now on this route and model; zeros for every pair
    # the traffic detectors can raise, so an alert rule reads 0 rather than "no data"
    open_alerts: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything one /metrics scrape exposes."""

    targets: list[TargetMetrics]
    # channel ("log", "webhook:<hash>", "slack:<hash>") -> delivery attempts that failed,
    # over all stored notifications
    notifications_failed: dict[str, int]
    # signal ("traces", "metrics") -> OpenTelemetry exports that failed in this process since
    # it started; None where nothing is exported from here (no [otel], or `monitor serve`)
    otel_export_failures: dict[str, int] | None = None
    traffic: list[TrafficMetrics] = field(default_factory=list)
