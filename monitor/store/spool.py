"""An append-only local file for results the database could not take yet.

Each line is one ProbeResult as JSON with a CRC32 of that JSON, written and fsync'd before
`append` returns, so a crash loses nothing that was spooled. `drain` hands lines back in order;
a result is removed from the spool only after the database took it, and because every result
carries its own uid, handing one back twice (a crash mid-drain) still stores it once.

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


class Spool:
    """Results waiting for the database, oldest first. Safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.quarantine_path = self.path.with_name(self.path.name + ".quarantine")
        self._lock = threading.Lock()
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

    def backlog(self) -> int:
        """How many results are waiting (lines in the file)."""
        with self._lock:
            if not self.path.exists():
                return 0
            with open(self.path, "rb") as file:
                return sum(1 for line in file if line.strip())

    def drain(self, save: Callable[[ProbeResult], object]) -> int:
        """Pass each spooled result to `save`, oldest first, removing those it took. Stops at
        the first `save` that raises (the database went away again), keeping the rest."""
        with self._lock:
            if not self.path.exists():
                return 0
            lines = self.path.read_bytes().splitlines(keepends=True)
        saved = 0
        damaged: list[bytes] = []
        try:
            for line in lines:
                if not line.strip():
                    saved += 1
                    continue
                try:
                    result = decode(line)
                except (ValueError, KeyError, TypeError) as exc:
                    damaged.append(line)
                    log.error("spool: quarantined a damaged line (%s) to %s", exc,
                              self.quarantine_path)
                    saved += 1
                    continue
                save(result)
                saved += 1
        finally:
            self._settle(saved, damaged)
        return saved - len(damaged)

    def _settle(self, done: int, damaged: list[bytes]) -> None:
        """Rewrite the spool without the `done` lines we read, keeping any appended since."""
        with self._lock:
            if damaged:
                with open(self.quarantine_path, "ab") as file:
                    file.writelines(line if line.endswith(b"\n") else line + b"\n"
                                    for line in damaged)
                    file.flush()
                    os.fsync(file.fileno())
            if done == 0:
                return
            remaining = self.path.read_bytes().splitlines(keepends=True)[done:]
            if not remaining:
                self.path.unlink()
                return
            temporary = self.path.with_name(self.path.name + ".tmp")
            with open(temporary, "wb") as file:
                file.writelines(remaining)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)  # atomic: a crash leaves the old or the new file
