"""What crosses from the forwarding side of the proxy to the recording side.

The forwarder builds one `Exchange` per call once the answer has been passed on in full, and
hands it to a `TrafficSink`. `submit` must return at once: the app's call has already been
answered, and a slow or absent store may never slow the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from monitor.domain import Provider


class RecordMode:
    """How much of a route's traffic is kept: `all`, `headers` (no bodies), or `sample:F`."""

    ALL = "all"
    HEADERS = "headers"
    SAMPLE_PREFIX = "sample:"


@dataclass(frozen=True)
class Route:
    """One `[[routes]]` entry: requests under /{name}/ go to `upstream`, recorded as `name`."""

    name: str
    provider: Provider
    upstream: str  # scheme://host[:port][/base path], no trailing slash
    record: str = RecordMode.ALL  # all | headers | sample:0.1
    sample_rate: float = 1.0  # the fraction kept (1.0 unless record = "sample:F")
    max_body_bytes: int = 1_048_576  # larger bodies are forwarded whole, recorded truncated


@dataclass(frozen=True)
class Exchange:
    """One forwarded call, as the app and the upstream saw it. Never holds a credential."""

    route: str  # Route.name
    provider: Provider
    method: str
    path: str  # the upstream path with its query string, e.g. "/v1/chat/completions"
    upstream_url: str  # the full URL the call went to (no credentials ever appear in URLs here)
    started_at: datetime  # aware UTC: when the proxy had read the app's request
    # The app's request as forwarded, with Authorization / api-key / x-api-key and our own
    # token header removed; the credential itself is kept only as a hash.
    request_headers: dict[str, str]
    request_body: bytes  # at most Route.max_body_bytes
    request_truncated: bool
    credential_hash: str | None  # sha256 hex of the credential value; None if the app sent none
    # The upstream's answer as passed back to the app. status None: no answer (see error).
    status: int | None
    response_headers: dict[str, str]  # as received, names lower-cased, not yet redacted
    response_body: bytes  # as received (raw SSE for a stream), at most Route.max_body_bytes
    response_truncated: bool
    streamed: bool  # the answer was text/event-stream and was forwarded chunk by chunk
    # Timings, in ms from `started_at`: the upstream's, and the proxy's own added time.
    time_to_headers_ms: float | None
    time_to_first_byte_ms: float | None
    upstream_total_ms: float | None
    proxy_added_ms: float  # the app's wait minus the upstream's (reading, connecting, relaying)
    error: str | None = None  # transport failure reaching the upstream, as a short sentence


class TrafficSink(Protocol):
    """Where the forwarder hands finished exchanges. Must not block or raise."""

    def submit(self, exchange: Exchange) -> None: ...
