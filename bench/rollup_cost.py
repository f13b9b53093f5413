"""Rollup catch-up cost per probe, by how many probes one catch-up folds.

The daemon catches rollups up every few seconds (defaults.ROLLUP_INTERVAL_S), so one catch-up
folds whatever the fleet stored since the last: one probe for a lone target, hundreds for a
fleet. Each catch-up is one transaction with one statement per table (hours, days, totals);
its fixed cost is shared by the probes it folds. Probes are spread over `--targets` targets and
stored through Recorder.save_batch; each size is timed `--repeats` times and the median kept.

    python bench/rollup_cost.py [--targets 20] [--repeats 15]
        [--postgres postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from write_path import drop_postgres, fresh_postgres, standard_canary  # bench/ is on sys.path

from monitor.domain import ProbeResult
from monitor.sim import SimClient, Simulator
from monitor.store import db, rollups
from monitor.store.records import Recorder

SIZES = (1, 20, 100, 500, 2000)
START = datetime(2026, 11, 1, tzinfo=UTC)


def cost_per_probe(url: str, template: ProbeResult, targets: int,
                   repeats: int) -> dict[int, float]:
    """ms per probe of one catch-up folding `size` new probes, for each size."""
    db.upgrade(url)
    engine = db.open_store(url)
    recorder = Recorder(engine)
    names = [f"target-{i:03d}" for i in range(targets)]
    at = START
    costs: dict[int, float] = {}
    for size in SIZES:
        samples = []
        for _ in range(repeats):
            at += timedelta(minutes=1)  # new probes land in the current hour and day
            recorder.save_batch([(replace(template, uid=uuid.uuid4().hex,
                                          target_name=names[i % targets], started_at=at), None)
                                 for i in range(size)])
            started = time.perf_counter()
            folded = rollups.catch_up(engine, now=at)
            samples.append((time.perf_counter() - started) * 1000 / size)
            assert folded == size, (folded, size)
        costs[size] = statistics.median(samples)
    engine.dispose()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with Simulator(seed=1) as sim:
        SimClient(sim.url).update(latency={"base_ms": 0, "jitter_ms": 0})
        _, template = standard_canary(sim)
    print(f"catch-up cost, ms per probe (median of {args.repeats}), probes over "
          f"{args.targets} targets; columns: probes folded by one catch-up")
    print("  " + " " * 11 + "".join(f"{size:>9}" for size in SIZES))
    with tempfile.TemporaryDirectory() as workdir:
        costs = cost_per_probe(f"sqlite:///{Path(workdir) / 'bench.db'}", template,
                               args.targets, args.repeats)
    print("  SQLite     " + "".join(f"{costs[size]:9.3f}" for size in SIZES))
    pg_url = fresh_postgres(args.postgres)
    try:
        costs = cost_per_probe(pg_url, template, args.targets, args.repeats)
    finally:
        drop_postgres(args.postgres, pg_url)
    print("  PostgreSQL " + "".join(f"{costs[size]:9.3f}" for size in SIZES))


if __name__ == "__main__":
    main()
