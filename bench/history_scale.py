"""History at scale: 20 targets x 1 year at one probe a minute (10,512,000 probes) on SQLite and
PostgreSQL, with rollups caught up and raw retention applied at its default (30 days); then the
time `build_report` takes for the whole year (bar: 1 s) and the last 24 hours (bar: 200 ms; every
probe is a point up to 48 h, so the last 48 hours are timed too), what folding new probes into
rollups costs the daemon, and bytes on disk per probe.

The bulk path writes the rows the real write path writes. Recorder.save_many turns each result
into `records._probe_values(result, ...)` and inserts the list; here one real probe of the
standard canary against the simulator (and one failed probe with no response) is turned into
those values once, and each row is a copy with the per-probe fields varied: uid, started_at,
latencies (lognormal), fingerprint (3:1), model (re-pointed at mid-year), quota remaining,
tokens, and 0.5% errors of several kinds. The compressed headers and body are those of a
second real probe, byte for byte, compressed as Recorder compresses them: against the
dictionary each target's configuration got from its first probe (store/blobs.py), so rows
have their real size. Rows go in with one executemany per 10,000 (a
transaction each), day by day in time order; after each simulated day rollups catch up (timed)
and every `--prune-every` days retention runs as the daemon's job would (`prune` with a cutoff
30 days back), so no more than about a month of raw bodies is ever held.

    python bench/history_scale.py [--targets 20] [--days 365] [--backend both|sqlite|postgresql]
        [--prune-every 7] [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
        [--keep DIR]  (keep the SQLite file in DIR and the PostgreSQL database, to look into)
        [--runs 5]    (timed runs of each report; each line gives wall, client and server CPU)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, insert, select
from write_path import standard_canaries  # bench/ is on sys.path when run as a script

from monitor.defaults import RAW_RETENTION_MS
from monitor.domain import ErrorKind, ProbeResult, Usage
from monitor.health import build_report
from monitor.sim import SimClient, Simulator
from monitor.store import blobs, db, rollups
from monitor.store.models import ProbeRow
from monitor.store.records import Recorder, _probe_values
from monitor.store.retention import prune
from monitor.store.shared import AnswerIds, FacetIds

RAW_RETENTION = timedelta(milliseconds=RAW_RETENTION_MS)

START = datetime(2025, 11, 26, tzinfo=UTC)
ROWS_PER_INSERT = 10_000
ERRORS = ((ErrorKind.READ_TIMEOUT, None, 30_000.0), (ErrorKind.HTTP_SERVER_ERROR, 503, 80.0),
          (ErrorKind.RATE_LIMITED, 429, 40.0), (ErrorKind.CONNECTION_RESET, None, 5.0))


class Rows:
    """Probe rows as Recorder.save_many would write them, varied per probe."""

    def __init__(self, engine: Engine, template: ProbeResult, failed: ProbeResult,
                 days: int, keys: list[tuple[int, ...]]) -> None:
        self.ok_values = {}  # by configuration id: each its own dictionary
        with engine.connect() as connection:
            for _, config_id, _ in keys:
                dictionary = blobs.newest(connection, config_id)
                self.ok_values[config_id] = _probe_values(template, 0, 0, 0, dictionary)
        self.error_values = _probe_values(failed, 0, 0, 0)
        self.days = days
        self.rng = random.Random(1)
        # As the Recorder stores them: model, fingerprint, limits by facet id, a repeated
        # answer by answer id.
        self.facets = FacetIds()
        self.answers = AnswerIds()

    def one(self, keys: tuple[int, int, int], index: int, at: datetime,
            stream: bool) -> dict[str, Any]:
        rng = self.rng
        base = keys[0] * 0.02 + 1  # each target its own speed
        if rng.random() < 0.005:
            kind, status, total = rng.choice(ERRORS)
            row = dict(self.error_values, error_kind=kind.value, http_status=status,
                       error_detail=f"{kind.value} (bench)", total_ms=total)
        else:
            total = 380 * base * rng.lognormvariate(0, 0.25)
            completion = rng.randrange(1, 4)
            row = dict(
                self.ok_values[keys[1]], total_ms=total, time_to_headers_ms=total * 0.97,
                openai_processing_ms=total * 0.8,
                time_to_first_token_ms=total * 0.4 if stream else None,
                output_tokens_per_s=60 * rng.lognormvariate(0, 0.2) if stream else None,
                system_fingerprint="fp_6ec83003ad" if rng.random() < 0.75 else "fp_b705f0c291",
                model="gpt-4o-2024-08-06" if index < self.days * 720 else "gpt-4o-2024-11-20",
                ratelimit_remaining_requests=10_000 - rng.randrange(5),
                ratelimit_remaining_tokens=30_000_000 - rng.randrange(5000),
                completion_tokens=completion, total_tokens=14 + completion)
        row.update(uid=uuid.uuid4().hex, started_at=at, stream=stream, target_id=keys[0],
                   target_config_id=keys[1], request_payload_id=keys[2])
        return row


def register(engine: Engine, template: ProbeResult, names: list[str]) -> list[tuple[int, ...]]:
    """One real save per target (before the year starts) creates its target, configuration
    and payload rows; their ids are what the bulk rows carry."""
    recorder = Recorder(engine)
    keys = []
    for name in names:
        probe_id = recorder.save(replace(template, uid=uuid.uuid4().hex, target_name=name,
                                         started_at=START - timedelta(minutes=1)))
        with engine.connect() as connection:
            row = connection.execute(select(ProbeRow.target_id, ProbeRow.target_config_id,
                                            ProbeRow.request_payload_id)
                                     .where(ProbeRow.id == probe_id)).one()
        keys.append(tuple(row))
    return keys


def build_history(engine: Engine, rows: Rows, keys: list[tuple[int, ...]], days: int,
                  prune_every: int) -> dict[str, float]:
    spent = {"insert_s": 0.0, "catch_up_s": 0.0, "prune_s": 0.0, "vacuums": 0}
    index = 0
    for day in range(days):
        batch: list[dict[str, Any]] = []
        for minute in range(1440):
            at = START + timedelta(days=day, minutes=minute)
            for i, key in enumerate(keys):
                batch.append(rows.one(key, index, at, stream=i % 4 == 3))  # type: ignore[arg-type]
            index += 1
            if len(batch) >= ROWS_PER_INSERT or minute == 1439:
                started = time.perf_counter()
                with engine.begin() as connection:
                    for row in batch:
                        rows.facets.take(connection, row)
                        rows.answers.take(connection, row)
                    connection.execute(insert(ProbeRow), batch)
                spent["insert_s"] += time.perf_counter() - started
                batch = []
        started = time.perf_counter()
        rollups.catch_up(engine, batch=20_000)
        spent["catch_up_s"] += time.perf_counter() - started
        end = START + timedelta(days=day + 1)
        if (day + 1) % prune_every == 0 or day + 1 == days:
            started = time.perf_counter()
            spent["vacuums"] += prune(engine, end - RAW_RETENTION, end)["vacuumed"]
            spent["prune_s"] += time.perf_counter() - started
        if (day + 1) % 30 == 0:
            print(f"    day {day + 1}: {index * len(keys):,} probes; " + ", ".join(
                f"{k} {v:.0f}" for k, v in spent.items()), flush=True)
    return spent


REPORTS = {"365d": timedelta(days=365), "48h": timedelta(hours=48), "24h": timedelta(hours=24)}


class Timings:
    """Per report: wall times, this process's CPU times (time.process_time) and, for a
    PostgreSQL server on this machine, the CPU its backends spent (from /proc; None when it
    cannot be read): on a shared machine the CPU figures move much less than the wall."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.server: list[float] = []

    def line(self, label: str, bar: str) -> str:
        wall, cpu = (sorted(v) for v in (self.wall, self.cpu))
        text = (f"build_report --since {label}: wall first {self.wall[0] * 1000:.0f} ms, median "
                f"{statistics.median(wall) * 1000:.0f}, min {wall[0] * 1000:.0f} (bar {bar}); "
                f"client CPU median {statistics.median(cpu) * 1000:.0f} ms")
        if len(self.server) == len(self.wall):
            text += f"; server CPU mean {statistics.mean(self.server) * 1000:.0f} ms"
        return text


def server_cpu_s(pids: list[int]) -> float | None:
    """User + system CPU seconds of these PostgreSQL backends so far, if this machine has them
    (clock ticks: 10 ms each, so take the mean of several reports)."""
    if not pids:
        return None
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime (after pid and comm)
    return total / os.sysconf("SC_CLK_TCK")


def backend_pids(engine: Engine) -> list[int]:
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as connection:
        return [int(pid) for pid in connection.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()").scalars()]


def time_reports(engine: Engine, now: datetime, runs: int) -> dict[str, Timings]:
    timings = {label: Timings() for label in REPORTS}
    pids = backend_pids(engine)  # the pool's connections, which the reports use
    for _ in range(runs):
        for label, span in REPORTS.items():
            timing = timings[label]
            server = server_cpu_s(pids)
            started, cpu = time.perf_counter(), time.process_time()
            report = build_report(engine, now - span, now, None, now)
            timing.wall.append(time.perf_counter() - started)
            timing.cpu.append(time.process_time() - cpu)
            if server is not None and (after := server_cpu_s(pids)) is not None:
                timing.server.append(after - server)
            assert report["targets"] and report["targets"][0]["probes"] > 0
            # The series follows the range: a point per probe up to 48 h.
            series = report["targets"][0]["series"]
            assert series["bucket"] != "probe" or (
                len(series["columns"]["t"]) == report["targets"][0]["probes"])
    return timings


def live_fold_cost(engine: Engine, template: ProbeResult, names: list[str], now: datetime,
                   ticks: int = 30) -> tuple[float, float]:
    """ms per probe of catch_up for new probes stored through Recorder.save: called after
    every probe, and once per round of all targets (every minute)."""
    recorder = Recorder(engine)
    each, per_round = [], []
    for tick in range(ticks):
        at = now + timedelta(minutes=tick, seconds=30)
        for name in names:
            recorder.save(replace(template, uid=uuid.uuid4().hex, target_name=name,
                                  started_at=at))
            if tick % 2 == 0:
                started = time.perf_counter()
                rollups.catch_up(engine)
                each.append((time.perf_counter() - started) * 1000)
        if tick % 2 == 1:
            started = time.perf_counter()
            rollups.catch_up(engine)
            per_round.append((time.perf_counter() - started) * 1000 / len(names))
    return statistics.median(each), statistics.median(per_round)


def measure(url: str, template: ProbeResult, second: ProbeResult, failed: ProbeResult,
            targets: int, days: int, prune_every: int, runs: int) -> None:
    db.upgrade(url)
    engine = db.open_store(url)
    names = [f"target-{i:02d}" for i in range(targets)]
    keys = register(engine, template, names)
    spent = build_history(engine, Rows(engine, second, failed, days, keys), keys, days,
                          prune_every)
    probes = targets * (days * 1440 + 1)
    now = START + timedelta(days=days)
    if engine.dialect.name == "postgresql":
        # What autovacuum does after a bulk load: without statistics PostgreSQL plans the
        # heartbeat's newest-60 walk as a scan of the target's whole history.
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    load = os.getloadavg()[0]
    timings = time_reports(engine, now, runs)
    load = max(load, os.getloadavg()[0])
    size = db.size_bytes(engine) or 0
    each, per_round = live_fold_cost(engine, template, names, now)
    compacted = compacted_size(engine)
    largest = largest_parts(engine)
    tables = tables_size(engine)
    engine.dispose()
    print(f"  {engine.dialect.name}: {probes:,} probes written in {spent['insert_s']:.0f} s, "
          f"folded in {spent['catch_up_s']:.0f} s, pruned in {spent['prune_s']:.0f} s "
          f"({spent['vacuums']} vacuums)")
    print(f"    {runs} runs of each report; 1-minute load average up to "
          f"{load:.1f} on {os.cpu_count()} CPUs")
    for label, bar in (("365d", "1 s"), ("48h", "none"), ("24h", "200 ms")):
        print("    " + timings[label].line(label, bar))
    print(f"    catch_up per probe: {each:.2f} ms called after each probe, "
          f"{per_round:.2f} ms called once per round of {targets} targets")
    print(f"    bytes on disk per probe: {size / probes:.0f} ({size / 1e9:.2f} GB) as retention "
          f"left it; {compacted / probes:.0f} once compacted ({tables / probes:.0f} in the "
          "monitor's tables and indexes), of which:", flush=True)
    for name, size in largest:
        print(f"      {name:<40} {size / probes:6.0f}")


def largest_parts(engine: Engine) -> list[tuple[str, int]]:
    """The tables and indexes taking the most bytes."""
    query = ("SELECT name, SUM(pgsize) AS size FROM dbstat GROUP BY name"
             if engine.dialect.name == "sqlite" else
             "SELECT relname, pg_relation_size(c.oid) AS size FROM pg_class c "
             "JOIN pg_namespace n ON n.oid = c.relnamespace "
             "WHERE relkind IN ('r', 'i', 't') AND nspname IN ('public', 'pg_toast') "
             "AND (nspname = 'public' OR c.oid IN (SELECT reltoastrelid FROM pg_class d "
             "JOIN pg_namespace m ON m.oid = d.relnamespace WHERE m.nspname = 'public'))")
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(query + " ORDER BY size DESC LIMIT 8").all()
    return [(str(name), int(size)) for name, size in rows]


def tables_size(engine: Engine) -> int:
    """The monitor's own tables, TOAST and indexes (PostgreSQL's catalogs left out: ~8 MB,
    nothing next to a year of history but most of a short run's database)."""
    if engine.dialect.name == "sqlite":
        return db.size_bytes(engine) or 0
    with engine.connect() as connection:
        return int(connection.exec_driver_sql(
            "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'"
        ).scalar_one())


def compacted_size(engine: Engine) -> int:
    """Size with no free space left inside: what a fresh copy of the same data takes (retention
    lets up to a quarter of a SQLite file, or the dead rows on PostgreSQL, be reused later)."""
    with engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        if engine.dialect.name == "sqlite":
            autocommit.exec_driver_sql("VACUUM")
            autocommit.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            autocommit.exec_driver_sql("VACUUM FULL")
    return db.size_bytes(engine) or 0


def templates() -> tuple[ProbeResult, ProbeResult, ProbeResult]:
    """Two real probes of the standard canary against the simulator (answering at once), and
    a failed probe with no response made from the first."""
    with Simulator(seed=1) as sim:
        SimClient(sim.url).update(latency={"base_ms": 0, "jitter_ms": 0})
        _, (template, second) = standard_canaries(sim, 2)
    failed = replace(template, ok=False, raw_response=b"", response_headers={}, choices=(),
                     usage=Usage(), model=None, system_fingerprint=None, response_id=None)
    return template, second, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--backend", choices=["both", "sqlite", "postgresql"], default="both")
    parser.add_argument("--prune-every", type=int, default=7)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", metavar="DIR")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each report")
    args = parser.parse_args()
    template, second, failed = templates()
    print(f"{args.targets} targets x {args.days} days at one probe a minute; "
          f"retention {RAW_RETENTION.days} days of raw, pruned every {args.prune_every} days",
          flush=True)
    if args.backend in ("both", "sqlite"):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as workdir:
            path = Path(args.keep or workdir) / f"scale_{args.targets}x{args.days}.db"
            measure(f"sqlite:///{path}", template, second, failed, args.targets, args.days,
                    args.prune_every, args.runs)
    if args.backend in ("both", "postgresql"):
        name = f"monitor_scale_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            measure(args.postgres.rsplit("/", 1)[0] + f"/{name}", template, second, failed,
                    args.targets, args.days, args.prune_every, args.runs)
        finally:
            if args.keep:
                print(f"  kept PostgreSQL database {name}")
            else:
                with psycopg.connect(args.postgres, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
