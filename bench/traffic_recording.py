"""The recording half of `monitor proxy`: what `submit()` costs the forwarder's thread, and how
many calls a second one TrafficRecorder parses and stores, with the database up and with it
cut (PostgreSQL through a TCP proxy that refuses connections, as in the outage tests).

Exchanges are real answers of the simulator (plain and streamed chat completions), read as the
forwarder reads them, then handed over again with fresh start times (parsing is redone for
each, as it would be).

    python bench/traffic_recording.py [--calls 5000]
                                      [--postgres postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy import Engine, func, make_url, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitor.proxy.exchange import Exchange
from monitor.proxy.recorder import TrafficRecorder
from monitor.sim import Simulator
from monitor.store import db
from monitor.store.models import ProbeRow
from monitor.store.spool import Spool
from tests.proxy import Proxy
from tests.traffic import chat, openai_route


def exchanges(sim: Simulator, calls: int) -> list[Exchange]:
    route = openai_route(sim.url)
    samples = [chat(route, content=f"question {n}") for n in range(4)]
    samples += [chat(route, stream=True, stream_options={"include_usage": True})]
    return [replace(samples[n % len(samples)], started_at=datetime.now(UTC))
            for n in range(calls)]


def stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count(ProbeRow.id))).scalar_one())


def run(engine: Engine, spool_dir: Path, batch: list[Exchange],
        cut: Proxy | None = None) -> dict[str, float]:
    route = openai_route("http://unused")
    recorder = TrafficRecorder(engine, Spool(spool_dir / f"{uuid.uuid4().hex}.jsonl"), [route],
                               maintenance_s=None, retry_s=0.2)
    before = stored(engine)
    if cut is not None:
        cut.cut()
    waits = []
    started = time.perf_counter()
    for exchange in batch:
        t0 = time.perf_counter_ns()
        recorder.submit(exchange)
        waits.append((time.perf_counter_ns() - t0) / 1e3)
    submitted = time.perf_counter() - started
    if cut is not None:
        while recorder.counts.spooled + recorder.counts.stored < len(batch):
            time.sleep(0.01)
        cut.restore()
    while stored(engine) - before < len(batch):
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    counts = recorder.close(10)
    waits.sort()
    return {"submit_p50_us": statistics.median(waits),
            "submit_p99_us": waits[int(len(waits) * 0.99)], "submit_max_us": waits[-1],
            "over_1ms": sum(1 for w in waits if w > 1000),
            "submitted_per_s": len(batch) / submitted, "stored_per_s": len(batch) / elapsed,
            "spooled": counts.spooled, "overflowed": counts.overflowed,
            "dropped": counts.dropped}


def report(label: str, figures: dict[str, float]) -> None:
    print(f"{label:<34} submit p50 {figures['submit_p50_us']:6.1f} us  p99 "
          f"{figures['submit_p99_us']:7.1f} us  max {figures['submit_max_us']:8.0f} us  "
          f"over 1 ms {figures['over_1ms']:.0f}  "
          f"stored {figures['stored_per_s']:6.0f} calls/s  spooled {figures['spooled']:.0f} "
          f"(overflow {figures['overflowed']:.0f})  dropped {figures['dropped']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1/postgres")
    options = parser.parse_args()
    with Simulator(seed=1) as sim, tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        sqlite = f"sqlite:///{work / 'bench.db'}"
        db.upgrade(sqlite)
        engine = db.create(sqlite)
        report("SQLite", run(engine, work, exchanges(sim, options.calls)))
        engine.dispose()

        name = f"monitor_bench_traffic_{uuid.uuid4().hex[:8]}"
        admin_url = db.normalize_url(options.postgres).replace("postgresql+psycopg", "postgresql")
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(options.postgres).set(database=name)
            db.upgrade(url.render_as_string(hide_password=False))
            proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
            through = url.set(host="127.0.0.1", port=proxy.port)
            engine = db.create(through.render_as_string(hide_password=False))
            report("PostgreSQL", run(engine, work, exchanges(sim, options.calls)))
            report("PostgreSQL, cut during the submits",
                   run(engine, work, exchanges(sim, options.calls), cut=proxy))
            engine.dispose()
            proxy.close()
        finally:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
