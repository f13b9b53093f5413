"""An append-only local file for results the database could not take yet.

Each line is one ProbeResult as JSON with a CRC32 of that JSON, written and fsync'd before
`append` returns, so a crash loses nothing that was spooled. `drain` hands lines back in order,
in batches, up to the file's end as it was when the call started (results appended meanwhile
wait for the next call, so one call is bounded whatever the arrival rate), reading the file as a stream (a spool can grow to gigabytes during a long outage
and must not be loaded whole). How far the database has taken the file is kept in
`<spool>.offset`, written atomically after each batch; the file is removed once all of it is
taken. Because every result carries its own uid, handing a batch back twice (a crash between
the database commit and the offset write) still stores it once.

A line that fails its checksum or does not parse (a torn write from a crash, disk trouble) is
moved to `<spool>.quarantine` with a log line and never blocks the lines after it. So is a
result the database refuses for good (store/failures.py: a poison record): a batch that fails
that way is handed over again one result at a time, and only the refused one is moved aside.

When the file cannot be written (the disk is full), results are kept in memory, up to
MEMORY_RESULTS or MEMORY_BYTES, and written once it can be again; past the bound the oldest
are dropped and counted. Each change of state is logged once.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor.domain import (
    CheckOutcome,
    CheckResult,
    Choice,
    ErrorKind,
    ProbeResult,
    RateLimits,
    ToolCall,
    Usage,
)
from monitor.errors import SpoolInUse
from monitor.store.failures import Failure, classify, describe

log = logging.getLogger(__name__)


def encode(result: ProbeResult) -> bytes:
    document = asdict(result)
    document["started_at"] = result.started_at.isoformat()
    document["raw_response"] = base64.b64encode(result.raw_response).decode("ascii")
    document["error_kind"] = result.error_kind.value if result.error_kind else None
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate (from a JSON \u escape) is kept as it came, not refused.
    data = text.encode("utf-8", "surrogatepass")
    return f"{zlib.crc32(data):08x} ".encode() + data + b"\n"


def decode(line: bytes) -> ProbeResult:
    """The result on one spool line; ValueError if the line is damaged."""
    checksum, _, text = line.rstrip(b"\n").partition(b" ")
    if not text or f"{zlib.crc32(text):08x}".encode() != checksum:
        raise ValueError("checksum mismatch (torn or corrupted line)")
    document: dict[str, Any] = json.loads(text.decode("utf-8", "surrogatepass"))
    document["started_at"] = datetime.fromisoformat(document["started_at"])
    document["raw_response"] = base64.b64decode(document["raw_response"])
    kind = document["error_kind"]
    document["error_kind"] = ErrorKind(kind) if kind else None
    document["rate_limits"] = RateLimits(**document["rate_limits"])
    document["usage"] = Usage(**document["usage"])
    document["choices"] = tuple(
        Choice(**{**choice, "tool_calls": tuple(ToolCall(**call) for call in
                                                choice.get("tool_calls", ()))})
        for choice in document["choices"])
    # Lines spooled before checks existed have none.
    document["checks"] = tuple(
        CheckResult(check["check"], CheckOutcome(check["outcome"]), check["reason"])
        for check in document.get("checks", ()))
    return ProbeResult(**document)


# Lines handed to the database per transaction while draining: big enough that a backlog of
# an outage drains in seconds, small enough that a batch is a few MB in memory.
DRAIN_BATCH = 500
# What is kept in memory while the spool cannot be written, at most (a canary result is a few
# KB; the bytes bound holds when the bodies are large).
MEMORY_RESULTS = 1000
MEMORY_BYTES = 64 * 1024 * 1024


@contextlib.contextmanager
def claimed(path: str | Path) -> Iterator[None]:
    """Hold the spool at `path` for this process and the workers it forks, or raise
    SpoolInUse. A Spool is safe between threads, not between processes: each would drain the
    file and delete it under the other's unwritten lines. The lock is an flock on
    `<spool>.lock`, released by the OS if the process dies."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolInUse(str(path)) from None
        yield


