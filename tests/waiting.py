"""Waiting on conditions, never on time: a busy machine stretches every delay, so a test waits
for what it needs (a probe count, a log line, a request in flight) up to a deadline that only a
failure reaches. The deadline turns a hang into a failure that says what it waited for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO, TypeVar

T = TypeVar("T")

# Generous: a passing test never waits this long, even on a loaded machine, and a failing one
# still ends well inside a minute.
DEADLINE_S = 30.0


def wait_until(condition: Callable[[], T], what: str | Callable[[], str],
               timeout_s: float = DEADLINE_S, poll_s: float = 0.02) -> T:
    """Call `condition` until it returns something truthy, and return that; AssertionError
    naming `what` (a text, or a function giving one, e.g. the state at the deadline) after
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"still waiting after {timeout_s:g} s for {described}")
        time.sleep(poll_s)


class Lines:
    """A child process's text stream, read on a thread so that waiting for a line has a
    deadline even when the child goes silent (a blocking readline() would hang instead).
    Reading it all the time also keeps a chatty child from blocking on a full pipe."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._next = 0  # wait_for looks at lines after the last one it matched
        self._ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._stream:
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        except (OSError, ValueError):
            pass  # the stream was closed under us: the end, like EOF
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def wait_for(self, needle: str, timeout_s: float = DEADLINE_S) -> str:
        """The first line after the previous match that contains `needle`. AssertionError,
        with everything read so far, when the stream ends or `timeout_s` passes first."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for index in range(self._next, len(self._lines)):
                    if needle in self._lines[index]:
                        self._next = index + 1
                        return self._lines[index]
                self._next = len(self._lines)
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    why = "the stream ended" if self._ended else f"{timeout_s:g} s passed"
                    raise AssertionError(
                        f"no line with {needle!r} before {why}; read so far:\n{self.text()}")
                self._changed.wait(left)

    def text(self) -> str:
        """Every line read so far."""
        with self._changed:
            return "".join(self._lines)

    def close(self, timeout_s: float = DEADLINE_S) -> str:
        """Read to the end (call it once the child has exited), close the stream; all the text."""
        self._thread.join(timeout_s)
        self._stream.close()
        return self.text()
