"""A real OTLP/HTTP collector on loopback: it decodes what the exporter sends (protobuf, with
opentelemetry-proto, as a real collector would) and keeps the spans and metric points.

    with Collector() as collector:
        ... export to collector.url ...
        spans = collector.wait_for_spans(3)
        spans[0].attributes["gen_ai.request.model"]
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.waiting import wait_until


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs}


@dataclass
class Span:
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    trace_id: str  # hex
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]  # (name, time in ns, attributes)
    resource: dict[str, Any]
    scope: str


@dataclass
class Point:
    metric: str
    unit: str
    attributes: dict[str, Any]
    count: int
    sum: float
    bounds: list[float]


@dataclass
class Collector:
    spans: list[Span] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # of every request, lower-case
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def wait_for_spans(self, count: int) -> list[Span]:
        """At least `count` spans received; exactly those received so far."""
        wait_until(lambda: len(self.spans) >= count,
                   lambda: f"{count} spans (got {[s.name for s in self.spans]})")
        with self._lock:
            return list(self.spans)

    def points_of(self, metric: str) -> list[Point]:
        """The points of `metric` in the newest export that carried it (they are cumulative)."""
        with self._lock:
            return [p for p in self.points if p.metric == metric]

    def _traces(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = attributes_of(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    span = Span(
                        name=s.name, kind=s.kind, trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(),
                        start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                        status_code=s.status.code, status_message=s.status.message,
                        attributes=attributes_of(s.attributes),
                        events=[(e.name, e.time_unix_nano, attributes_of(e.attributes))
                                for e in s.events],
                        resource=resource, scope=scope_spans.scope.name)
                    with self._lock:
                        self.spans.append(span)

    def _metrics(self, body: bytes) -> None:
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.WhichOneof("data") != "histogram":
                        continue
                    received += [Point(metric.name, metric.unit, attributes_of(p.attributes),
                                       p.count, p.sum, list(p.explicit_bounds))
                                 for p in metric.histogram.data_points]
        with self._lock:
            # Cumulative: the newest export of a metric replaces what an older one said.
            names = {p.metric for p in received}
            self.points = [p for p in self.points if p.metric not in names] + received


def _handler(collector: Collector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            with collector._lock:
                collector.headers.append({k.lower(): v for k, v in self.headers.items()})
            answer: Any
            if self.path == "/v1/traces":
                collector._traces(body)
                answer = ExportTraceServiceResponse()
            elif self.path == "/v1/metrics":
                collector._metrics(body)
                answer = ExportMetricsServiceResponse()
            else:
                self.send_error(404)
                return
            payload = answer.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler

