"""Answers from the store (`monitor sim --recorded`): an upstream that repeats history.

A POST to `.../chat/completions` (OpenAI's and Azure's routes, any base path) or to
`.../v1/messages` (Anthropic's) is matched by its
JSON payload: canonical JSON and sha256, as request_payloads keys it. A match gets the newest
successful probe's answer to that payload (only that target's answers with `--target`): the
stored status, the stored headers in their order, and the body byte for byte. A stream goes
out as its SSE events, one HTTP chunk each. Only the framing headers are written afresh for the
bytes actually sent (content-length, transfer-encoding, content-encoding, connection). With
`latency`, each answer takes as long as it took when recorded. Anything else gets a 404 (400 for
a body that is not JSON) in OpenAI's error shape.

Each lookup is two index seeks (payload by sha256, then the newest successful probe by
payload), and answers are cached for CACHE_TTL_S, so the size of the store does not matter.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from sqlalchemy import Engine, bindparam, select, true

from monitor import httpd
from monitor.errors import MonitorError
from monitor.sim import responses
from monitor.store import blobs
from monitor.store.models import ProbeRow, RequestPayloadRow
from monitor.store.records import target_id_of
from monitor.store.shared import canonical_json

# Answers recorded while the server runs are served once a cached entry expires.
CACHE_TTL_S = 10.0
CACHE_SIZE = 50_000  # entries; a canary answer is a few KB
_FRAMING = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection",
                      "keep-alive"})
# One SSE event: everything up to and including the blank line that ends it.
_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n|\r\r)|.+", re.DOTALL)


class RecordedError(MonitorError):
    """The recorded-answer server cannot start as asked."""


# Built once: constructing a statement costs as much as running it.
_NEWEST = (
    select(ProbeRow.id, ProbeRow.http_status, ProbeRow.response_headers_zlib,
           ProbeRow.raw_response_zlib, ProbeRow.time_to_headers_ms,
           ProbeRow.time_to_first_token_ms, ProbeRow.total_ms,
           # What the blobs were compressed with beside their dictionary (store/blobs.py).
           ProbeRow.x_request_id, ProbeRow.response_id, ProbeRow.response_created_at)
    # The index of successful probes by (request_payload_id, id) answers this without
    # reading other rows (its predicate matches `ok = true()` on both databases).
    .where(ProbeRow.request_payload_id == select(RequestPayloadRow.id)
           .where(RequestPayloadRow.sha256 == bindparam("digest")).scalar_subquery(),
           ProbeRow.ok == true())
    .order_by(ProbeRow.id.desc()).limit(1)
)
_NEWEST_OF_TARGET = _NEWEST.where(ProbeRow.target_id == bindparam("target"))


@dataclass(frozen=True)
class Recording:
    """One stored answer, ready to write."""

    probe_id: int
    status: int
    headers: tuple[tuple[str, str], ...]  # as stored, framing headers left out
    body: bytes
    events: tuple[bytes, ...] | None  # the body split into SSE events; None for a plain body
    time_to_headers_ms: float | None
    time_to_first_token_ms: float | None
    total_ms: float | None


class Library:
    """Recorded answers by request payload; thread-safe."""

    def __init__(self, engine: Engine, target: str | None = None) -> None:
        self.engine = engine
        self._target_id: int | None = None
        if target is not None:
            self._target_id = target_id_of(engine, target)
            if self._target_id is None:
                raise RecordedError(f"no stored probes of target {target!r}")
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, Recording | None]] = OrderedDict()
        self._dictionaries = blobs.Dictionaries()

    def find(self, payload: Any) -> tuple[str, Recording | None]:
        """The payload's sha256 and its newest successful recorded answer, if any."""
        digest = hashlib.sha256(canonical_json(payload).encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[0] > now:
                self._cache.move_to_end(digest)
                return digest, cached[1]
        found = self._load(digest)
        with self._lock:
            self._cache[digest] = (now + CACHE_TTL_S, found)
            self._cache.move_to_end(digest)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return digest, found

    def _load(self, digest: str) -> Recording | None:
        query = _NEWEST if self._target_id is None else _NEWEST_OF_TARGET
        with self.engine.connect() as connection:
            row = connection.execute(query, {"digest": digest, "target": self._target_id}).first()
            if row is None:
                return None
            headers = blobs.headers(connection, row, self._dictionaries)
            body = blobs.body(connection, row, self._dictionaries)
        stream = "event-stream" in headers.get("content-type", "")
        return Recording(
            probe_id=row.id,
            status=row.http_status or 200,
            # A stored value cannot hold CR or LF, but an imported file might: never split lines.
            headers=tuple((n, v) for n, v in headers.items()
                          if n not in _FRAMING and not re.search(r"[\r\n]", n + v)),
            body=body,
            events=tuple(m.group() for m in _EVENT.finditer(body)) if stream else None,
            time_to_headers_ms=row.time_to_headers_ms,
            time_to_first_token_ms=row.time_to_first_token_ms,
            total_ms=row.total_ms,
        )


def _head(status: int, headers: tuple[tuple[str, str], ...], framing: str) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(framing)
    text = "\r\n".join(lines) + "\r\n\r\n"
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # requests decoded the header bytes as latin-1; be lenient
        return text.encode("utf-8")


def _error(status: int, message: str, code: str) -> bytes:
    body = responses.openai_error(message, "invalid_request_error", None, code)
    return responses.message(status, [("content-type", responses.JSON)], body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # small writes go out at once (see monitor/sim/server.py)
    timeout = 300
    server: _Server

    def parse_request(self) -> bool:
        self._arrived = time.perf_counter()
        return super().parse_request()

    def do_POST(self) -> None:
        body = httpd.read_body(self)
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        if not path.endswith(("/chat/completions", "/v1/messages")):
            self._send(_error(404, f"Invalid URL (POST {path})", "not_found"))
            return
        try:
            payload = json.loads(body)
        except ValueError:
            self._send(_error(400, "The request body is not valid JSON.", "invalid_json"))
            return
        digest, recording = self.server.library.find(payload)
        if recording is None:
            self._send(_error(404, "No recorded answer to this request: the store holds no "
                              f"successful probe whose payload has sha256 {digest} (canonical "
                              "JSON).", "recording_not_found"))
            return
        if recording.events is None:
            self._plain(recording)
        else:
            self._stream(recording, recording.events)

    def do_GET(self) -> None:
        self._send(_error(404, f"Invalid URL (GET {self.path.split('?', 1)[0]})", "not_found"))

    def _plain(self, recording: Recording) -> None:
        head = _head(recording.status, recording.headers,
                     f"content-length: {len(recording.body)}")
        self._pause(recording.total_ms)
        self._send(head + recording.body)

    def _stream(self, recording: Recording, events: tuple[bytes, ...]) -> None:
        self._pause(recording.time_to_headers_ms)
        self._send(_head(recording.status, recording.headers, "transfer-encoding: chunked"))
        first, total = recording.time_to_first_token_ms, recording.total_ms
        for index, event in enumerate(events):
            if first is not None:
                # The first event at its recorded time; the rest spread evenly until the end.
                gap = (total - first) / max(1, len(events) - 1) if total is not None else 0.0
                self._pause(first + gap * index)
            self._send(responses.chunk(event))
        self._send(responses.LAST_CHUNK)

    def _pause(self, since_arrival_ms: float | None) -> None:
        if not self.server.latency or since_arrival_ms is None:
            return
        delay = since_arrival_ms / 1000 - (time.perf_counter() - self._arrived)
        if delay > 0:
            self.server.stopping.wait(delay)

    def _send(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError:  # the client went away, or stop() shut the socket
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a replaying client's every request would be a line."""


class _Server(httpd.HTTPServer):
    def __init__(self, address: tuple[str, int], library: Library, latency: bool) -> None:
        self.library = library
        self.latency = latency
        super().__init__(address, _Handler)


class RecordedServer(httpd.Background["_Server"]):
    """The recorded-answer server on a background thread: start(), .url, stop(). Clients use
    f"{url}/v1" as their base URL."""

    what = "the server"
    thread_name = "monitor-recorded"
    error = RecordedError

    def __init__(self, engine: Engine, target: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, latency: bool = False) -> None:
        self._library = Library(engine, target)
        self._latency = latency
        super().__init__(host, port)

    def _make(self) -> _Server:
        return _Server((self._host, self._port), self._library, self._latency)


def serve(engine: Engine, host: str, port: int, target: str | None, latency: bool,
          echo: Callable[[str], None]) -> None:
    """Serve until Ctrl-C or SIGTERM; the first line echoed is `listening on <url>`."""
    with RecordedServer(engine, target, host, port, latency) as server:
        httpd.serve_until_signal(ready=lambda: echo(f"listening on {server.url}"))
    echo("stopped")
