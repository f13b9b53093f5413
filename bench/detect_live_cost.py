"""Live detection cost with a year of history in the database: the time the daemon spends
after each stored probe folding it through every detector and moving the target's alerts
(Watcher.catch_up: lock and read the saved state, read the new probe, step, write events,
alerts and state back), on SQLite and on PostgreSQL.

The year (525,600 probes of one target, one a minute) is written through Recorder.save_many,
the path the spool drain uses, in batches. The first catch-up of a target with history folds
all of it once (reported separately); then each new probe is timed on its own.

    python bench/detect_live_cost.py [--probes 525600] [--samples 500]
        [--postgres postgresql://postgres@127.0.0.1/postgres]
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

import psycopg
from canary import canary_target  # bench/ is on sys.path when run as a script
from write_path import standard_canary

from monitor.alerts.watch import Watcher
from monitor.domain import AlertSettings, ProbeResult
from monitor.sim import Simulator
from monitor.store import db
from monitor.store.records import Recorder

START = datetime(2025, 11, 26, tzinfo=UTC)


def history(template: ProbeResult, count: int, seed: int = 1) -> list[ProbeResult]:
    """A steady year: lognormal latency, two fingerprints 3:1, an error now and then."""
    rng = random.Random(seed)
    results = []
    for i in range(count):
        total = 200 * rng.lognormvariate(0, 0.2)
        results.append(replace(
            template, uid=uuid.uuid4().hex, started_at=START + timedelta(minutes=i),
            total_ms=total, openai_processing_ms=0.8 * total,
            system_fingerprint="fp_a" if rng.random() < 0.75 else "fp_b",
        ))
    return results


def measure(url: str, results: list[ProbeResult], samples: int) -> dict[str, float]:
    db.upgrade(url)
    engine = db.open_store(url)
    recorder = Recorder(engine)
    target = canary_target("http://127.0.0.1:9/v1")
    recorder.register(target.name, results[0].config_hash, {})
    started = time.perf_counter()
    for i in range(0, len(results) - samples, 5000):
        recorder.save_many(results[i:min(i + 5000, len(results) - samples)])
    write_s = time.perf_counter() - started
    watcher = Watcher(engine, AlertSettings())
    target_id = recorder.target_id(target.name)
    tail = results[-samples:]
    first_id = recorder.save(tail[0])
    started = time.perf_counter()
    watcher.catch_up(target, target_id, first_id)
    first_s = time.perf_counter() - started
    times = []
    for result in tail[1:]:
        probe_id = recorder.save(result)
        started = time.perf_counter()
        watcher.catch_up(target, target_id, probe_id)
        times.append((time.perf_counter() - started) * 1000)
    engine.dispose()
    times.sort()
    return {"write_s": write_s, "first_s": first_s, "p50_ms": statistics.median(times),
            "p99_ms": times[int(len(times) * 0.99) - 1], "max_ms": times[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=525_600)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with Simulator(seed=1) as sim:
        _, template = standard_canary(sim)
    results = history(template, args.probes)
    print(f"{args.probes:,} stored probes of one target; {args.samples} new probes timed")
    with tempfile.TemporaryDirectory() as workdir:
        url = f"sqlite:///{Path(workdir) / 'year.db'}"
        report("SQLite", measure(url, results, args.samples))
    name = f"monitor_detect_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        report("PostgreSQL", measure(args.postgres.rsplit("/", 1)[0] + f"/{name}", results,
                                     args.samples))
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def report(label: str, figures: dict[str, float]) -> None:
    print(f"  {label:<11} per probe p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms,"
          f" max {figures['max_ms']:.2f} ms (bar: 5 ms); first catch-up over the whole history "
          f"{figures['first_s']:.1f} s; history written in {figures['write_s']:.0f} s")


if __name__ == "__main__":
    main()
