"""Group commit: probes finishing at the same moment share one transaction.

A commit is the expensive part of storing a probe (an fsync on SQLite, a round trip and a WAL
flush on PostgreSQL), and a daemon's targets finish in bursts on the slot grid. The first
caller that finds no commit under way becomes the leader: it takes everything queued so far,
inserts it in one transaction and wakes the callers it stored; a caller that arrives meanwhile
waits and goes in the next batch, which the first of them leads once the leader hands over.
No thread of its own, so there is nothing to start or stop.

Each caller returns only once its own row is committed (durable as the database makes a
commit durable), with its own id or its own exception: if a batch fails, its results are
stored one by one, so a poison record (store/failures.py) fails alone and a database that is
down fails each caller, which then spools as before.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.domain import ProbeResult
from monitor.store.records import Recorder

# Enough to absorb a slot of 10,000 targets in a few commits; small enough that the query for
# the batch's ids (one parameter per uid on SQLite) stays far under SQLite's parameter limit.
MAX_BATCH = 500


def _taken_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Waiting:
    result: ProbeResult
    config: dict[str, Any] | None
    # Released once this result is committed (or refused), or when its caller is handed the
    # lead: a lock taken at birth, a tenth of an Event's cost.
    ready: threading.Lock = field(default_factory=_taken_lock)
    done: bool = False
    probe_id: int | None = None
    error: BaseException | None = field(default=None, repr=False)


class GroupWriter:
    """`save()` as Recorder's, with concurrent callers' results committed together."""

    def __init__(self, recorder: Recorder, max_batch: int = MAX_BATCH) -> None:
        self.recorder = recorder
        self._max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._writing = False
        self._lock = threading.Lock()
        self.commits = 0  # transactions that stored a whole batch (for the benchmark)

    def save(self, result: ProbeResult, config: dict[str, Any] | None = None) -> int:
        """Store one probe and return its id once it is committed."""
        mine = _Waiting(result, config)
        with self._lock:
            self._queue.append(mine)
            lead = not self._writing
            self._writing = True
        # Each caller is woken once: when its result is committed, or when the leader
        # before it hands it the lead (waking every waiter at each commit, to let them find
        # out which of them was done, cost more CPU than the commit itself).
        if not lead:
            mine.ready.acquire()
            if mine.done:
                return _outcome(mine)
        try:
            while not mine.done:
                with self._lock:
                    batch = self._queue[:self._max_batch]
                    del self._queue[:self._max_batch]
                self._commit(batch)
        finally:
            with self._lock:
                following = self._queue[0] if self._queue else None
                self._writing = following is not None
            if following is not None:
                following.ready.release()  # not done: it leads the next commit
        return _outcome(mine)

    def _commit(self, batch: Sequence[_Waiting]) -> None:
        try:
            try:
                ids = self.recorder.save_batch([(w.result, w.config) for w in batch])
                self.commits += 1
            except Exception:  # noqa: BLE001 - each result gets its own verdict below
                ids = None
            for index, waiting in enumerate(batch):
                if ids is not None:
                    waiting.probe_id = ids[index]
                else:
                    try:
                        waiting.probe_id = self.recorder.save(waiting.result, waiting.config)
                    except Exception as exc:  # noqa: BLE001 - handed to its own caller
                        waiting.error = exc
                waiting.done = True
                waiting.ready.release()
        except BaseException as exc:
            # Interrupted (KeyboardInterrupt, say): whoever has no verdict yet gets this
            # one rather than waiting for ever.
            for waiting in batch:
                if not waiting.done:
                    waiting.error = exc
                    waiting.done = True
                    waiting.ready.release()
            raise


def _outcome(waiting: _Waiting) -> int:
    if waiting.error is not None:
        raise waiting.error
    assert waiting.probe_id is not None
    return waiting.probe_id
