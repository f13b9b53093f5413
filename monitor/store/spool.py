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
moved to `<spool>.quarantine` with a log line and never blocks the lines after it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor.domain import Choice, ErrorKind, ProbeResult, RateLimits, Usage

log = logging.getLogger(__name__)


def encode(result: ProbeResult) -> bytes:
    document = asdict(result)
    document["started_at"] = result.started_at.isoformat()
    document["raw_response"] = base64.b64encode(result.raw_response).decode("ascii")
    document["error_kind"] = result.error_kind.value if result.error_kind else None
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return f"{zlib.crc32(text.encode()):08x} {text}\n".encode()


def decode(line: bytes) -> ProbeResult:
    """The result on one spool line; ValueError if the line is damaged."""
    checksum, _, text = line.rstrip(b"\n").partition(b" ")
    if not text or f"{zlib.crc32(text):08x}".encode() != checksum:
        raise ValueError("checksum mismatch (torn or corrupted line)")
    document: dict[str, Any] = json.loads(text)
    document["started_at"] = datetime.fromisoformat(document["started_at"])
    document["raw_response"] = base64.b64decode(document["raw_response"])
    kind = document["error_kind"]
    document["error_kind"] = ErrorKind(kind) if kind else None
    document["rate_limits"] = RateLimits(**document["rate_limits"])
    document["usage"] = Usage(**document["usage"])
    document["choices"] = tuple(Choice(**choice) for choice in document["choices"])
    return ProbeResult(**document)


# Lines handed to the database per transaction while draining: big enough that a backlog of
# an outage drains in seconds, small enough that a batch is a few MB in memory.
DRAIN_BATCH = 500


class Spool:
    """Results waiting for the database, oldest first. Safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.quarantine_path = self.path.with_name(self.path.name + ".quarantine")
        self.offset_path = self.path.with_name(self.path.name + ".offset")
        self._lock = threading.Lock()  # guards the file's end and the offset
        self._draining = threading.Lock()  # one drain at a time owns the offset
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, result: ProbeResult) -> None:
        line = encode(result)
        with self._lock, open(self.path, "ab+") as file:
            if file.tell() > 0:
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    line = b"\n" + line  # a torn line from a crash must not swallow this one
            file.write(line)
            file.flush()
            os.fsync(file.fileno())

    def empty(self) -> bool:
        """Nothing waits (cheap: two stat calls)."""
        with self._lock:
            return self._size() <= self._offset()

    def backlog(self) -> int:
        """How many results are waiting (lines not yet taken), counted as a stream."""
        with self._lock:
            offset = self._offset()
            if self._size() <= offset:
                return 0
            with open(self.path, "rb") as file:
                file.seek(offset)
                return sum(1 for line in file if line.strip())

    def drain(self, save_batch: Callable[[list[ProbeResult]], object],
              batch_size: int = DRAIN_BATCH, *, max_batches: int | None = None,
              stop: Callable[[], bool] | None = None) -> int:
        """Pass spooled results to `save_batch`, oldest first, a batch at a time, up to the
        file's end as it was when this call started: results appended meanwhile are left for
        the next call, so a call is bounded however fast they arrive. It also ends after
        `max_batches` batches, or before a batch once `stop()` is true. Stops at the first batch
        `save_batch` raises on (the database went away again), keeping it and the rest;
        returns how many results the database took."""
        with self._draining:
            return self._drain(save_batch, batch_size, max_batches, stop)

    def _drain(self, save_batch: Callable[[list[ProbeResult]], object], batch_size: int,
               max_batches: int | None, stop: Callable[[], bool] | None) -> int:
        drained = 0
        batches = 0
        with self._lock:
            offset, end = self._offset(), self._size()
        if end <= offset:
            return 0
        with open(self.path, "rb") as file:
            file.seek(offset)
            while offset < end:
                if max_batches is not None and batches >= max_batches:
                    break
                if stop is not None and stop():
                    break
                batch, damaged, offset_after = self._read_batch(file, offset, end, batch_size)
                if batch:
                    save_batch(batch)
                if damaged:
                    self._quarantine(damaged)
                offset = offset_after
                self._write_offset(offset)
                drained += len(batch)
                batches += 1
        self._remove_if_taken()
        return drained

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
        with open(self.quarantine_path, "ab") as file:
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