class Spool:
    """Results waiting for the database, oldest first. Safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.quarantine_path = self.path.with_name(self.path.name + ".quarantine")
        self.offset_path = self.path.with_name(self.path.name + ".offset")
        self._lock = threading.Lock()  # guards the file's end and the offset
        self._draining = threading.Lock()  # one drain at a time owns the offset
        self._quarantining = threading.Lock()  # probe threads quarantine at once
        # Lines the file could not take, oldest first, numbered; guarded by _lock.
        self._memory: deque[tuple[int, bytes]] = deque()
        self._memory_bytes = 0
        self._numbered = 0
        self._lost = 0  # dropped past the memory bound since the file was last writable
        self._unwritable = False
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, result: ProbeResult) -> None:
        """Spool one result (written and fsync'd), or keep it in memory while the file
        cannot be written; never raises for disk trouble."""
        line = encode(result)
        with self._lock:
            if self._memory:
                self._write_memory()  # what waits in memory goes first, in order
            if not self._memory:
                try:
                    self._write(line)
                    return
                except OSError as error:
                    self._cannot_write(error)
            self._keep(line)

    def _write(self, data: bytes) -> None:
        """Append `data` and fsync. If that fails (the disk is full), the file is cut back to
        where it was, so no torn line is left behind, and OSError is raised."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            if start > 0 and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data  # a torn line from a crash must not swallow this one
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    def _cannot_write(self, error: OSError) -> None:
        if not self._unwritable:
            self._unwritable = True
            log.error("spool cannot be written: %s; keeping up to %d results in memory",
                      error.strerror or error, MEMORY_RESULTS)

    def _keep(self, line: bytes) -> None:
        self._numbered += 1
        self._memory.append((self._numbered, line))
        self._memory_bytes += len(line)
        while len(self._memory) > MEMORY_RESULTS or self._memory_bytes > MEMORY_BYTES:
            _, dropped = self._memory.popleft()
            self._memory_bytes -= len(dropped)
            if not self._lost:
                log.error("spool: memory bound reached (%d results, %d bytes) and the file "
                          "still cannot be written: dropping the oldest results",
                          MEMORY_RESULTS, MEMORY_BYTES)
            self._lost += 1

    def _write_memory(self) -> None:
        """Write what waits in memory to the file, if it can be written again."""
        try:
            self._write(b"".join(line for _, line in self._memory))
        except OSError:
            return
        self._forget_memory(len(self._memory), written=True)

    def _forget_memory(self, count: int, *, written: bool) -> None:
        """Drop the oldest `count` lines kept in memory (written to the file or stored)."""
        for _ in range(count):
            self._memory_bytes -= len(self._memory.popleft()[1])
        if self._memory:
            return
        lost = f"; {self._lost} results were lost while memory was full" if self._lost else ""
        where = "wrote them to the spool" if written else "the database took them"
        log.warning("spool: %d results kept in memory are safe (%s)%s", count, where, lost)
        self._unwritable = False
        self._lost = 0

    def quarantine(self, result: ProbeResult, error: BaseException) -> None:
        """Move a result the database refuses for good aside, with a log line naming it."""
        log.error("quarantined probe %s of %s to %s: %s", result.uid, result.target_name,
                  self.quarantine_path, describe(error))
        self._quarantine([encode(result)])

    def empty(self) -> bool:
        """Nothing waits (cheap: two stat calls)."""
        with self._lock:
            return self._size() <= self._offset() and not self._memory

    def backlog(self) -> int:
        """How many results are waiting (lines not yet taken), counted as a stream."""
        with self._lock:
            offset = self._offset()
            if self._size() <= offset:
                return len(self._memory)
            with open(self.path, "rb") as file:
                file.seek(offset)
                return sum(1 for line in file if line.strip()) + len(self._memory)

    def drain(self, save_batch: Callable[[list[ProbeResult]], object],
              batch_size: int = DRAIN_BATCH, *, max_batches: int | None = None,
              stop: Callable[[], bool] | None = None) -> int:
        """Pass spooled results to `save_batch`, oldest first, a batch at a time, up to the
        file's end as it was when this call started, then what waits in memory: results
        appended meanwhile are left for the next call, so a call is bounded however fast they
        arrive. It also ends after `max_batches` batches, or before a batch once `stop()` is
        true. Stops at the first batch `save_batch` raises on (the database went away again),
        keeping it and the rest, unless the error is about a record (a poison record: that one
        is quarantined); returns how many results the database took. OSError if the spool's
        own files cannot be written (the offset, the quarantine); nothing is lost then either."""
        with self._draining:
            return self._drain(save_batch, batch_size, max_batches, stop)

    def _drain(self, save_batch: Callable[[list[ProbeResult]], object], batch_size: int,
               max_batches: int | None, stop: Callable[[], bool] | None) -> int:
        drained = 0
        batches = 0
        with self._lock:
            if self._memory:
                self._write_memory()
            offset, end = self._offset(), self._size()
        if end <= offset:
            return self._drain_memory(save_batch)
        with open(self.path, "rb") as file:
            file.seek(offset)
            while offset < end:
                if max_batches is not None and batches >= max_batches:
                    break
                if stop is not None and stop():
                    break
                batch, damaged, offset_after = self._read_batch(file, offset, end, batch_size)
                if batch:
                    drained += self._save(batch, save_batch)
                if damaged:
                    self._quarantine(damaged)
                offset = offset_after
                self._write_offset(offset)
                batches += 1
        self._remove_if_taken()
        return drained + self._drain_memory(save_batch)

    def _save(self, batch: list[ProbeResult],
              save_batch: Callable[[list[ProbeResult]], object]) -> int:
        """Hand `batch` over; if the database refuses one of its records for good, hand the
        results over one by one, quarantining the refused ones. Returns how many it took;
        raises what says the database is unavailable."""
        try:
            save_batch(batch)
            return len(batch)
        except Exception as error:
            if classify(error) is not Failure.POISON:
                raise
            if len(batch) == 1:
                self.quarantine(batch[0], error)
                return 0
        taken = 0
        for result in batch:
            try:
                save_batch([result])
                taken += 1
            except Exception as error:
                if classify(error) is not Failure.POISON:
                    raise
                self.quarantine(result, error)
        return taken

    def _drain_memory(self, save_batch: Callable[[list[ProbeResult]], object]) -> int:
        """Hand over what waits in memory because the file could not take it (the database is
        back before the disk has room)."""
        with self._lock:
            held = list(self._memory)
        if not held:
            return 0
        taken = self._save([decode(line) for _, line in held], save_batch)
        with self._lock:
            # Lines dropped past the bound meanwhile are gone already; drop the rest of these.
            self._forget_memory(sum(1 for n, _ in self._memory if n <= held[-1][0]),
                                written=False)
        return taken

    def _read_batch(self, file: Any, offset: int, end: int,
                    batch_size: int) -> tuple[list[ProbeResult], list[bytes], int]:
        batch: list[ProbeResult] = []
        damaged: list[bytes] = []
        while offset < end and len(batch) < batch_size:
            line = file.readline(end - offset)  # never past `end`: an append may be under way
            offset += len(line)
            if not line.strip():
                continue
            try:
                batch.append(decode(line))
            except (ValueError, KeyError, TypeError) as exc:
                damaged.append(line)
                log.error("spool: quarantined a damaged line (%s) to %s", exc,
                          self.quarantine_path)
        return batch, damaged, offset

    def _quarantine(self, damaged: list[bytes]) -> None:
        with self._quarantining, open(self.quarantine_path, "ab") as file:
            file.writelines(line if line.endswith(b"\n") else line + b"\n" for line in damaged)
            file.flush()
            os.fsync(file.fileno())

    def _remove_if_taken(self) -> None:
        """Delete the spool and its offset once the database has all of it, so the file
        never grows across outages."""
        with self._lock:
            if self.path.exists() and self._size() <= self._offset():
                self.path.unlink()
            if not self.path.exists():
                self.offset_path.unlink(missing_ok=True)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _offset(self) -> int:
        """Bytes of the spool the database already has. An offset beyond the file (the spool
        was removed by hand) counts as none."""
        try:
            offset = int(self.offset_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0
        return offset if offset <= self._size() else 0

    def _write_offset(self, offset: int) -> None:
        temporary = self.offset_path.with_name(self.offset_path.name + ".tmp")
        with open(temporary, "w") as file:
            file.write(str(offset))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.offset_path)  # atomic: a crash leaves the old or the new
