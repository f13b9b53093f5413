"""`monitor serve` and `monitor run --http`: the dashboard, the report and alerts as JSON,
/metrics for Prometheus and /healthz, on a small threaded WSGI server.

    /               dashboard: the HTML report's charts, refreshed in place
    /api/report     the report document (docs/report.md); ?since=24h&until=...&target=a
    /api/alerts     alerts as `monitor alerts --json` lists them; ?open=1 for open ones only
    /metrics        Prometheus exposition of the store's numbers
    /probes/{id}    one stored probe in full: timings, headers, payload, body, what changed
    /badges/{target}/{uptime-24h|uptime-7d|uptime-30d|latency-p95|fingerprint|model}.svg
                    a status badge for READMEs, from the target's last 24 hours
    /healthz        200 or 503 with the reasons as JSON; never needs the token

The app reads only through the callables it is given, so it holds no session and tests hand it
fixture documents. With a token, every route but /healthz wants `Authorization: Bearer
<token>`, compared in constant time; the token is never logged (access lines carry the request
line only) nor sent back.

The server answers only to the Host names it knows (its own address, loopback names, IP
literals and the allowed names it is given), with 421 otherwise: a page on another site that
rebinds its DNS name to this address cannot read the report through a visitor's browser. A
client gets REQUEST_READ_TIMEOUT_S (defaults.py) to send its whole request, however it trickles it.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from monitor import defaults, httpd
from monitor.durations import OutOfRange, parse_since
from monitor.errors import MonitorError
from monitor.httpd import is_loopback
from monitor.render import exposition_registry, render_dashboard, render_metrics
from monitor.render.badges import KINDS as BADGE_KINDS
from monitor.render.badges import badge_for
from monitor.render.dashboard import POLICY
from monitor.render.probe_page import POLICY as PROBE_POLICY
from monitor.render.probe_page import render_missing, render_probe_page
from monitor.snapshot import MetricsSnapshot

log = logging.getLogger(__name__)

ReportSource = Callable[[datetime, datetime, list[str] | None], dict[str, Any]]
AlertsSource = Callable[[bool], list[dict[str, Any]]]
MetricsSource = Callable[[], MetricsSnapshot]
HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
ProbeSource = Callable[[int], dict[str, Any] | None]  # store.probe_reads.probe_detail

DEFAULT_HOST = "127.0.0.1"  # the dashboard shows upstream data: public only when asked
DEFAULT_SINCE = "24h"  # as `monitor report`
_MAX_REFRESH_S = 86_400
_JSON = "application/json; charset=utf-8"
_HTML = "text/html; charset=utf-8"
_PROBES = "/probes/"
_BADGES = "/badges/"
# A badge is an image; were it ever opened as a document, it may load and run nothing.
_BADGE_HEADERS = (("Content-Security-Policy", "default-src 'none'"),)
_ALWAYS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))
_STATUS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 503: "Service Unavailable"}


class _BadRequest(Exception):
    """A query parameter the route cannot use; its message is the 400's error."""


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = _JSON
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, payload: Any, *headers: tuple[str, str]) -> _Response:
    return _Response(status, json.dumps(payload, ensure_ascii=False).encode(), _JSON, headers)


def make_app(report_source: ReportSource, alerts_source: AlertsSource,
             metrics_source: MetricsSource, health: HealthCheck, token: str | None, *,
             clock: Callable[[], datetime] = lambda: datetime.now(UTC),
             refresh_s: int = defaults.DASHBOARD_REFRESH_S,
             probe_source: ProbeSource | None = None) -> WSGIApplication:
    """The WSGI app behind `monitor serve`; `token` None leaves every route open. Without a
    `probe_source` there are no /probes/ pages."""
    if token is not None and not token.strip():
        raise ValueError("an empty token would accept `Authorization: Bearer ` from anyone")
    return _App(report_source, alerts_source, metrics_source, health, token, clock, refresh_s,
                probe_source)


