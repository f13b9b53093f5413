"""Probe targets once and store each result: `monitor probe`, `demo` and the daemon's slots.
One requests session per upstream (scheme, host, port), shared by the targets there, so
connections are reused between probes and ten thousand targets on one provider keep one pool,
not ten thousand (each a few tens of KB). A session holds nothing of any target: the key and
the target's headers go with each request (probe.run)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TypeVar

import requests

from monitor import defaults, probe
from monitor.config.targets import effective_config
from monitor.domain import ProbeResult, Target
from monitor.probe import providers
from monitor.store.records import Recorder

log = logging.getLogger("monitor")
T = TypeVar("T")


class Prober:
    """Probes targets through their upstream's reused session and saves every result."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._sessions: dict[tuple[str, str, int], requests.Session] = {}
        self._sessions_lock = threading.Lock()  # scheduler threads ask for sessions at once

    def register(self, targets: Iterable[Target]) -> None:
        """Record the targets' current configurations; call before probing them."""
        for target in targets:
            self.recorder.register(target.name, target.config_hash, effective_config(target))

    def session(self, target: Target) -> requests.Session:
        """The session of the target's upstream, made on first use."""
        upstream = providers.upstream(target)
        with self._sessions_lock:
            session = self._sessions.get(upstream)
            if session is None:
                session = self._sessions[upstream] = providers.new_session()
            return session

    def probe_all(self, targets: Iterable[Target]) -> Iterator[tuple[ProbeResult, int]]:
        """Probe every target at once (a slow one does not hold up the others); yield each
        stored result with its probe id, in the order they finish."""
        targets = list(targets)
        if not targets:
            return
        sessions = {t.name: self.session(t) for t in targets}
        workers = min(defaults.MAX_PARALLEL_PROBES, len(targets))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool:
            futures: list[Future[ProbeResult]] = [
                pool.submit(probe.run, t, sessions[t.name]) for t in targets
            ]
            for future in as_completed(futures):
                result = future.result()
                yield result, self.recorder.save(result)

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

