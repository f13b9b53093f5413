"""The forwarding side of `monitor proxy`: /{route}/rest goes to {upstream}/rest, transparently.

- Method, path, query and body go upstream unchanged, with the app's end-to-end headers (Host
  rewritten, hop-by-hop and our token header dropped) and its own credentials.
- The answer comes back as the upstream sent it: status, headers (hop-by-hop aside) and body
  byte for byte, compressed or not. A body of known length is relayed whole (one send when it is
  small); a chunked or open-ended one (a stream) is relayed chunk by chunk as each arrives.
- Redirects are passed back, never followed; 4xx and 5xx reach the app unchanged. When no
  answer comes at all the app gets a 502 (504 on a timeout) in OpenAI's error shape.
- Once the app has its answer, the call goes to the sink as an Exchange (no credential in it):
  submit() returns at once, so recording never delays an app.
"""

from __future__ import annotations

import hmac
import http.client
import logging
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

from monitor import defaults, httpd
from monitor.clock import Clock, utc_now
from monitor.errors import ProxyError
from monitor.proxy.exchange import Exchange, Route, TrafficSink
from monitor.proxy.headers import RequestHeaders, error_reply, head, response_headers
from monitor.proxy.upstream import Upstream, UpstreamError
from monitor.secrets import Secret

logger = logging.getLogger("monitor.proxy")

_SMALL = 64 * 1024  # a body of known length up to this goes out with its headers, in one send
_PIECE = 64 * 1024  # the most read from the upstream at once
_NO_BODY = frozenset({204, 304})


@dataclass(frozen=True)
class _Mapped:
    route: Route
    upstream: Upstream


class _Relay:
    """What relaying one answer found: the start of the body, and how it ended."""

    __slots__ = ("error", "first_byte", "headers", "kept", "size")

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers  # the upstream's, as received, names lower-cased
        self.kept: list[bytes] = []
        self.size = 0
        self.first_byte: float | None = None
        self.error: str | None = None

    def keep(self, data: bytes, limit: int) -> None:
        if self.first_byte is None and data:
            self.first_byte = time.perf_counter()
        room = limit - self.size
        if room > 0:
            self.kept.append(data[:room])
        self.size += len(data)


