"""Write path and size: probes saved through the real code path, one transaction each
(Recorder.save) and from concurrent writers through the daemon's group commit (GroupWriter),
beside a bare commit-per-row insert of the same bytes; and bytes on disk per stored probe of
the standard canary on SQLite and PostgreSQL, with the tables and indexes they go to.

The probes are `--distinct` real probes of the standard canary against the simulator (each with
its own date, request id, response id, created time, cf-ray and remaining quota, as a real
upstream sends them), repeated with fresh uids up to `--probes`.

    python bench/write_path.py [--probes 5000] [--writers 32] [--distinct 200]
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
from monitor.store.records import Recorder, _storable_headers
from monitor.store.shared import canonical_json
from monitor.store.writer import GroupWriter


def standard_canary(sim: Simulator) -> tuple[Target, ProbeResult]:
    """One real probe of the default canary (the simulator answers like OpenAI)."""
    target, [result] = standard_canaries(sim, 1)
    return target, result


def standard_canaries(sim: Simulator, count: int) -> tuple[Target, list[ProbeResult]]:
    """`count` real probes of the default canary, one after another."""
    target = canary_target(f"{sim.url}/v1")
    with providers.new_session() as session:
        results = [probe.run(target, session) for _ in range(count)]
    assert all(result.ok for result in results), results[0].error_detail
    return target, results


def distinct_canaries(count: int) -> list[ProbeResult]:
    """`count` real probes of the default canary against a simulator answering at once."""
    with Simulator(seed=1) as sim:
        SimClient(sim.url).update(latency={"base_ms": 0, "jitter_ms": 0})
        return standard_canaries(sim, count)[1]


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


def row_bytes(result: ProbeResult, dictionary: codec.Dictionary) -> tuple[str, bytes, str]:
    """The same bytes a probe row carries: choices JSON, the compressed headers and body."""
    context = codec.context(result.x_request_id, result.response_id, None)
    return (
        canonical_json([asdict(c) for c in result.choices]),
        codec.encode_headers(_storable_headers(result.response_headers), dictionary, context)
        + codec.encode(result.raw_response, dictionary, context),
        result.uid,
    )


def first_dictionary(results: list[ProbeResult]) -> codec.Dictionary:
    """What the real path compresses against: a dictionary made from the first probe."""
    first = results[0]
    return codec.Dictionary(1, codec.headers_bytes(first.response_headers) + first.raw_response)


def bare_sqlite_rate(path: Path, results: list[ProbeResult]) -> float:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, uid TEXT UNIQUE, j TEXT, b BLOB)")
    dictionary = first_dictionary(results)
    rows = [row_bytes(r, dictionary) for r in results]
    started = time.perf_counter()
    for j, b, uid in rows:
        connection.execute("BEGIN")
        connection.execute("INSERT INTO t (uid, j, b) VALUES (?, ?, ?)", (uid, j, b))
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return len(rows) / elapsed


def bare_postgres_rate(url: str, results: list[ProbeResult]) -> float:
    dictionary = first_dictionary(results)
    rows = [row_bytes(r, dictionary) for r in results]
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


def sqlite_bytes_per_probe(path: Path, url: str, count: int) -> tuple[float, list[Part]]:
    """The file's size per probe after VACUUM, and its largest tables and indexes."""
    engine = db.create(url)
    with engine.connect() as connection:
        connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        connection.exec_driver_sql("VACUUM")
        parts = connection.exec_driver_sql(
            "SELECT name, SUM(pgsize) AS size FROM dbstat GROUP BY name "
            "ORDER BY size DESC LIMIT 6").all()
    engine.dispose()
    return os.path.getsize(path) / count, [(str(n), int(s) / count) for n, s in parts]


def postgres_bytes_per_probe(url: str, count: int) -> tuple[float, list[Part]]:
    """The monitor's tables, their TOAST and indexes per probe after VACUUM FULL (the rows as a
    fresh copy holds them), and the largest of them."""
    total, parts = postgres_bytes(url)
    return total / count, [(name, size / count) for name, size in parts[:6]]


def postgres_bytes(url: str) -> tuple[int, list[tuple[str, int]]]:
    """Bytes of the monitor's tables, their TOAST and indexes after VACUUM FULL, and each
    table's and index's own, largest first."""
    engine = db.create(url)
    with engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        autocommit.exec_driver_sql("VACUUM FULL")
        parts = autocommit.exec_driver_sql(
            "SELECT c.relname, pg_relation_size(c.oid) AS size FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
            "ORDER BY size DESC").all()
        toast = autocommit.exec_driver_sql(
            "SELECT COALESCE(SUM(pg_total_relation_size(reltoastrelid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.reltoastrelid <> 0").scalar_one()
    engine.dispose()
    return (sum(int(size) for _, size in parts) + int(toast),
            [(str(name), int(size)) for name, size in parts])


Part = tuple[str, float]


def report_size(name: str, per_probe: float, parts: list[Part], note: str) -> None:
    print(f"  {name:<11} bytes on disk per probe: {per_probe:.0f} ({note}); largest: "
          + ", ".join(f"{part} {size:.0f}" for part, size in parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=5000)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    distinct = distinct_canaries(args.distinct)
    results = [replace(distinct[i % len(distinct)], uid=uuid.uuid4().hex)
               for i in range(args.probes)]
    grouped = [replace(distinct[i % len(distinct)], uid=uuid.uuid4().hex)
               for i in range(args.probes)]
    template = distinct[0]
    print(f"{args.probes} probes of the standard canary ({len(template.raw_response)}-byte body, "
          f"{len(template.response_headers)} headers; {len(distinct)} distinct); probes/s")
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
        size, parts = sqlite_bytes_per_probe(path, url, 2 * args.probes)
        report_size("SQLite", size, parts, f"the file after VACUUM; "
                    f"{size - empty / (2 * args.probes):.0f} beyond the empty schema's {empty} bytes")
    pg_url = fresh_postgres(args.postgres)
    try:
        db.upgrade(pg_url)
        empty_pg, _ = postgres_bytes(pg_url)
        single = real_path_rate(pg_url, results)
        group, per_commit = group_commit_rate(pg_url, grouped, args.writers)
        report("PostgreSQL", single, group, per_commit, bare_postgres_rate(pg_url, results))
        size, parts = postgres_bytes_per_probe(pg_url, 2 * args.probes)
        beyond = size - empty_pg / (2 * args.probes)
        report_size("PostgreSQL", size, parts, "tables, TOAST and indexes after VACUUM FULL; "
                    f"{beyond:.0f} beyond the empty schema's {empty_pg} bytes")
    finally:
        drop_postgres(args.postgres, pg_url)


def report(name: str, single: float, group: float, per_commit: float, bare: float) -> None:
    print(f"  {name:<11} real path {single:8.0f} ({single / bare:4.0%} of bare)   "
          f"group commit {group:8.0f} ({group / bare:4.0%} of bare, {per_commit:.1f} per commit)"
          f"   bare insert {bare:8.0f}")


if __name__ == "__main__":
    main()
