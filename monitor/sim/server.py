"""HTTP: a threaded HTTP/1.1 server with keep-alive, and the Simulator that runs it in a thread.

The handler does I/O only: it reads a request, asks api.py or control.py what to do, and does it.
Answers arrive as finished bytes, so a plain response is one sendall and each stream event is one
write; together with TCP_NODELAY that keeps the simulator's own overhead far below a millisecond.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from monitor import httpd
from monitor.errors import SimulatorError
from monitor.sim import anthropic, api, control, responses
from monitor.sim.responses import Action, Hang, Reply, Reset, Stream
from monitor.sim.scenario import Scenario, load_scenario
from monitor.sim.state import State


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: requests.Session reuses the connection
    disable_nagle_algorithm = True  # else Nagle plus delayed ACK stall small writes by ~40 ms
    timeout = 300  # an idle keep-alive connection is dropped, so its thread ends
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def parse_request(self) -> bool:
        # Delays count from the request line's arrival, so the time spent parsing and building
        # the answer is part of the delay rather than added to it.
        self._arrived = time.perf_counter()
        return super().parse_request()

    def _dispatch(self) -> None:
        arrived = self._arrived
        body = httpd.read_body(self)
        if body is None:
            return
        url = urlsplit(self.path)
        state = self.server.state
        if url.path.startswith("/_sim/"):
            self._answer(control.handle(state, self.command, url.path, body), arrived)
            return
        if self.command == "POST" and url.path == anthropic.PATH:
            state.enter()
            try:
                key = self.headers.get("x-api-key") or api.bearer(self.headers.get("authorization"))
                self._answer(anthropic.handle(state, body, key,
                                              self.headers.get("anthropic-version")), arrived)
            finally:
                state.leave()
            return
        call = api.Call(
            method=self.command,
            path=url.path,
            api_version=parse_qs(url.query).get("api-version", [None])[0],
            authorization=self.headers.get("authorization"),
            api_key=self.headers.get("api-key"),
            body=body,
        )
        state.enter()  # counted in flight from here until the answer is written
        try:
            self._answer(api.handle(state, call), arrived)
        finally:
            state.leave()

    def _answer(self, action: Action, arrived: float) -> None:
        try:
            self._perform(action, arrived)
        except OSError:  # the client went away, or stop() shut the socket: nothing to answer
            self.close_connection = True

    def _perform(self, action: Action, arrived: float) -> None:
        stopping = self.server.stopping

        def pause(delay_s: float, since: float) -> bool:
            """Sleep until `since + delay_s`; True if the server is stopping meanwhile. The
            last 2 ms use time.sleep, which overshoots far less than Event.wait."""
            coarse = delay_s - (time.perf_counter() - since) - 0.002
            if coarse > 0 and stopping.wait(coarse):
                return True
            fine = delay_s - (time.perf_counter() - since)
            if fine > 0:
                time.sleep(fine)
            return stopping.is_set()

        match action:
            case Reply():
                if action.delay_s > 0 and pause(action.delay_s, arrived):
                    self.close_connection = True
                    return
                self.wfile.write(action.data)
                self.close_connection = self.close_connection or action.close
            case Stream():
                self.wfile.write(action.head)
                last = len(action.events) - 1
                for index, event in enumerate(action.events):
                    # The first delay (time to first token) counts from arrival; the rest are
                    # gaps between tokens.
                    since = arrived if index == 0 else time.perf_counter()
                    if event.delay_s > 0 and pause(event.delay_s, since):
                        self.close_connection = True
                        return
                    tail = responses.LAST_CHUNK if index == last and not action.cut else b""
                    self.wfile.write(responses.chunk(event.data) + tail)
                self.close_connection = self.close_connection or action.cut
            case Hang():
                # Readable when the client hangs up or stop() shuts the socket: either ends it.
                select.select([self.connection], [], [], action.seconds)
                self.close_connection = True
            case Reset():
                # Linger 0 makes close() send RST instead of FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: /_sim/stats counts requests, and tests want a clean stderr."""


class _Server(httpd.HTTPServer):
    def __init__(self, address: tuple[str, int], state: State) -> None:
        self.state = state
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is routine for a test double; anything else is a bug.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Simulator(httpd.Background["_Server"]):
    """An OpenAI-compatible API server on a background thread: start(), .url, stop().
    Clients use f"{url}/v1" as their base URL."""

    what = "the simulator"
    thread_name = "monitor-sim"
    error = SimulatorError

    def __init__(self, scenario: Scenario | None = None, host: str = "127.0.0.1", port: int = 0,
                 seed: int | None = None, *, clock: Callable[[], float] = time.time) -> None:
        # Validated like a file, so a Scenario(...) built by hand fails here and not mid-request.
        checked = Scenario.from_dict((scenario or Scenario()).to_dict(), "Simulator(scenario=...)")
        self._state = State(checked, seed, clock)
        super().__init__(host, port)

    def _make(self) -> _Server:
        return _Server((self._host, self._port), self._state)

    # The control endpoint's operations, in process; SimClient does the same over HTTP.

    def scenario(self) -> dict[str, Any]:
        return control.view(self._state.scenario)

    def update(self, **changes: Any) -> dict[str, Any]:
        return control.view(self._state.update(changes, "Simulator.update"))

    def enqueue(self, *overrides: dict[str, Any]) -> int:
        return self._state.enqueue(control.overrides(overrides, "Simulator.enqueue"))

    def reset(self) -> None:
        self._state.reset()

    def stats(self) -> dict[str, Any]:
        return self._state.stats()


def serve(host: str, port: int, scenario_path: str | None, seed: int | None,
          echo: Callable[[str], None]) -> None:
    """Serve until Ctrl-C or SIGTERM; the first line echoed is `listening on <url>`."""
    scenario = load_scenario(scenario_path) if scenario_path else None
    with Simulator(scenario, host, port, seed) as sim:
        httpd.serve_until_signal(ready=lambda: echo(f"listening on {sim.url}"))
    echo("stopped")