def _is_stream(headers: Mapping[str, str]) -> bool:
    """Server-sent events: relayed as they arrive even when their length is known."""
    return headers.get("content-type", "").startswith("text/event-stream")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else Nagle plus delayed ACK stall small writes by ~40 ms
    timeout = defaults.PROXY_IDLE_TIMEOUT_S
    server: _Server

    def parse_request(self) -> bool:
        self._arrived = time.perf_counter()  # the app's wait starts with its request line
        return super().parse_request()

    def _call(self) -> None:
        server = self.server
        server.enter()
        try:
            self._forward()
        except OSError:  # the app went away, or stop() shut the socket
            self.close_connection = True
        finally:
            server.leave()
            if server.draining:
                self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _call

    def _forward(self) -> None:
        server = self.server
        arrived = self._arrived
        token = self.headers.get("x-monitor-proxy-token")
        if server.token is not None and (token is None or not hmac.compare_digest(
                token.encode("utf-8", "surrogateescape"), server.token.value.encode())):
            self._refuse(401, "Unauthorized", "missing or wrong X-Monitor-Proxy-Token header",
                         "proxy_token")
            return
        target, has_query, query = self.path.partition("?")
        name, _, rest = target.removeprefix("/").partition("/")
        mapped = server.routes.get(name)
        if mapped is None:
            self._refuse(404, "Not Found", f"no route {name!r} in this proxy; configured: "
                         f"{', '.join(sorted(server.routes))}", "unknown_route")
            return
        body = self._read_body()
        if body is None:
            return
        route, upstream = mapped.route, mapped.upstream
        path = f"{upstream.base_path}/{rest}" + (f"?{query}" if has_query else "")
        # A body is sent with its length, however the app framed it; no body, no length.
        framed = body or "content-length" in self.headers or "transfer-encoding" in self.headers
        headers = RequestHeaders(self.headers.items(), upstream.host_header,
                                 len(body) if framed else None)
        started_at, start = server.clock(), time.perf_counter()
        exchange = _Exchange(route, self.command, path, upstream.origin + path, started_at,
                             headers, body)
        try:
            connection, response = upstream.send(self.command, path, headers.forward, body)
        except UpstreamError as failure:
            status, reason = (504, "Gateway Timeout") if failure.timed_out else (502, "Bad Gateway")
            self.wfile.write(error_reply(status, reason, str(failure), "upstream_unreachable"))
            server.submit(exchange.failed(str(failure), arrived, start))
            return
        headers_at = time.perf_counter()
        relay = self._relay(response, route.max_body_bytes)
        done = time.perf_counter()
        if relay.error is None and response.isclosed() and not response.will_close:
            upstream.release(connection)
        else:
            connection.close()
        server.submit(exchange.answered(response, relay, arrived, start, headers_at, done))

    def _relay(self, response: http.client.HTTPResponse, limit: int) -> _Relay:
        """Pass the answer on: head, then the body whole or chunk by chunk."""
        forward, received = response_headers(response.getheaders())
        relay = _Relay(received)
        head_only = self.command == "HEAD" or response.status in _NO_BODY or response.status < 200
        framed = not response.chunked and response.length is not None
        if not head_only and not framed:
            if self.request_version == "HTTP/1.1":
                forward.append(("Transfer-Encoding", "chunked"))
            else:  # an HTTP/1.0 app reads to the end of the connection
                self.close_connection = True
        start = head(response.status, response.reason, forward)
        try:
            if head_only:
                response.read()  # nothing, but the answer is then complete
                self.wfile.write(start)
            elif framed and (response.length or 0) <= _SMALL and not _is_stream(received):
                data = self._read_whole(response, relay)
                relay.keep(data, limit)
                self.wfile.write(start + data)  # cut short as the upstream cut it, if it did
            else:
                self.wfile.write(start)
                self._pieces(response, relay, limit, chunked=not framed and
                             self.request_version == "HTTP/1.1")
        except OSError as error:
            relay.error = relay.error or f"The app closed its connection mid-answer ({error})"
            self.close_connection = True
        return relay

    def _read_whole(self, response: http.client.HTTPResponse, relay: _Relay) -> bytes:
        """A small body of known length; what arrived of it if the upstream broke off, and
        then the app's connection ends after it, so the app sees the same short answer."""
        try:
            return response.read()
        except http.client.IncompleteRead as short:
            relay.error = (f"The upstream's answer broke off after {len(short.partial)} of "
                           f"{len(short.partial) + (short.expected or 0)} bytes")
            self.close_connection = True
            return short.partial
        except (OSError, http.client.HTTPException) as error:
            relay.error = f"The upstream's answer broke off ({error or type(error).__name__})"
            self.close_connection = True
            return b""

    def _pieces(self, response: http.client.HTTPResponse, relay: _Relay, limit: int, *,
                chunked: bool) -> None:
        while True:
            try:
                data = response.read1(_PIECE)
            except (OSError, http.client.HTTPException) as error:
                # Headers are gone: the app can only see the answer end short. Without the
                # last chunk (or with the connection closed early) it knows it is incomplete.
                relay.error = f"The upstream's answer broke off after {relay.size} bytes ({error})"
                self.close_connection = True
                return
            if not data:
                break
            relay.keep(data, limit)
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._refuse(400, "Bad Request", "invalid Content-Length", "bad_request")
            return None
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0], 16)
            except ValueError:
                self._refuse(400, "Bad Request", "invalid chunked request body", "bad_request")
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: dropped, like every hop-by-hop field
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _refuse(self, status: int, reason: str, message: str, code: str) -> None:
        """Our own error answer; the request's body is left unread, so the connection ends."""
        self.close_connection = True
        self.wfile.write(error_reply(status, reason, message, code, close=True))

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the sink logs each call, without what a request line could carry."""


class _Exchange:
    """An Exchange in the making: what is known once the request is read."""

    __slots__ = ("body", "headers", "method", "path", "route", "started_at", "url")

    def __init__(self, route: Route, method: str, path: str, url: str, started_at: datetime,
                 headers: RequestHeaders, body: bytes) -> None:
        self.route, self.method, self.path, self.url = route, method, path, url
        self.started_at, self.headers, self.body = started_at, headers, body

    def _make(self, **answer: Any) -> Exchange:
        limit = self.route.max_body_bytes
        return Exchange(route=self.route.name, provider=self.route.provider, method=self.method,
                        path=self.path, upstream_url=self.url, started_at=self.started_at,
                        request_headers=self.headers.recorded, request_body=self.body[:limit],
                        request_truncated=len(self.body) > limit,
                        credential_hash=self.headers.credential_hash, **answer)

    def failed(self, error: str, arrived: float, start: float) -> Exchange:
        end = time.perf_counter()
        return self._make(status=None, response_headers={}, response_body=b"",
                          response_truncated=False, streamed=False, time_to_headers_ms=None,
                          time_to_first_byte_ms=None, upstream_total_ms=None,
                          proxy_added_ms=(end - arrived) * 1000, error=error)

    def answered(self, response: http.client.HTTPResponse, relay: _Relay, arrived: float,
                 start: float, headers_at: float, done: float) -> Exchange:
        end = time.perf_counter()
        received = relay.headers
        upstream_total_ms = (done - start) * 1000
        first = relay.first_byte
        return self._make(
            status=response.status, response_headers=received,
            response_body=b"".join(relay.kept),
            response_truncated=relay.size > self.route.max_body_bytes,
            streamed=_is_stream(received),
            time_to_headers_ms=(headers_at - start) * 1000,
            time_to_first_byte_ms=None if first is None else (first - start) * 1000,
            upstream_total_ms=upstream_total_ms,
            proxy_added_ms=max(0.0, (end - arrived) * 1000 - upstream_total_ms),
            error=relay.error)


class _Server(httpd.HTTPServer):
    def __init__(self, address: tuple[str, int], routes: Mapping[str, _Mapped],
                 sink: TrafficSink, token: Secret | None, clock: Clock) -> None:
        self.routes = routes
        self.sink = sink
        self.token = token
        self.clock = clock
        self.draining = False
        self._in_flight = 0
        self._idle = threading.Condition()
        super().__init__(address, _Handler)

    def enter(self) -> None:
        with self._idle:
            self._in_flight += 1

    def leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until no call is in flight; False if some still are after `timeout_s`."""
        self.draining = True
        with self._idle:
            return self._idle.wait_for(lambda: not self._in_flight, timeout_s)

    def submit(self, exchange: Exchange) -> None:
        try:
            self.sink.submit(exchange)
        except Exception:  # a sink must not raise; if one does, the app still has its answer
            logger.exception("the traffic sink failed on a %s call", exchange.route)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # An app that hangs up mid-call is routine for a proxy; anything else is a bug.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def refuse_public(host: str, token: str | None, insecure_public: bool) -> None:
    """ProxyError for a non-loopback address without a token or --insecure-public."""
    if not token and not insecure_public and not httpd.is_loopback(host):
        raise ProxyError(
            f"refusing to listen on {host or 'every address'}, which is not loopback: anyone "
            "who can reach it could spend your API keys' quota through it. Set "
            "MONITOR_PROXY_TOKEN (apps then send it as X-Monitor-Proxy-Token) or pass "
            "--insecure-public")


