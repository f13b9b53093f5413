"""One thread per process that runs each exchange's action when its deadline passes.

A `threading.Timer` per exchange starts and ends a thread per probe: at 10,000 targets a
minute that is ~170 threads a second, each paying its start-up and exit. Here the pending
deadlines wait in a heap watched by one thread, started on first use in each process (so a
forked worker gets its own).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Watchdog:
    """Runs `action` at monotonic time `at` unless cancelled first. Actions run on the
    watchdog's thread one after another, so each must be quick and must not block."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int]] = []  # (at, handle), cancelled ones included
        self._pending: dict[int, Callable[[], None]] = {}  # handle -> action, not yet run
        self._handles = itertools.count()
        self._thread: threading.Thread | None = None

    def call_at(self, at: float, action: Callable[[], None]) -> int:
        """Schedule `action`; returns the handle that cancels it."""
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="monitor-deadlines",
                                                daemon=True)
                self._thread.start()
            handle = next(self._handles)
            self._pending[handle] = action
            heapq.heappush(self._due, (at, handle))
            if self._due[0][1] == handle:
                self._wake.notify()  # sooner than what the thread sleeps until
            return handle

    def cancel(self, handle: int) -> None:
        """Forget the action if it has not run; it will not run after this returns (an action
        already running on the watchdog's thread finishes)."""
        with self._wake:
            self._pending.pop(handle, None)
            # Cancelled entries leave the heap when they come due; an exchange usually ends
            # long before its deadline, so drop them in bulk before they pile up.
            if len(self._due) > 2 * len(self._pending) + 64:
                self._due = [entry for entry in self._due if entry[1] in self._pending]
                heapq.heapify(self._due)

    def queued(self) -> int:
        """Entries in the heap, cancelled ones not yet dropped included: what it holds."""
        with self._wake:
            return len(self._due)

    def _run(self) -> None:
        with self._wake:
            while True:
                while self._due and self._due[0][1] not in self._pending:
                    heapq.heappop(self._due)
                if not self._due:
                    self._wake.wait()
                    continue
                at, handle = self._due[0]
                wait_s = at - time.monotonic()
                if wait_s > 0:
                    self._wake.wait(wait_s)
                    continue
                heapq.heappop(self._due)
                action = self._pending.pop(handle)
                self._wake.release()
                try:
                    action()
                except Exception:  # the thread serves every exchange: it must not die of one
                    log.exception("a deadline's action failed")
                finally:
                    self._wake.acquire()


_watchdog = Watchdog()


def _forked() -> None:
    # A child process has no watchdog thread (fork copies only the calling thread) and may
    # have copied the lock held: it starts a new one.
    global _watchdog
    _watchdog = Watchdog()


os.register_at_fork(after_in_child=_forked)


def call_at(at: float, action: Callable[[], None]) -> int:
    """Run `action` at monotonic time `at` on this process's watchdog thread."""
    return _watchdog.call_at(at, action)


def cancel(handle: int) -> None:
    _watchdog.cancel(handle)
