"""Bytes on disk per probe when the values a canary repeats do not repeat: the worst case of
storing them once (revision 0014's probe_facets and probe_answers).

Three histories of the standard canary, each stored through Recorder.save_many (the spool
drain's path) into a fresh SQLite file and a fresh PostgreSQL database: `repeating` (as the
canary answers: the same answer, two fingerprints), `answers` (every answer different, as
recorded traffic), `everything` (every answer and every fingerprint different, and the token
limit too: a new facet on every probe). Bytes are the SQLite file after VACUUM and the
monitor's tables, TOAST and indexes after VACUUM FULL on PostgreSQL, as bench/write_path.py
counts them, less those of the empty schema (each of its tables and indexes takes a page or
two, which a few thousand probes would otherwise share). Runs on any revision of the store
(the same script measures the code before).

    python bench/distinct_values.py [--probes 3000] [--postgres postgresql://...]
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path

from write_path import (  # bench/ is on sys.path when run as a script
    distinct_canaries,
    drop_postgres,
    fresh_postgres,
    postgres_bytes_per_probe,
    sqlite_bytes_per_probe,
)

from monitor.domain import ProbeResult
from monitor.store import db
from monitor.store.records import Recorder

BATCH = 500


def history(kind: str, distinct: list[ProbeResult], count: int) -> list[ProbeResult]:
    """`count` probes cycling through the real ones, varied as `kind` says."""
    made = []
    for i in range(count):
        probe = replace(distinct[i % len(distinct)], uid=uuid.uuid4().hex)
        if kind != "repeating":
            first = probe.choices[0]
            # As long as the canary's answer, and as incompressible as an answer can be.
            text = f"{uuid.uuid4().hex[:len(first.content or '') or 8]}"
            probe = replace(probe, choices=(replace(first, content=text),))
        if kind == "everything":
            probe = replace(probe, system_fingerprint=f"fp_{i:010x}", rate_limits=replace(
                probe.rate_limits, limit_tokens=30_000_000 + i))
        made.append(probe)
    return made


def store(url: str, results: list[ProbeResult]) -> None:
    engine = db.open_store(url)
    try:
        recorder = Recorder(engine)
        for start in range(0, len(results), BATCH):
            recorder.save_many(results[start:start + BATCH])
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=3000)
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    distinct = distinct_canaries(args.distinct)
    answers = {repr(probe.choices) for probe in distinct}
    print(f"{args.probes} probes of the standard canary ({len(distinct)} real ones, "
          f"{len(answers)} distinct answers); bytes on disk per probe")
    print(f"  {'history':<12} {'SQLite':>8} {'PostgreSQL':>11}")
    empty = (sqlite_bytes([]), postgres_bytes(args.postgres, []))
    print(f"  {'(empty)':<12} {empty[0]:8.0f} {empty[1]:11.0f}  bytes in all")
    for kind in ("repeating", "answers", "everything"):
        results = history(kind, distinct, args.probes)
        sqlite = (sqlite_bytes(results) - empty[0]) / args.probes
        postgres = (postgres_bytes(args.postgres, results) - empty[1]) / args.probes
        print(f"  {kind:<12} {sqlite:8.0f} {postgres:11.0f}")


def sqlite_bytes(results: list[ProbeResult]) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "bench.db"
        url = f"sqlite:///{path}"
        db.upgrade(url)
        store(url, results)
        return sqlite_bytes_per_probe(path, url, 1)[0]


def postgres_bytes(admin_url: str, results: list[ProbeResult]) -> float:
    url = fresh_postgres(admin_url)
    try:
        db.upgrade(url)
        store(url, results)
        return postgres_bytes_per_probe(url, 1)[0]
    finally:
        drop_postgres(admin_url, url)


if __name__ == "__main__":
    main()