class Proxy(httpd.Background[_Server]):
    """The proxy on a background thread: start(), .url, stop() (which lets calls finish)."""

    what = "the proxy"
    thread_name = "monitor-proxy"
    error = ProxyError

    def __init__(self, routes: tuple[Route, ...], sink: TrafficSink, host: str = "127.0.0.1",
                 port: int = 0, *, token: str | None = None, insecure_public: bool = False,
                 clock: Clock = utc_now,
                 connect_timeout_s: float = defaults.PROXY_CONNECT_TIMEOUT_S,
                 read_timeout_s: float = defaults.PROXY_READ_TIMEOUT_S) -> None:
        refuse_public(host, token, insecure_public)
        self._routes = {
            route.name: _Mapped(route, Upstream(route.upstream,
                                                connect_timeout_s=connect_timeout_s,
                                                read_timeout_s=read_timeout_s,
                                                pool_size=defaults.PROXY_POOL_SIZE))
            for route in routes}
        self._sink = sink
        self._token = Secret(token) if token else None
        self._clock = clock
        super().__init__(host, port)

    def _make(self) -> _Server:
        return _Server((self._host, self._port), self._routes, self._sink, self._token,
                       self._clock)

    def stop(self, drain_timeout_s: float = defaults.PROXY_DRAIN_TIMEOUT_S) -> None:
        """Stop taking connections, let calls in flight finish (up to `drain_timeout_s`),
        then end the idle connections and close the upstream pools."""
        server = self._server
        if server is None:
            return
        server.shutdown()  # no new connections from here on
        if not server.drain(drain_timeout_s):
            logger.warning("calls still in flight after %.0f s are cut off", drain_timeout_s)
        super().stop()
        for mapped in self._routes.values():
            mapped.upstream.close()