class _App:
    def __init__(self, report_source: ReportSource, alerts_source: AlertsSource,
                 metrics_source: MetricsSource, health: HealthCheck, token: str | None,
                 clock: Callable[[], datetime], refresh_s: int,
                 probe_source: ProbeSource | None) -> None:
        self._report = report_source
        self._probe = probe_source
        self._alerts = alerts_source
        self._registry = exposition_registry(metrics_source)
        self._health = health
        self._token = token.encode() if token is not None else None
        self._clock = clock
        self._refresh_s = refresh_s
        self._routes: dict[str, Callable[[dict[str, list[str]], WSGIEnvironment], _Response]] = {
            "/": self._dashboard, "/api/report": self._api_report,
            "/api/alerts": self._api_alerts, "/metrics": self._metrics, "/healthz": self._healthz,
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        response = self._respond(environ)
        start_response(f"{response.status} {_STATUS[response.status]}", [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))), *_ALWAYS, *response.headers])
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [response.body]

    def _respond(self, environ: WSGIEnvironment) -> _Response:
        path = environ.get("PATH_INFO") or "/"
        route = self._routes.get(path)
        if route is None and path.startswith(_PROBES) and self._probe is not None:
            route = self._probe_page
        if route is None and path.startswith(_BADGES):
            route = self._badge
        if route is None:
            return _json(404, {"error": "not found", "routes": sorted(self._routes)})
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return _json(405, {"error": "only GET and HEAD"}, ("Allow", "GET, HEAD"))
        if path != "/healthz" and not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            return _json(401, {"error": "this server wants `Authorization: Bearer <token>`"},
                         ("WWW-Authenticate", 'Bearer realm="monitor"'))
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        try:
            return route(query, environ)
        except _BadRequest as error:
            return _json(400, {"error": str(error)})
        except MonitorError as error:  # the store is down or behind: say so, keep serving
            return _json(503, {"error": str(error)})

    def _authorized(self, header: str) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = header.partition(" ")
        # compare_digest takes as long for a near miss as for a far one.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self._token)

    def _range(self, query: dict[str, list[str]]) -> tuple[datetime, datetime, list[str] | None]:
        now = self._clock()
        since = _time(query, "since", DEFAULT_SINCE, now)
        until = _time(query, "until", None, now)
        if since >= until:
            raise _BadRequest(f"since ({since.isoformat()}) must be before until "
                              f"({until.isoformat()})")
        targets = query.get("target")
        if targets is not None and not all(t.strip() for t in targets):
            raise _BadRequest("target: expected a target name, got an empty one")
        return since, until, targets

    def _dashboard(self, query: dict[str, list[str]], environ: WSGIEnvironment) -> _Response:
        _only(query, "since", "until", "target", "refresh")
        refresh = _one(query, "refresh")
        if refresh is None:
            refresh_s = self._refresh_s
        elif refresh.isdigit() and 1 <= int(refresh) <= _MAX_REFRESH_S:
            refresh_s = int(refresh)
        else:
            raise _BadRequest(f"refresh: expected whole seconds from 1 to {_MAX_REFRESH_S}, "
                              f"got {refresh[:40]!r}")
        since, until, targets = self._range(query)
        page = render_dashboard(self._report(since, until, targets), self._alerts(True),
                                since=_one(query, "since") or DEFAULT_SINCE, targets=targets,
                                refresh_s=refresh_s)
        return _Response(200, page.encode(), "text/html; charset=utf-8",
                         (("Content-Security-Policy", POLICY), ("Referrer-Policy", "no-referrer")))

    def _probe_page(self, query: dict[str, list[str]], environ: WSGIEnvironment) -> _Response:
        assert self._probe is not None  # routed here only with one
        text = (environ.get("PATH_INFO") or "").removeprefix(_PROBES)
        # Digits only (int() would take " 7", "+7", "٧") and no larger than an id can be.
        found = (self._probe(int(text))
                 if text.isascii() and text.isdigit() and 0 < int(text) < 2**63 else None)
        headers = (("Content-Security-Policy", PROBE_POLICY), ("Referrer-Policy", "no-referrer"))
        if found is None:
            return _Response(404, render_missing(text[:40]).encode(), _HTML, headers)
        return _Response(200, render_probe_page(found, self._clock()).encode(), _HTML, headers)

    def _badge(self, query: dict[str, list[str]], environ: WSGIEnvironment) -> _Response:
        _only(query)
        # WSGI hands the decoded path over as latin-1; target names may be any UTF-8.
        raw = str(environ.get("PATH_INFO", "")).removeprefix(_BADGES)
        try:
            rest = raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            rest = raw
        name, _, file = rest.rpartition("/")
        kind = file.removesuffix(".svg")
        if not name or not file.endswith(".svg") or kind not in BADGE_KINDS:
            return _json(404, {"error": "badges are /badges/{target}/{kind}.svg with kind one "
                                        "of " + ", ".join(BADGE_KINDS)})
        now = self._clock()
        doc = self._report(now - timedelta(hours=24), now, [name])
        found = [t for t in doc["targets"] if t["target"] == name]
        if not found:
            return _json(404, {"error": f"no target named {name[:100]!r}"})
        return _Response(200, badge_for(found[0], kind).encode(), "image/svg+xml; charset=utf-8",
                         _BADGE_HEADERS)

    def _api_report(self, query: dict[str, list[str]], environ: WSGIEnvironment) -> _Response:
        _only(query, "since", "until", "target")
        return _json(200, self._report(*self._range(query)))

    def _api_alerts(self, query: dict[str, list[str]], environ: WSGIEnvironment) -> _Response:
        _only(query, "open")
        flag = _one(query, "open") or "0"
        if flag not in ("0", "1", "false", "true"):
            raise _BadRequest(f"open: expected 1 or 0, got {flag[:40]!r}")
        return _json(200, self._alerts(flag in ("1", "true")))

    def _metrics(self, query: dict[str, list[str]], environ: WSGIEnvironment) -> _Response:
        body, content_type = render_metrics(self._registry, environ.get("HTTP_ACCEPT", ""))
        return _Response(200, body, content_type)

    def _healthz(self, query: dict[str, list[str]], environ: WSGIEnvironment) -> _Response:
        ok, reasons = self._health()
        return _json(200 if ok else 503, {"ok": ok, "reasons": reasons})


