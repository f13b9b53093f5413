"""Group commit: probes finishing at the same moment share one transaction.

A commit is the expensive part of storing a probe (an fsync on SQLite, a round trip and a WAL
flush on PostgreSQL), and a daemon's targets finish in bursts on the slot grid. The first
caller that finds no commit under way becomes the leader: it takes everything queued so far,
inserts it in one transaction and wakes the others; a caller that arrives meanwhile waits and
goes in the next batch. No thread of its own, so there is nothing to start or stop.

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

# Enough to absorb a slot of 10,000 targets in a few commits; small enough that one statement
# stays well under SQLite's and psycopg's parameter limits (insertmanyvalues batches anyway).
MAX_BATCH = 500


@dataclass
class _Waiting:
    result: ProbeResult
    config: dict[str, Any] | None
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
        self._changed = threading.Condition()
        self.commits = 0  # transactions that stored a whole batch (for the benchmark)

    def save(self, result: ProbeResult, config: dict[str, Any] | None = None) -> int:
        """Store one probe and return its id once it is committed."""
        mine = _Waiting(result, config)
        with self._changed:
            self._queue.append(mine)
        while True:
            with self._changed:
                while not mine.done and self._writing:
                    self._changed.wait()
                if mine.done:
                    return _outcome(mine)
                # Lead: take what has queued. More than a batch ahead of this result means
                # leading again after this one.
                self._writing = True
                batch = self._queue[:self._max_batch]
                del self._queue[:self._max_batch]
            try:
                self._commit(batch)
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()

    def _commit(self, batch: Sequence[_Waiting]) -> None:
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


def _outcome(waiting: _Waiting) -> int:
    if waiting.error is not None:
        raise waiting.error
    assert waiting.probe_id is not None
    return waiting.probe_id
