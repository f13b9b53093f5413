"""The OpenTelemetry SDK behind [otel]: each stored probe becomes one CLIENT span, and its
duration, tokens and time to first chunk go into the GenAI conventions' histograms, all sent
over OTLP/HTTP (protobuf) by the SDK's own threads.

The probe thread only builds the span and hands it to a bounded queue (BatchSpanProcessor);
metrics are aggregated in memory and read by PeriodicExportingMetricReader. A slow or dead
collector therefore never delays a probe: its batches fail in the exporter threads, each
failure is counted (`monitor_otel_export_failures_total` on /metrics) and logged at most once
a minute, and the probe is in the database whatever happened to its telemetry.

A span's trace and span ids are derived from the probe's uid, so a drift event folded later
(after a database outage) is exported as a child of the span of the probe that raised it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

from monitor import __version__, defaults
from monitor.domain import DriftEvent, OtelSettings, ProbeResult, Target
from monitor.otel import attributes

log = logging.getLogger("monitor")

# The conventions' bucket boundaries: seconds for durations, tokens for usage.
DURATION_BUCKETS_S = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                      40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
# Where the OTLP exporters log each failed batch and retry; monitor says it once a minute.
_EXPORTER_LOGGER = "opentelemetry.exporter.otlp"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Raised = Sequence[tuple[str, DriftEvent]]  # (uid of the probe that raised it, event)


def probe_ids(uid: str) -> tuple[int, int]:
    """The (trace id, span id) of a probe's span: the same for the same probe, every time."""
    digest = hashlib.sha256(uid.encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


def _ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, exactly (a float timestamp would round the microseconds)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


class _ProbeIds(IdGenerator):
    """Random ids, except for a probe's own span, whose ids come from its uid."""

    def __init__(self) -> None:
        self._pinned: ContextVar[tuple[int, int] | None] = ContextVar("probe_ids", default=None)
        self._random = RandomIdGenerator()

    @contextmanager
    def pinned(self, uid: str) -> Iterator[None]:
        token = self._pinned.set(probe_ids(uid))
        try:
            yield
        finally:
            self._pinned.reset(token)

    def generate_trace_id(self) -> int:
        pinned = self._pinned.get()
        return pinned[0] if pinned else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        pinned = self._pinned.get()
        return pinned[1] if pinned else self._random.generate_span_id()


class ExportFailures(logging.Handler):
    """Failed exports, counted per signal ("traces", "metrics") and logged at most once every
    `every_s` with how many failed since the last line. As a log handler it takes the OTLP
    exporters' own lines (one per failed batch and per retry) out of monitor's log, keeping
    the last two as the reason given."""

    def __init__(self, endpoint: str, every_s: float = defaults.OTEL_FAILURE_LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(logging.WARNING)
        self.endpoint = endpoint
        self.counts = {"traces": 0, "metrics": 0}
        self._every_s = every_s
        self._clock = clock
        self._told_at: float | None = None
        self._untold = 0
        self._reason = ""
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        # The exporters log the cause (a retry's "Transient error ... connection refused")
        # and then the verdict ("Failed to export ..."): the last two different lines say both.
        message = record.getMessage()[:200]
        with self._lock:
            if not self._reason.endswith(message):
                self._reason = f"{self._reason.rpartition(' / ')[2]} / {message}"

    def failed(self, signal: str, reason: str | None = None) -> None:
        with self._lock:
            self.counts[signal] += 1
            self._untold += 1
            if reason is not None:
                self._reason = reason[:200]
            now = self._clock()
            if self._told_at is not None and now - self._told_at < self._every_s:
                return
            self._told_at, untold, self._untold = now, self._untold, 0
            why = self._reason.strip(" /") or "no reason given"
        self._tell(untold, why)

    def tell_rest(self) -> None:
        """At shutdown: the failures not logged yet."""
        with self._lock:
            untold, self._untold, why = self._untold, 0, self._reason.strip(" /")
        if untold:
            self._tell(untold, why)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _tell(self, untold: int, why: str) -> None:
        log.warning("OpenTelemetry export to %s failed %d time%s (%s); probes are stored as "
                    "usual; this is said at most once every %g s", self.endpoint, untold,
                    "" if untold == 1 else "s", why, self._every_s)

    def attach(self) -> None:
        """Take the OTLP exporters' log lines from now on."""
        exporters = logging.getLogger(_EXPORTER_LOGGER)
        exporters.addHandler(self)
        exporters.propagate = False

    def detach(self) -> None:
        exporters = logging.getLogger(_EXPORTER_LOGGER)
        exporters.removeHandler(self)
        exporters.propagate = not any(isinstance(h, ExportFailures) for h in exporters.handlers)


class _SpanExporter(OTLPSpanExporter):
    """OTLP/HTTP spans, each failed batch counted."""

    def __init__(self, failures: ExportFailures, **options: Any) -> None:
        super().__init__(**options)
        self._failures = failures

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = super().export(spans)
        except Exception as error:  # noqa: BLE001 - counted and told, like a failed batch
            self._failures.failed("traces", f"{type(error).__name__}: {error}")
            return SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._failures.failed("traces")
        return result


class _MetricExporter(OTLPMetricExporter):
    """OTLP/HTTP metrics, each failed export counted."""

    def __init__(self, failures: ExportFailures, **options: Any) -> None:
        super().__init__(**options)
        self._failures = failures

    def export(self, metrics_data: MetricsData, timeout_millis: float | None = 10_000,
               **kwargs: Any) -> MetricExportResult:
        try:
            result = super().export(metrics_data, timeout_millis, **kwargs)
        except Exception as error:  # noqa: BLE001 - counted and told, like a failed batch
            self._failures.failed("metrics", f"{type(error).__name__}: {error}")
            return MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            self._failures.failed("metrics")
        return result


class Telemetry:
    """Spans and metrics of stored probes, sent to one OTLP/HTTP collector (`[otel]`)."""

    def __init__(self, settings: OtelSettings) -> None:
        self.settings = settings
        self.failures = ExportFailures(settings.endpoint)
        self.failures.attach()
        resource = Resource.create({"service.name": settings.service_name,
                                    "service.version": __version__})
        # Only here is a header's secret value read: it goes on the wire and nowhere else.
        options: dict[str, Any] = {
            "headers": {name: value.value for name, value in settings.headers},
            "timeout": settings.timeout_ms / 1000}
        self._ids = _ProbeIds()
        self._traces = TracerProvider(resource=resource, id_generator=self._ids,
                                      shutdown_on_exit=False)
        self._traces.add_span_processor(BatchSpanProcessor(
            _SpanExporter(self.failures, endpoint=f"{settings.endpoint}/v1/traces", **options),
            max_queue_size=defaults.OTEL_MAX_QUEUED_SPANS))
        reader = PeriodicExportingMetricReader(
            _MetricExporter(self.failures, endpoint=f"{settings.endpoint}/v1/metrics", **options),
            # None: the SDK's interval (OTEL_METRIC_EXPORT_INTERVAL, else 60 s)
            export_interval_millis=settings.metrics_interval_ms,
            export_timeout_millis=settings.timeout_ms)
        self._meters = MeterProvider(resource=resource, metric_readers=[reader], views=[
            View(instrument_name="gen_ai.client.token.usage",
                 aggregation=ExplicitBucketHistogramAggregation(TOKEN_BUCKETS)),
            View(instrument_name="gen_ai.client.operation.*",
                 aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS_S)),
        ], shutdown_on_exit=False)
        self._tracer = self._traces.get_tracer("monitor", __version__)
        meter = self._meters.get_meter("monitor", __version__)
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration")
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used")
        self._first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time to receive the first chunk of a streamed answer")
        self._closed = False

    def record(self, target: Target, result: ProbeResult, raised: Raised = ()) -> None:
        """Queue the probe's span (with the drift events it raised) and its measurements.
        Never raises: telemetry must not cost a probe."""
        try:
            self._span(target, result, raised)
            self._measure(target, result)
        except Exception:
            log.exception("OpenTelemetry: could not record probe %s of %s", result.uid,
                          target.name)

    def _span(self, target: Target, result: ProbeResult, raised: Raised) -> None:
        start = _ns(result.started_at)
        end = start + round((result.total_ms or 0.0) * 1_000_000)
        with self._ids.pinned(result.uid):
            span = self._tracer.start_span(
                attributes.span_name(target, result), kind=SpanKind.CLIENT,
                attributes=attributes.span_attributes(target, result), start_time=start)
        for uid, event in raised:
            if uid == result.uid:
                span.add_event("monitor.drift", attributes.drift_attributes(event), end)
            else:
                self._late_drift(uid, event)
        if not result.ok:
            span.set_status(Status(StatusCode.ERROR, attributes.status_description(result)))
        span.end(end)

    def _late_drift(self, uid: str, event: DriftEvent) -> None:
        """An event raised by an earlier probe (folded once the database was back): a child
        span of that probe's span, at its time."""
        trace_id, span_id = probe_ids(uid)
        parent = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
            trace_id, span_id, is_remote=False, trace_flags=trace.TraceFlags(1))))
        at = _ns(event.at)
        drift = self._tracer.start_span(f"drift {event.kind.value}", context=parent,
                                        attributes=attributes.drift_attributes(event),
                                        start_time=at)
        drift.end(at)

    def _measure(self, target: Target, result: ProbeResult) -> None:
        labels = attributes.metric_attributes(target, result)
        if result.total_ms is not None:
            self._duration.record(result.total_ms / 1000, labels)
        if result.stream and result.time_to_first_token_ms is not None:
            self._first_chunk.record(result.time_to_first_token_ms / 1000, labels)
        for kind, count in zip(("input", "output"), attributes.token_counts(target, result)):
            if count is not None:
                self._tokens.record(count, {**labels, "gen_ai.token.type": kind})

    def flush(self, timeout_s: float) -> bool:
        """Send everything recorded so far now (tests, and shutdown)."""
        ms = round(timeout_s * 1000)
        traces = self._traces.force_flush(ms)
        metrics = self._meters.force_flush(ms)
        return bool(traces and metrics)

    def shutdown(self, deadline_s: float = defaults.OTEL_SHUTDOWN_FLUSH_S) -> None:
        """Flush what is queued and stop, within `deadline_s` however the collector behaves
        (what is left then is dropped: the probes are stored regardless)."""
        if self._closed:
            return
        self._closed = True

        def stop() -> None:
            self._traces.shutdown()
            self._meters.shutdown(timeout_millis=deadline_s * 1000)

        stopping = threading.Thread(target=stop, name="monitor-otel-shutdown", daemon=True)
        stopping.start()
        stopping.join(deadline_s)
        self.failures.tell_rest()
        if stopping.is_alive():
            # Still retrying: its last lines stay with us rather than reach the log.
            log.warning("OpenTelemetry: the last spans and metrics were not all sent to %s "
                        "within %g s; the rest is dropped (the probes are stored)",
                        self.settings.endpoint, deadline_s)
        else:
            self.failures.detach()
