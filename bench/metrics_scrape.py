"""/metrics at fleet scale: what one Prometheus scrape costs the process that serves it
(`monitor run --http` serves it from the daemon's worker 0, so a slow scrape takes the CPU its
probes need).

N canary targets with a history of one probe a minute each, stored as the real write path
stores them (history_scale's rows), rollups caught up. A share of the targets never sees
rate-limit headers (a self-hosted server), a share runs a quality check on every probe. Then
the scrape is timed as the web server runs it: `metrics_snapshot` and the exposition text;
wall time, this process's CPU and (PostgreSQL on this machine) the server's CPU, median of
--runs.

    python bench/metrics_scrape.py [--targets 10000] [--minutes 60] [--runs 5]
        [--backend both|sqlite|postgresql] [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from history_scale import (  # bench/ is on sys.path
    START,
    Rows,
    backend_pids,
    server_cpu_s,
    templates,
)
from sqlalchemy import Engine, insert, select
from write_path import drop_postgres, fresh_postgres

from monitor.domain import ProbeResult
from monitor.health import metrics_snapshot
from monitor.render.metrics import exposition_registry, render_metrics
from monitor.store import db, rollups
from monitor.store.records import Recorder
from monitor.store.schema import check_results, probes

ROWS_PER_INSERT = 20_000
LIMIT_COLUMNS = ("ratelimit_limit_requests", "ratelimit_limit_tokens",
                 "ratelimit_limit_input_tokens", "ratelimit_limit_output_tokens",
                 "ratelimit_remaining_requests", "ratelimit_remaining_tokens",
                 "ratelimit_remaining_input_tokens", "ratelimit_remaining_output_tokens",
                 "ratelimit_reset_requests_s", "ratelimit_reset_tokens_s")


def register(engine: Engine, template: ProbeResult, count: int) -> list[tuple[int, ...]]:
    """Targets, configurations and payloads as a first real save of each creates them, in
    batches (save_many), and the ids the bulk rows carry."""
    names = [f"target-{i:05d}" for i in range(count)]
    recorder = Recorder(engine)
    for start in range(0, count, 1000):
        recorder.save_many([replace(template, uid=uuid.uuid4().hex, target_name=name,
                                    started_at=START - timedelta(minutes=1))
                            for name in names[start:start + 1000]])
    with engine.connect() as connection:
        rows = connection.execute(select(probes.c.target_id, probes.c.target_config_id,
                                         probes.c.request_payload_id)
                                  .order_by(probes.c.target_id)).all()
    return [tuple(row) for row in rows]


def build(engine: Engine, rows: Rows, keys: list[tuple[int, ...]], minutes: int,
          unlimited: set[int], checked: set[int]) -> None:
    batch: list[dict[str, Any]] = []
    for minute in range(minutes):
        at = START + timedelta(minutes=minute)
        for i, key in enumerate(keys):
            row = rows.one(key, minute, at, stream=i % 4 == 3)  # type: ignore[arg-type]
            if key[0] in unlimited:
                row.update(dict.fromkeys(LIMIT_COLUMNS))
            batch.append(row)
            if len(batch) >= ROWS_PER_INSERT:
                store(engine, rows, batch, checked)
                batch = []
    store(engine, rows, batch, checked)
    rollups.catch_up(engine, batch=50_000)


def store(engine: Engine, rows: Rows, batch: list[dict[str, Any]], checked: set[int]) -> None:
    if not batch:
        return
    with engine.begin() as connection:
        for row in batch:
            rows.facets.take(connection, row)
            rows.answers.take(connection, row)
        connection.execute(insert(probes), batch)
        uids = [row["uid"] for row in batch if row["target_id"] in checked]
        if not uids:
            return
        stored = connection.execute(
            select(probes.c.id, probes.c.target_id, probes.c.started_at, probes.c.ok)
            .where(probes.c.uid.in_(uids))).all()
        connection.execute(insert(check_results), [
            {"probe_id": probe_id, "check_name": "answer_format", "target_id": target_id,
             "started_at": started_at, "outcome": "pass" if ok else "not_applicable",
             "reason": None, "model": "gpt-4o-2024-08-06",
             "system_fingerprint": "fp_6ec83003ad"}
            for probe_id, target_id, started_at, ok in stored])


def time_scrapes(engine: Engine, runs: int) -> None:
    registry = exposition_registry(lambda: metrics_snapshot(engine))
    pids = backend_pids(engine)
    wall, cpu, server, size = [], [], [], 0
    for _ in range(runs):
        before = server_cpu_s(pids)
        started, started_cpu = time.perf_counter(), time.process_time()
        body, _ = render_metrics(registry, "text/plain")
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        if before is not None and (after := server_cpu_s(pids)) is not None:
            server.append(after - before)
        size = len(body)
    line = (f"    scrape: wall median {statistics.median(wall) * 1000:.0f} ms (min "
            f"{min(wall) * 1000:.0f}, first {wall[0] * 1000:.0f}); client CPU median "
            f"{statistics.median(cpu) * 1000:.0f} ms")
    if server:
        line += f"; server CPU mean {statistics.mean(server) * 1000:.0f} ms"
    print(line + f"; {size / 1e6:.1f} MB of exposition text", flush=True)


def measure(url: str, template: ProbeResult, second: ProbeResult, failed: ProbeResult,
            targets: int, minutes: int, runs: int) -> None:
    db.upgrade(url)
    engine = db.open_store(url)
    started = time.perf_counter()
    keys = register(engine, template, targets)
    ids = [key[0] for key in keys]
    unlimited, checked = set(ids[::10]), set(ids[5::10])
    build(engine, Rows(engine, second, failed, 1, keys), keys, minutes, unlimited, checked)
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    print(f"  {engine.dialect.name}: {targets:,} targets x {minutes + 1} probes, "
          f"{len(unlimited):,} without rate limits, {len(checked):,} checked; built in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    time_scrapes(engine, runs)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=60, help="probes of history per target")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", choices=["both", "sqlite", "postgresql"], default="both")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    template, second, failed = templates()
    if args.backend in ("both", "sqlite"):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as workdir:
            measure(f"sqlite:///{Path(workdir) / 'scrape.db'}", template, second, failed,
                    args.targets, args.minutes, args.runs)
    if args.backend in ("both", "postgresql"):
        url = fresh_postgres(args.postgres)
        try:
            measure(url, template, second, failed, args.targets, args.minutes, args.runs)
        finally:
            drop_postgres(args.postgres, url)


if __name__ == "__main__":
    main()
