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

import contextlib
import http.server
import os
import signal
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

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


S = TypeVar("S", bound=ThreadedServer)


def bind(make: Callable[[], S], host: str, port: int, error: Callable[[str], Exception]) -> S:
    """`make()` the server, with a port already taken (or a bad host) as `error`, one line."""
    try:
        return make()
    except OSError as failure:
        raise error(f"cannot listen on {host}:{port}: {failure.strerror or failure}") from None


def url(host: str, port: int) -> str:
    """http://host:port, an IPv6 host in brackets, without a trailing slash."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class Running(Generic[S]):
    """A server serving on a daemon thread until stop()."""

    def __init__(self, server: S, name: str, poll_interval_s: float = 0.05) -> None:
        self.server = server
        # A short poll interval makes stop() return quickly; an idle loop costs nothing noticeable.
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": poll_interval_s},
                                        name=f"{name}-{server.server_address[1]}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop serving, end every connection (even a hanging one), close the socket, join."""
        self.server.stopping.set()
        self.server.shutdown()
        self.server.close_connections()
        self.server.server_close()
        self._thread.join()


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


def serve_until_signal(stop: threading.Event | None = None) -> None:
    """Block until SIGTERM, SIGINT (Ctrl-C) or `stop`; a second signal exits at once."""
    stop = stop or threading.Event()
    with stop_signals(lambda _: stop.set(), cold_exit=130):
        try:
            stop.wait()
        except KeyboardInterrupt:  # outside the main thread's handlers (not installed)
            pass
