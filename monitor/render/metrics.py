"""/metrics: the store's per-target numbers in the Prometheus exposition format.

Nothing is counted in this process. Each scrape reads a fresh snapshot (rollups, newest probe,
open alerts) through `source`, so `monitor serve` and `monitor run --http` expose the same
numbers however many instances probe, and a restart loses nothing. Label values (fingerprint,
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

from monitor.domain import Severity
from monitor.snapshot import TargetMetrics

Metric = HistogramMetricFamily | CounterMetricFamily | InfoMetricFamily | GaugeMetricFamily

class StoreCollector(Collector):
    """Turns a metrics snapshot into metric families, one snapshot per scrape."""

    def __init__(self, source: Callable[[], list[TargetMetrics]]) -> None:
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
            "monitor_open_alerts", "Alerts open now", labels=["target", "severity"])
        skipped = CounterMetricFamily(
            "monitor_slots_skipped", "Scheduled slots not probed, by reason: rate_limited, "
            "budget_spent or missed", labels=["target", "reason"])
        for m in snapshot:
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
            # Every severity, zeros included: "sum(monitor_open_alerts) > 0" then reads 0, not
            # "no data", while all is well.
            counts = {str(s): 0 for s in Severity} | m.open_alerts
            for severity, count in counts.items():
                alerts.add_metric([m.target, severity], count)
            for reason, count in m.skipped_slots.items():
                skipped.add_metric([m.target, reason], count)
        yield from (latency, probes, info, limit, remaining, alerts, skipped)


def exposition_registry(source: Callable[[], list[TargetMetrics]]) -> CollectorRegistry:
    """A registry of its own (the global one would add this process's Python metrics)."""
    registry = CollectorRegistry(auto_describe=False)  # no store read at registration
    registry.register(StoreCollector(source))
    return registry


def render_metrics(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The exposition body and its content type, in the format the scraper asked for."""
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type

