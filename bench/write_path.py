"""Write path and size: probes saved through the real code path, one transaction each
(Recorder.save) and from concurrent writers through the daemon's group commit (GroupWriter),
beside a bare commit-per-row insert of the same bytes; and bytes on disk per stored probe of
the standard canary on SQLite.

    python bench/write_path.py [--probes 5000] [--writers 32]
                               [--postgres postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import psycopg
from canary import canary_target  # bench/ is on sys.path when run as a script
from sqlalchemy import text

from monitor import probe
from monitor.domain import ProbeResult, Target
from monitor.probe import providers
from monitor.sim import SimClient, Simulator
from monitor.store import codec, db
from monitor.store.records import Recorder, canonical_json
from monitor.store.writer import GroupWriter


def standard_canary(sim: Simulator) -> tuple[Target, ProbeResult]:
    """One real probe of the default canary (the simulator answers like OpenAI)."""
    target = canary_target(f"{sim.url}/v1")
    with providers.new_session() as session:
        result = probe.run(target, session)
    assert result.ok, result.error_detail
    return target, result


def real_path_rate(url: str, results: list[ProbeResult]) -> float:
    engine = db.open_store(url)
    recorder = Recorder(engine)
    recorder.register(results[0].target_name, results[0].config_hash, {})
    started = time.perf_counter()
    for result in results:
        recorder.save(result)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return len(results) / elapsed


def group_commit_rate(url: str, results: list[ProbeResult], writers: int) -> tuple[float, float]:
    """Probes/s from `writers` threads, each saving its share one after another through the
    group writer (as the daemon's probe threads do), and the mean number of probes per commit."""
    engine = db.open_store(url)
    recorder = Recorder(engine)
    recorder.register(results[0].target_name, results[0].config_hash, {})
    writer = GroupWriter(recorder)
    shares = [results[i::writers] for i in range(writers)]
    threads = [threading.Thread(target=lambda share=share: [writer.save(r) for r in share])
               for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    engine.dispose()
    return len(results) / elapsed, len(results) / max(writer.commits, 1)


def row_bytes(result: ProbeResult) -> tuple[str, bytes, str]:
    """The same bytes a probe row carries: choices JSON, the compressed headers and body."""
    return (
        canonical_json([asdict(c) for c in result.choices]),
        codec.compress_headers(result.response_headers) + codec.compress(result.raw_response),
        result.uid,
    )


def bare_sqlite_rate(path: Path, results: list[ProbeResult]) -> float:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, uid TEXT UNIQUE, j TEXT, b BLOB)")
    rows = [row_bytes(r) for r in results]
    started = time.perf_counter()
    for j, b, uid in rows:
        connection.execute("BEGIN")
        connection.execute("INSERT INTO t (uid, j, b) VALUES (?, ?, ?)", (uid, j, b))
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return len(rows) / elapsed


def bare_postgres_rate(url: str, results: list[ProbeResult]) -> float:
    rows = [row_bytes(r) for r in results]
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        connection.execute(
            "CREATE TEMP TABLE t (id bigserial PRIMARY KEY, uid text UNIQUE, j jsonb, b bytea)"
        )
        connection.commit()
        started = time.perf_counter()
        for j, b, uid in rows:
            connection.execute("INSERT INTO t (uid, j, b) VALUES (%s, %s::jsonb, %s)", (uid, j, b))
            connection.commit()
        elapsed = time.perf_counter() - started
    return len(rows) / elapsed


def fresh_postgres(admin_url: str) -> str:
    name = f"monitor_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


def drop_postgres(admin_url: str, url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def sqlite_bytes_per_probe(path: Path, url: str, count: int) -> float:
    engine = db.create(url)
    with engine.connect() as connection:
        connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        connection.exec_driver_sql("VACUUM")
    engine.dispose()
    return os.path.getsize(path) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=5000)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with Simulator(seed=1) as sim:
        SimClient(sim.url).update(latency={"base_ms": 0, "jitter_ms": 0})
        _, template = standard_canary(sim)
    results = [replace(template, uid=uuid.uuid4().hex) for _ in range(args.probes)]
    grouped = [replace(template, uid=uuid.uuid4().hex) for _ in range(args.probes)]
    print(f"{args.probes} probes of the standard canary ({len(template.raw_response)}-byte body, "
          f"{len(template.response_headers)} headers); probes/s")
    print("  real path: one transaction per probe; group commit: "
          f"{args.writers} writers at once; bare insert: one commit per row of the same bytes")
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "bench.db"
        url = f"sqlite:///{path}"
        db.upgrade(url)
        empty = os.path.getsize(path)
        single = real_path_rate(url, results)
        group, per_commit = group_commit_rate(url, grouped, args.writers)
        bare = bare_sqlite_rate(Path(workdir) / "bare.db", results)
        report("SQLite", single, group, per_commit, bare)
        size = sqlite_bytes_per_probe(path, url, 2 * args.probes)
        print(f"  SQLite      bytes on disk per probe (after VACUUM): {size:.0f} "
              f"(empty schema {empty} bytes)")
    pg_url = fresh_postgres(args.postgres)
    try:
        db.upgrade(pg_url)
        single = real_path_rate(pg_url, results)
        group, per_commit = group_commit_rate(pg_url, grouped, args.writers)
        report("PostgreSQL", single, group, per_commit, bare_postgres_rate(pg_url, results))
    finally:
        drop_postgres(args.postgres, pg_url)


def report(name: str, single: float, group: float, per_commit: float, bare: float) -> None:
    print(f"  {name:<11} real path {single:8.0f} ({single / bare:4.0%} of bare)   "
          f"group commit {group:8.0f} ({group / bare:4.0%} of bare, {per_commit:.1f} per commit)"
          f"   bare insert {bare:8.0f}")


if __name__ == "__main__":
    main()