def _only(query: dict[str, list[str]], *names: str) -> None:
    unknown = sorted(set(query) - set(names))
    if unknown:
        raise _BadRequest(f"unknown parameter {unknown[0][:40]!r}; this route takes "
                          + (", ".join(names) or "none"))


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise _BadRequest(f"{name}: expected one value, got {len(values)}")
    return values[0]


def _time(query: dict[str, list[str]], name: str, default: str | None,
          now: datetime) -> datetime:
    text = _one(query, name) or default
    if text is None:
        return now
    try:
        moment = parse_since(text, now)
    except OutOfRange as error:
        raise _BadRequest(f"{name}: {error}") from None
    if moment is None:
        raise _BadRequest(f'{name}: expected a duration back from now like "24h", a date like '
                          f'"2026-11-01" or an ISO 8601 time, got {text[:40]!r}')
    return moment


# --- the server -----------------------------------------------------------------------------


def _host_name(header: str) -> str:
    """The name in a Host header, without its port, lower case, without a trailing dot."""
    if header.startswith("["):
        return header[1:].partition("]")[0].lower()
    name, colon, port = header.rpartition(":")
    if not colon or not port.isdigit():
        name = header
    return name.lower().rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _HostCheck:
    """Answer only to known Host names; 421 Misdirected Request otherwise.

    A DNS rebinding attack points a name its author controls at this address, so the victim's
    browser sends that name; an IP literal or a name this machine chose can only come from a
    client that meant this server. A request without a Host (HTTP/1.0) comes from no browser."""

    def __init__(self, app: WSGIApplication, names: frozenset[str]) -> None:
        self._app = app
        self._names = names

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True
        name = _host_name(header)
        return _is_ip(name) or is_loopback(name) or name in self._names

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        header = environ.get("HTTP_HOST")
        if self.allows(header):
            return self._app(environ, start_response)
        log.warning("refused a request for Host %r (not an allowed host name)",
                    str(header)[:100])
        body = json.dumps({"error": f"this server does not answer to Host {str(header)[:100]!r}; "
                                    "allow the name with --allowed-host or [web] allowed_hosts"}
                          ).encode()
        start_response("421 Misdirected Request", [
            ("Content-Type", _JSON), ("Content-Length", str(len(body))), *_ALWAYS])
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


