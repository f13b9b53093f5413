"""Where `monitor proxy` sends each finished call: `make_sink` is the one place that decides.

By default the TrafficRecorder (proxy/recorder.py) stores every call like a probe. With
`--no-record` the logging sink writes one line per call (route, method, path without its query, status and
the app's wait in ms), never a body, a header or a credential. Its queue is bounded and
`submit` never waits: when the worker falls behind, calls are counted as dropped, not queued
without end, because the app's call has already been answered and must not pay for the log.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Protocol

from monitor import defaults
from monitor.domain import Settings
from monitor.proxy.exchange import Exchange, Route, TrafficSink

logger = logging.getLogger("monitor.proxy")


class ClosableSink(TrafficSink, Protocol):
    """A sink the proxy owns: close() hands on what is still queued, then stops."""

    def close(self) -> object: ...


def make_sink(settings: Settings, routes: tuple[Route, ...], *, record: bool = True,
              spool_path: str | Path = defaults.PROXY_SPOOL) -> ClosableSink:
    """The recorder on the configured database, or the logging sink when not recording.

    A database at the wrong revision is the user's to fix (`monitor db upgrade`), so it stops
    the start; one that cannot be reached does not: calls are forwarded and their records wait
    in `spool_path`, as the daemon's probes do."""
    if not record:
        return LoggingSink()
    from monitor.errors import StoreUnavailable
    from monitor.proxy.recorder import make_recording_sink
    from monitor.store import db

    try:
        db.open_store(settings.database_url).dispose()
    except StoreUnavailable as error:
        logger.error("%s; forwarding anyway and recording to %s until it is back", error,
                     spool_path)
    return make_recording_sink(settings, routes, spool_path=spool_path)


class LoggingSink:
    """One log line per call, written by a worker thread from a bounded queue."""

    def __init__(self, capacity: int = defaults.PROXY_SINK_QUEUE,
                 log: logging.Logger = logger) -> None:
        self._queue: queue.Queue[Exchange | None] = queue.Queue(capacity)
        self._log = log
        self.logged = 0
        self.dropped = 0  # read by tests and benchmarks; written by submitters only
        self._worker = threading.Thread(target=self._run, name="monitor-proxy-log", daemon=True)
        self._worker.start()

    def submit(self, exchange: Exchange) -> None:
        try:
            self._queue.put_nowait(exchange)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Log what is queued, then stop the worker."""
        self._queue.put(None)
        self._worker.join()
        if self.dropped:
            self._log.warning("%d calls were forwarded but not logged (the log fell behind)",
                              self.dropped)

    def _run(self) -> None:
        while (exchange := self._queue.get()) is not None:
            self._log.info("%s", line(exchange))
            self.logged += 1


def line(exchange: Exchange) -> str:
    """`openai POST /v1/chat/completions 200 12.3 ms`, and the error when there was one."""
    waited_ms = (exchange.upstream_total_ms or 0.0) + exchange.proxy_added_ms
    status = "-" if exchange.status is None else str(exchange.status)
    path = exchange.path.partition("?")[0]  # a query may carry what a log should not
    text = f"{exchange.route} {exchange.method} {path} {status} {waited_ms:.1f} ms"
    return f"{text}: {exchange.error}" if exchange.error else text
