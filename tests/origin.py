"""An upstream for the proxy's tests: answers what the simulator has no reason to (redirects,
gzip, a stream held open on demand) and tells what reached it.

    with Origin() as origin:
        ... call the proxy, whose route points at origin.url ...
        origin.seen[0].headers["host"]

Paths:
    .../echo...     200, JSON: the method, path with query, headers (as sent) and the body's
                    length and sha256
    /redirect       302 to /elsewhere (which answers 200, and counts as seen if followed)
    /gzip           200, a gzip body with Content-Encoding: gzip and Content-Length
    /hold           200 text/event-stream, chunked: one event, then waits for release()
                    before the last one
    /status/NNN     that status, with a small JSON body
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from monitor import httpd

GZIP_TEXT = b'{"answer": "' + b"compressed " * 200 + b'"}'


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]  # as sent, in order
    body: bytes
    port: int  # the client's port: one per upstream connection

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def _any(self) -> None:
        body = httpd.read_body(self) or b""
        origin = self.server.origin
        origin.saw(Seen(self.command, self.path, list(self.headers.items()), body,
                        self.client_address[1]))
        path = self.path.partition("?")[0]
        if "/echo" in path:
            self._send(200, "application/json", json.dumps({
                "method": self.command, "path": self.path, "headers": list(self.headers.items()),
                "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
            }).encode())
        elif path == "/redirect":
            self._send(302, "text/plain", b"moved", [("Location", "/elsewhere")])
        elif path == "/gzip":
            self._send(200, "application/json", gzip.compress(GZIP_TEXT, mtime=0),
                       [("Content-Encoding", "gzip")])
        elif path == "/hold":
            self._hold(origin)
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), "application/json", b'{"status": "as asked"}')
        else:
            self._send(200, "text/plain", b"elsewhere")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

    def _send(self, status: int, content_type: str, body: bytes,
              extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in extra or []:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _hold(self, origin: Origin) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        first = b"data: first\n\n"
        self.wfile.write(b"%x\r\n%b\r\n" % (len(first), first))
        self.wfile.flush()
        origin.holding.set()
        released = origin.release_event.wait(30)
        last = b"data: last\n\n" if released else b"data: gave up\n\n"
        self.wfile.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last))
        origin.finished.set()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _Server(httpd.HTTPServer):
    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        super().__init__(("127.0.0.1", 0), _Handler)


class Origin(httpd.Background[_Server]):
    what = "the test origin"
    thread_name = "test-origin"

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.holding = threading.Event()  # /hold has sent its first event
        self.release_event = threading.Event()
        self.finished = threading.Event()  # /hold has sent its last event
        self._lock = threading.Lock()
        super().__init__("127.0.0.1", 0)

    def _make(self) -> _Server:
        return _Server(self)

    def saw(self, request: Seen) -> None:
        with self._lock:
            self.seen.append(request)

    def release(self) -> None:
        self.release_event.set()

    def drop_connections(self) -> None:
        """Close every connection to the origin from its side, as an idle timeout would."""
        assert self._server is not None
        self._server.close_connections()

    def stop(self) -> None:
        self.release_event.set()
        super().stop()
