"""The one threaded HTTP server monitor runs: the simulator (`monitor sim`), the recorded-answer
server (`monitor sim --recorded`) and the dashboard (`monitor serve`, `run --http`) all bind,
serve, stop and wait for a signal through here; and the warm-then-cold stop on SIGTERM/SIGINT
that the daemon and a batch replay also use.

- A connection gets its own daemon thread, remembered, so that stop() can wake every one
  (idle in keep-alive, sleeping or hanging) by shutting its socket, then wait for it, bounded.
- Binding never resolves the host's FQDN (http.server does, and that can stall on DNS).
- `stop_signals` makes the first SIGTERM/SIGINT a warm stop (finish what is in flight) and a
  second one a cold exit, at once.
"""

from __future__ import annotations

import abc
import contextlib
import http.server
import ipaddress
import os
import signal
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from monitor.defaults import HTTP_JOIN_TIMEOUT_S


class ThreadedServer(socketserver.TCPServer):
    """A thread per connection, each remembered so that stop() can end it and wait for it.
    `stopping` is set once stop() begins: a handler that sleeps or streams waits on it."""

    request_queue_size = 128  # the default 5 drops SYNs when many clients connect at once

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves the host's FQDN, which can stall for seconds on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  daemon=True)
        with self._lock:
            self._connections[request] = thread
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001  # what socketserver does: report it, keep serving
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._lock:
                self._connections.pop(request, None)

    def close_connections(self) -> None:
        """Wake every connection thread (idle, sleeping or hanging) and wait for it to end."""
        self.stopping.set()
        with self._lock:
            connections = list(self._connections.items())
        for connection, _ in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its own thread
        for _, thread in connections:
            thread.join(HTTP_JOIN_TIMEOUT_S)  # one still busy after that is abandoned (a daemon)


class HTTPServer(ThreadedServer, http.server.HTTPServer):
    """ThreadedServer for a BaseHTTPRequestHandler."""


def read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes | None:
    """The request's body, by its Content-Length; None once a bad length is answered with 400."""
    try:
        length = int(handler.headers.get("content-length") or 0)
    except ValueError:
        handler.send_error(400, "Invalid Content-Length")
        return None
    return handler.rfile.read(length) if length > 0 else b""


S = TypeVar("S", bound=ThreadedServer)


def bind(make: Callable[[], S], host: str, port: int, error: Callable[[str], Exception]) -> S:
    """`make()` the server, with a port already taken (or a bad host) as `error`, one line."""
    try:
        return make()
    except OSError as failure:
        raise error(f"cannot listen on {host}:{port}: {failure.strerror or failure}") from None


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine ("127.0.0.1", "::1",
    "localhost"); "0.0.0.0", "" and any other name or address do not."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def url(host: str, port: int) -> str:
    """http://host:port, an IPv6 host in brackets, without a trailing slash."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class Background(abc.ABC, Generic[S]):
    """A server on a daemon thread: start(), .url, stop(); also a context manager. Subclasses
    say how to make their server (`_make`), what they are called and which error they raise."""

    what = "the server"  # as error messages name it
    thread_name = "monitor-httpd"
    poll_interval_s = 0.05  # how soon stop() is noticed; an idle loop costs nothing noticeable
    error: Callable[[str], Exception] = OSError

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._server: S | None = None
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def _make(self) -> S:
        """A new, unbound server of this kind (bind() binds and listens)."""

    def start(self) -> Self:
        """Listen (port 0 picks a free one) and serve in a daemon thread."""
        if self._server is not None:
            raise self.error(f"{self.what} is already running at {self.url}")
        server = bind(self._make, self._host, self._port, self.error)
        thread = threading.Thread(target=server.serve_forever,
                                  kwargs={"poll_interval": self.poll_interval_s},
                                  name=f"{self.thread_name}-{server.server_address[1]}",
                                  daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        return self

    @property
    def url(self) -> str:
        """http://host:port, without a trailing slash."""
        if self._server is None:
            raise self.error(f"{self.what} is not running: call start() first")
        return url(self._host, int(self._server.server_address[1]))

    def stop(self) -> None:
        """Stop serving, end every connection (even a hanging one), close the socket, join."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def stop_signals(warm: Callable[[signal.Signals], None], *, cold_exit: int,
                 cold: Callable[[signal.Signals], None] | None = None) -> Iterator[None]:
    """While inside: the first SIGTERM or SIGINT calls `warm` (stop taking work, finish what is
    in flight); a second calls `cold` and exits the process at once with `cold_exit` (what is
    in flight may be lost). Handlers can only be installed from the main thread; elsewhere
    (a test's thread) this does nothing. The previous handlers come back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal received
        received += 1
        name = signal.Signals(signum)
        if received > 1:
            if cold is not None:
                cold(name)
            os._exit(cold_exit)
        warm(name)

    previous = [(s, signal.signal(s, on_signal)) for s in (signal.SIGTERM, signal.SIGINT)]
    try:
        yield
    finally:
        for signum, handler in previous:
            signal.signal(signum, handler)


def serve_until_signal(stop: threading.Event | None = None,
                       ready: Callable[[], None] | None = None) -> None:
    """Block until SIGTERM, SIGINT (Ctrl-C) or `stop`; a second signal exits at once.
    `ready` (announcing the server's URL) runs once the handlers are in place: whoever reads
    the announcement may signal at once, and must not find the default handler's kill."""
    stop = stop or threading.Event()
    with stop_signals(lambda _: stop.set(), cold_exit=130):
        if ready is not None:
            ready()
        try:
            stop.wait()
        except KeyboardInterrupt:  # outside the main thread's handlers (not installed)
            pass