class _RequestTooSlow(TimeoutError):
    pass


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes, each read waiting no later than `deadline` (time.monotonic)."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _RequestTooSlow()
        self._connection.settimeout(left)
        try:
            return self._connection.recv_into(buffer)
        except TimeoutError:
            raise _RequestTooSlow() from None
        finally:
            self._connection.settimeout(defaults.WRITE_TIMEOUT_S)


class _Handler(WSGIRequestHandler):
    timeout = defaults.WRITE_TIMEOUT_S
    server: _Server

    def setup(self) -> None:
        super().setup()
        deadline = time.monotonic() + self.server.request_timeout_s
        self.rfile.close()  # the plain reader setup() made; the socket stays open
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def handle(self) -> None:
        # A slow, idle or vanished client is one log line, not a traceback on stderr.
        try:
            super().handle()
        except _RequestTooSlow:
            log.warning("%s: closed the connection: no complete request within %g s",
                        self.address_string(), self.server.request_timeout_s)
        except TimeoutError:
            log.warning("%s: closed the connection: the client stopped reading the answer",
                        self.address_string())
        except ConnectionError as error:
            log.info("%s: the client closed the connection (%s)", self.address_string(),
                     type(error).__name__)

    def log_message(self, format: str, *args: Any) -> None:
        # To logging rather than stderr; the request line holds no credentials.
        log.info("%s %s", self.address_string(), format % args)


class _Server(httpd.ThreadedServer, WSGIServer):
    # A slow client never holds up stop() for long: its socket is shut and its thread waited
    # for, bounded (httpd); while it is served, request_timeout_s cuts off one that stalls.
    request_timeout_s = defaults.REQUEST_READ_TIMEOUT_S

    def server_bind(self) -> None:
        super().server_bind()
        self.setup_environ()  # what WSGIServer.server_bind adds to HTTPServer's


class _Server6(_Server):
    address_family = socket.AF_INET6


class WebServer(httpd.Background["_Server"]):
    """The app on a background thread: start(), .url, stop(); also a context manager.
    `monitor run --http` starts one beside the daemon's loop."""

    what = "the web server"
    thread_name = "monitor-web"
    poll_interval_s = 0.1
    error = MonitorError

    def __init__(self, app: WSGIApplication, host: str = DEFAULT_HOST, port: int = 0, *,
                 allowed_hosts: Iterable[str] = (),
                 request_timeout_s: float = defaults.REQUEST_READ_TIMEOUT_S) -> None:
        names = {name.lower().rstrip(".") for name in allowed_hosts}
        if host and not _is_ip(host.strip("[]")):
            names.add(host.lower().rstrip("."))  # bound by name: that name is its own
        self._app = _HostCheck(app, frozenset(names))
        self._request_timeout_s = request_timeout_s
        super().__init__(host, port)

    def _make(self) -> _Server:
        kind = _Server6 if ":" in self._host else _Server
        server = kind((self._host, self._port), _Handler)
        server.set_app(self._app)
        server.request_timeout_s = self._request_timeout_s
        return server


def serve(host: str, port: int, app: WSGIApplication,
          ready: Callable[[str], None] | None = None, *,
          stop: threading.Event | None = None, allowed_hosts: Iterable[str] = ()) -> None:
    """Serve until Ctrl-C, SIGTERM or `stop`; `ready` gets `listening on <url>` first."""
    with WebServer(app, host, port, allowed_hosts=allowed_hosts) as server:
        announce = None if ready is None else lambda: ready(f"listening on {server.url}")
        httpd.serve_until_signal(stop, announce)
