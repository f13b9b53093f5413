"""/metrics: the store's numbers in the Prometheus exposition format.

Nothing is counted in this process. Each scrape reads a fresh snapshot (rollups, newest probe,
open alerts) through `source`, so `monitor serve` and `monitor run --http` expose the same
numbers however many instances probe, and a restart loses nothing. The one exception is
`monitor_otel_export_failures_total`: failed OpenTelemetry exports are not stored, so only the
`monitor run --http` that exports counts them, from its start. Label values (fingerprint,
model) are untrusted; the client library escapes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from monitor.snapshot import MetricsSnapshot

Metric = HistogramMetricFamily | CounterMetricFamily | InfoMetricFamily | GaugeMetricFamily

class StoreCollector(Collector):
    """Turns a metrics snapshot into metric families, one snapshot per scrape."""

    def __init__(self, source: Callable[[], MetricsSnapshot]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        snapshot = self._source()
        latency = HistogramMetricFamily(
            "monitor_probe_latency_seconds",
            "Probe latency by phase (total, headers, ttft, processing) over stored history",
            labels=["target", "phase"])
        probes = CounterMetricFamily(
            "monitor_probes", "Probes by outcome: ok or the error kind",
            labels=["target", "outcome"])
        info = InfoMetricFamily(
            "monitor_target", "system_fingerprint and model of the newest successful probe",
            labels=["target"])
        limit = GaugeMetricFamily(
            "monitor_ratelimit_limit", "x-ratelimit-limit-* of the newest probe that sent it",
            labels=["target", "kind"])
        remaining = GaugeMetricFamily(
            "monitor_ratelimit_remaining",
            "x-ratelimit-remaining-* of the newest probe that sent it", labels=["target", "kind"])
        alerts = GaugeMetricFamily(
            "monitor_open_alerts", "Alerts open now, by drift kind and severity",
            labels=["target", "kind", "severity"])
        skipped = CounterMetricFamily(
            "monitor_slots_skipped", "Scheduled slots not probed, by reason: rate_limited, "
            "budget_spent or missed", labels=["target", "reason"])
        checks = CounterMetricFamily(
            "monitor_check_results", "Checks on canary answers, by check and outcome: pass, "
            "fail or not_applicable (the probe failed)", labels=["target", "check", "outcome"])
        last_probe = GaugeMetricFamily(
            "monitor_last_probe_timestamp_seconds",
            "When the newest canary probe started (replays excluded), seconds since the epoch",
            labels=["target"])
        last_ok = GaugeMetricFamily(
            "monitor_last_probe_success", "1 if the newest canary probe succeeded, else 0",
            labels=["target"])
        for m in snapshot.targets:
            for phase, histogram in m.latency.items():
                buckets = [(str(float(bound)), float(count))
                           for bound, count in zip(histogram.bounds_s, histogram.cumulative)]
                latency.add_metric([m.target, phase], buckets + [("+Inf", histogram.count)],
                                   sum_value=histogram.sum_s)
            for outcome, count in m.outcomes.items():
                probes.add_metric([m.target, outcome], count)
            info.add_metric([m.target], {"fingerprint": m.fingerprint or "",
                                         "model": m.model or ""})
            for kind, (cap, left) in {"requests": (m.limit_requests, m.remaining_requests),
                                      "tokens": (m.limit_tokens, m.remaining_tokens)}.items():
                if cap is not None:
                    limit.add_metric([m.target, kind], cap)
                if left is not None:
                    remaining.add_metric([m.target, kind], left)
            for (kind, severity), count in m.open_alerts.items():
                alerts.add_metric([m.target, kind, severity], count)
            for reason, count in m.skipped_slots.items():
                skipped.add_metric([m.target, reason], count)
            for (check, outcome), count in sorted(m.check_results.items()):
                checks.add_metric([m.target, check, outcome], count)
            if m.last_probe_timestamp_s is not None:
                last_probe.add_metric([m.target], m.last_probe_timestamp_s)
            if m.last_probe_ok is not None:
                last_ok.add_metric([m.target], int(m.last_probe_ok))
        failed = CounterMetricFamily(
            "monitor_notifications_failed", "Notification delivery attempts that failed",
            labels=["channel"])
        for channel, count in snapshot.notifications_failed.items():
            failed.add_metric([channel], count)
        calls = CounterMetricFamily(
            "monitor_traffic_calls", "The application's calls recorded by monitor proxy, by "
            "route, requested model and outcome: ok or the error kind (never in the canaries' "
            "numbers)", labels=["route", "model", "outcome"])
        for t in snapshot.traffic:
            for outcome, count in sorted(t.outcomes.items()):
                calls.add_metric([t.route, t.model, outcome], count)
        traffic_alerts = GaugeMetricFamily(
            "monitor_traffic_open_alerts", "Alerts open now on recorded traffic, by route, "
            "requested model, drift kind and severity", labels=["route", "model", "kind",
                                                                "severity"])
        for t in snapshot.traffic:
            for (kind, severity), count in sorted(t.open_alerts.items()):
                traffic_alerts.add_metric([t.route, t.model, kind, severity], count)
        yield from (latency, probes, info, limit, remaining, alerts, skipped, checks,
                    last_probe, last_ok, failed, calls, traffic_alerts)
        if snapshot.otel_export_failures is not None:
            otel = CounterMetricFamily(
                "monitor_otel_export_failures", "OpenTelemetry exports (span batches, metric "
                "collections) that failed in this process since it started", labels=["signal"])
            for signal, count in sorted(snapshot.otel_export_failures.items()):
                otel.add_metric([signal], count)
            yield otel


def exposition_registry(source: Callable[[], MetricsSnapshot]) -> CollectorRegistry:
    """A registry of its own (the global one would add this process's Python metrics)."""
    registry = CollectorRegistry(auto_describe=False)  # no store read at registration
    registry.register(StoreCollector(source))
    return registry


def render_metrics(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The exposition body and its content type, in the format the scraper asked for."""
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type

