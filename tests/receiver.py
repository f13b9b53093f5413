"""A real webhook receiver on loopback that a test can take down, bring back and script.

    with Receiver() as receiver:
        deliver(session, receiver.url + "/hook?token=x", body, ...)
        headers, body, path = receiver.wait_for(1)[0]

Every request that reaches it is recorded in `received` as (headers with lower-case names,
parsed JSON body, path with query), and what it was answered in `statuses`, in the same order.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self

from tests.waiting import DEADLINE_S

Received = tuple[dict[str, str], Any, str]


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.statuses: list[int] = []
        self._changed = threading.Condition()  # guards everything below and the two lists
        self._script: list[tuple[int, dict[str, str]]] = []  # answers for the next requests
        self._delay_s = 0.0
        self._down: Literal["refuse", "503"] | None = None
        self._closing = threading.Event()  # wakes sleeping handlers when the server stops
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._stop()

    def _start(self) -> None:
        # The same port after down(): a client keeps the URL it was given, as in production.
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self.port = server.server_address[1]
        self._server = server
        # A short poll keeps down() quick: shutdown() waits for the loop to notice.
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def _stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # the listening socket: new connections are refused
            self._server = None

    def down(self, mode: Literal["refuse", "503"] = "refuse") -> None:
        """Refuse connections (the socket is closed) or answer every request 503."""
        with self._changed:
            self._down = mode
        if mode == "refuse":
            self._stop()

    def up(self) -> None:
        """Accept and answer normally again, on the same port."""
        with self._changed:
            mode, self._down = self._down, None
        if mode == "refuse":
            self._start()

    def fail_next(self, n: int, status: int, headers: Mapping[str, str] | None = None) -> None:
        """Answer the next `n` requests with `status` (and `headers`, e.g. Retry-After)."""
        with self._changed:
            self._script.extend([(status, dict(headers or {}))] * n)

    def slow(self, seconds: float) -> None:
        """Wait this long before answering each request (0 to stop)."""
        with self._changed:
            self._delay_s = seconds

    def wait_for(self, count: int, timeout: float = DEADLINE_S) -> list[Received]:
        """The first `count` requests, once that many arrived; AssertionError after `timeout`."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.received) >= count, timeout)
            assert arrived, f"expected {count} requests within {timeout} s, got {len(self.received)}"
            return list(self.received[:count])

    def _answer(self, headers: dict[str, str], body: Any, path: str) -> tuple[int, dict[str, str]]:
        with self._changed:
            if self._down == "503":
                answer: tuple[int, dict[str, str]] = (503, {})
            elif self._script:
                answer = self._script.pop(0)
            else:
                answer = (200, {})
            delay_s = self._delay_s
            self.received.append((headers, body, path))
            self.statuses.append(answer[0])
            self._changed.notify_all()
        self._closing.wait(delay_s)
        return answer


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, extra = receiver._answer(headers, body, self.path)
            reply = b'{"ok":true}' if status < 400 else b'{"error":"scripted failure"}'
            try:
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:
                pass  # the client gave up waiting (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler

