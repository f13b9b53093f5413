"""Live detection cost with a year of history in the database: the time the daemon spends
after each stored probe folding it through every detector and moving the target's alerts
(Watcher.catch_up: lock the saved position, read the new probe, step, write events, alerts and
state back), on SQLite and on PostgreSQL.

The year (525,600 probes of one target, one a minute) is written through Recorder.save_many,
the path the spool drain uses, in batches. The target then has history but no detection state
(as after an upgrade or an import): its first catch-up starts a rebuild from that history in
the background. Before that, the first 100,000 probes are folded alone in one thread, their CPU
split into reading them (as columns) and folding the detectors over them. While the rebuild
runs, a new probe is stored and caught up every 50 ms, as the target's probe thread would; the
longest of those catch-ups is the schedule lag the rebuild causes. Then each new probe is timed on its own,
with the statements it issued.

    python bench/detect_live_cost.py [--probes 525600] [--samples 500] [--reuse]
        [--postgres postgresql://postgres@127.0.0.1/postgres]

--reuse keeps the databases (a PostgreSQL database and a SQLite file in the temporary
directory, named after --probes) and uses them again next time, instead of writing the
history anew (minutes on PostgreSQL); each run resets the target's detection state first.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from canary import canary_target  # bench/ is on sys.path when run as a script
from sqlalchemy import Engine, delete, event, func, select
from write_path import standard_canary

from monitor.alerting import AlertSettings
from monitor.alerts.watch import REBUILD_CHUNK_SHARE, Watcher
from monitor.detect import TargetDetector
from monitor.domain import ProbeResult, Target
from monitor.sim import Simulator
from monitor.store import db
from monitor.store.history import CHUNK, ObservationReader
from monitor.store.models import DetectorStateRow, ProbeRow
from monitor.store.records import Recorder

START = datetime(2025, 11, 26, tzinfo=UTC)
PACE_S = 0.05  # how often a probe arrives while the rebuild runs (far more often than live)
FOLD_SAMPLE = 100_000  # probes folded alone to split the fold's CPU into reading and folding


def history(template: ProbeResult, count: int, start: int = 0,
            seed: int = 1) -> list[ProbeResult]:
    """A steady year: lognormal latency, two fingerprints 3:1, an error now and then; probe
    `start` onwards."""
    rng = random.Random(seed)
    results = []
    for i in range(start, start + count):
        total = 200 * rng.lognormvariate(0, 0.2)
        results.append(replace(
            template, uid=uuid.uuid4().hex, started_at=START + timedelta(minutes=i),
            total_ms=total, openai_processing_ms=0.8 * total,
            system_fingerprint="fp_a" if rng.random() < 0.75 else "fp_b",
        ))
    return results


class Statements:
    """Counts the statements an engine sends."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1


def prepare(url: str, template: ProbeResult, probes: int) -> tuple[Engine, int, float]:
    """The database holding the history (written unless already there), the target's
    detection state reset; (engine, probes stored, seconds spent writing)."""
    db.upgrade(url)
    engine = db.open_store(url)
    recorder = Recorder(engine)
    target = canary_target("http://127.0.0.1:9/v1")
    recorder.register(target.name, template.config_hash, {})
    target_id = recorder.target_id(target.name)
    with engine.begin() as connection:
        connection.execute(delete(DetectorStateRow))
        stored = connection.execute(select(func.count()).select_from(ProbeRow)
                                    .where(ProbeRow.target_id == target_id)).scalar_one()
    started = time.perf_counter()
    if stored < probes:
        results = history(template, probes - stored, start=stored)
        for i in range(0, len(results), 5000):
            recorder.save_many(results[i:i + 5000])
        stored = probes
    if engine.dialect.name == "postgresql":
        # What autovacuum would have done by now (the test server runs without it): with no
        # statistics the planner reads the whole replay_of index for every catch-up.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("ANALYZE probes")
    return engine, stored, time.perf_counter() - started


def fold_cost(engine: Engine, target: Target, target_id: int,
              count: int) -> tuple[float, float]:
    """CPU us per probe of reading the first `count` stored probes as columns and of folding
    the detectors over them in bulk, as a rebuild does (one thread, nothing else running)."""
    reader = ObservationReader()
    detector = TargetDetector(target.name, target.detection)
    read_s = fold_s = 0.0
    done = 0
    with engine.connect() as connection:
        chunks = reader.all_columns(connection, target_id,
                                    chunk=CHUNK // REBUILD_CHUNK_SHARE)
        while done < count:
            began = time.process_time()
            item = next(chunks, None)
            read = time.process_time()
            if item is None:
                break
            columns = item[1].section(0, count - done)
            detector.fold(columns)
            fold_s += time.process_time() - read
            read_s += read - began
            done += len(columns)
    return read_s / done * 1e6, fold_s / done * 1e6


def store_and_catch_up(recorder: Recorder, watcher: Watcher, target: Target, target_id: int,
                       result: ProbeResult) -> float:
    """What the probe thread does after a probe (store it, detect), in ms."""
    began = time.perf_counter()
    watcher.catch_up(target, target_id, recorder.save(result))
    return (time.perf_counter() - began) * 1000


def measure(url: str, template: ProbeResult, probes: int, samples: int) -> dict[str, float]:
    engine, stored, write_s = prepare(url, template, probes)
    recorder = Recorder(engine)
    target = canary_target("http://127.0.0.1:9/v1")
    target_id = recorder.target_id(target.name)
    read_us, step_us = fold_cost(engine, target, target_id, min(stored, FOLD_SAMPLE))
    watcher = Watcher(engine, AlertSettings())
    # Fresh seeds: a reused database already holds the probes of earlier runs.
    new = iter(history(template, 2 * samples + 20_000, start=stored, seed=stored))
    started = time.perf_counter()
    waits = [store_and_catch_up(recorder, watcher, target, target_id, next(new))]
    while watcher.rebuilding(target.name):
        time.sleep(PACE_S)
        waits.append(store_and_catch_up(recorder, watcher, target, target_id, next(new)))
    rebuild_s = time.perf_counter() - started
    probe_id = recorder.save(next(new))
    began = time.perf_counter()
    watcher.catch_up(target, target_id, probe_id)
    backlog_ms = (time.perf_counter() - began) * 1000
    # The same work with no rebuild running, for comparison.
    calm = sorted(store_and_catch_up(recorder, watcher, target, target_id, next(new))
                  for _ in range(len(waits)))
    statements = Statements(engine)
    times, issued = [], 0
    for _ in range(samples):
        probe_id = recorder.save(next(new))
        before = statements.count
        began = time.perf_counter()
        watcher.catch_up(target, target_id, probe_id)
        times.append((time.perf_counter() - began) * 1000)
        issued += statements.count - before
    engine.dispose()
    times.sort()
    first_ms = waits[0]
    waits.sort()
    return {"stored": stored, "write_s": write_s, "rebuild_s": rebuild_s, "during": len(waits),
            "first_ms": first_ms,
            "during_p50_ms": statistics.median(waits), "during_max_ms": waits[-1],
            "calm_p50_ms": statistics.median(calm), "calm_max_ms": calm[-1],
            "backlog_ms": backlog_ms, "p50_ms": statistics.median(times),
            "p99_ms": times[int(len(times) * 0.99) - 1], "max_ms": times[-1],
            "statements": issued / samples, "read_us": read_us, "step_us": step_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=525_600)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the databases and use them again next time")
    args = parser.parse_args()
    with Simulator(seed=1) as sim:
        _, template = standard_canary(sim)
    print(f"{args.probes:,} stored probes of one target; {args.samples} new probes timed")
    sqlite_file = Path(tempfile.gettempdir()) / f"monitor_detect_{args.probes}.db"
    try:
        report("SQLite", measure(f"sqlite:///{sqlite_file}", template, args.probes,
                                 args.samples))
    finally:
        if not args.reuse:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{sqlite_file}{suffix}").unlink(missing_ok=True)
    name = f"monitor_detect_{args.probes}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        report("PostgreSQL", measure(args.postgres.rsplit("/", 1)[0] + f"/{name}", template,
                                     args.probes, args.samples))
    finally:
        if not args.reuse:
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def report(label: str, figures: dict[str, float]) -> None:
    print(f"  {label:<11} per probe p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms,"
          f" max {figures['max_ms']:.2f} ms (bar: 5 ms), {figures['statements']:.1f} statements;"
          f"\n  {'':<11} rebuild of {figures['stored']:,} probes {figures['rebuild_s']:.1f} s in the"
          f" background (the catch-up starting it {figures['first_ms']:.1f} ms); meanwhile"
          f" storing and catching up a probe took p50"
          f" {figures['during_p50_ms']:.1f} ms, max {figures['during_max_ms']:.1f} ms"
          f" ({figures['during']:.0f} probes; after it p50 {figures['calm_p50_ms']:.1f} ms,"
          f" max {figures['calm_max_ms']:.1f} ms); the backlog {figures['backlog_ms']:.0f} ms;"
          f" history written in {figures['write_s']:.0f} s;"
          f"\n  {'':<11} folding alone (one thread, CPU): reading {figures['read_us']:.1f} us +"
          f" folding {figures['step_us']:.1f} us a probe, a year"
          f" {(figures['read_us'] + figures['step_us']) * 525_600 / 1e6:.1f} s (bar: 5 s);"
          f" the rebuild took {figures['rebuild_s'] / figures['stored'] * 1e6:.1f} us a probe")


if __name__ == "__main__":
    main()
