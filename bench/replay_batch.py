"""Batch replay throughput: 10,000 stored canaries replayed against the simulator (fixed
latency, no jitter) at concurrency 16, through the real path (claim, send, store linked).
Overhead per request is the time from claiming an item to having its replay stored, minus the
simulator's latency. The simulator runs in its own process (`monitor sim`), as a real upstream
would be elsewhere: in this one it would share the replay's GIL.

    python bench/replay_batch.py [--requests 10000] [--concurrency 16] [--latency-ms 50]
                                 [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from canary import canary_target  # bench/ is on sys.path when run as a script
from write_path import drop_postgres, fresh_postgres, standard_canary

from monitor.detect.stats import percentile
from monitor.replay import batch as replay_batch
from monitor.replay.batch import BatchSpec, run_batch
from monitor.sim import SimClient, Simulator
from monitor.store import db, replays
from monitor.store.records import Recorder


def _pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, 0 when there are none."""
    return percentile(sorted(values), q) if values else 0.0


def store_originals(url: str, template: Any, count: int) -> None:
    """`count` copies of one real probe (fresh uids, a second apart), bulk-inserted."""
    engine = db.open_store(url)
    recorder = Recorder(engine)
    recorder.register(template.target_name, template.config_hash, {})
    start = datetime.now(UTC) - timedelta(seconds=count + 60)
    results = [replace(template, uid=uuid.uuid4().hex, started_at=start + timedelta(seconds=i))
               for i in range(count)]
    for i in range(0, count, 5000):
        recorder.save_many(results[i:i + 5000])
    engine.dispose()


def measure(url: str, sim_url: str, count: int, concurrency: int,
            latency_ms: float) -> dict[str, float]:
    engine = db.open_store(url)
    started: dict[int, float] = {}
    cycle_ms: list[float] = []
    claim, save = replays.claim, replays.LinkedWriter.save

    # Timed from the claim (the first thing an item costs) to the stored replay.
    def timed_claim(*args: Any) -> Any:
        begun = time.perf_counter()
        found = claim(*args)
        if found is not None:
            started[found.item_id] = begun
        return found

    def timed_save(self: Any, *args: Any, **kwargs: Any) -> int:
        probe_id = save(self, *args, **kwargs)
        cycle_ms.append((time.perf_counter() - started[args[3]]) * 1000)
        return probe_id

    replay_batch.replays.claim = timed_claim  # type: ignore[assignment]
    replays.LinkedWriter.save = timed_save  # type: ignore[method-assign]
    try:
        spec = BatchSpec("gpt-4o", canary_target(f"{sim_url}/v1"), "1d", None,
                         datetime.now(UTC) - timedelta(days=1), None, count, concurrency)
        begun = time.perf_counter()
        summary = run_batch(engine, spec, threading.Event())
        elapsed = time.perf_counter() - begun
    finally:
        replay_batch.replays.claim = claim  # type: ignore[assignment]
        replays.LinkedWriter.save = save  # type: ignore[method-assign]
        engine.dispose()
    assert summary.done == count and summary.failed == 0, summary
    overheads = sorted(c - latency_ms for c in cycle_ms)
    return {"elapsed_s": elapsed, "rate": count / elapsed,
            "ideal": concurrency / (latency_ms / 1000),
            "p50": _pct(overheads, 50), "p99": _pct(overheads, 99),
            "replay_p50": summary.replay.p50_ms or 0.0}


def report(name: str, figures: dict[str, float]) -> None:
    print(f"  {name:<11} {figures['rate']:7.1f} req/s  (ideal {figures['ideal']:.0f}, "
          f"{figures['elapsed_s']:.1f} s)   overhead p50 {figures['p50']:6.2f} ms  "
          f"p99 {figures['p99']:6.2f} ms   replay total_ms p50 {figures['replay_p50']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--postgres", help="also run on a fresh database next to this one")
    args = parser.parse_args()
    with Simulator(seed=1) as sim:
        _, template = standard_canary(sim)
    print(f"{args.requests} stored canaries replayed at concurrency {args.concurrency}, "
          f"simulator latency {args.latency_ms:g} ms")
    with tempfile.TemporaryDirectory() as workdir, simulator(Path(workdir),
                                                             args.latency_ms) as sim_url:
        url = f"sqlite:///{Path(workdir) / 'bench.db'}"
        db.upgrade(url)
        store_originals(url, template, args.requests)
        report("SQLite", measure(url, sim_url, args.requests, args.concurrency,
                                 args.latency_ms))
        if args.postgres:
            SimClient(sim_url).reset()
            pg_url = fresh_postgres(args.postgres)
            try:
                db.upgrade(pg_url)
                store_originals(pg_url, template, args.requests)
                report("PostgreSQL", measure(pg_url, sim_url, args.requests, args.concurrency,
                                             args.latency_ms))
            finally:
                drop_postgres(args.postgres, pg_url)


@contextlib.contextmanager
def simulator(workdir: Path, latency_ms: float) -> Iterator[str]:
    """`monitor sim` in a child process: fixed latency, limits far above what is sent."""
    scenario = workdir / "scenario.toml"
    scenario.write_text(f"[latency]\nbase_ms = {latency_ms}\njitter_ms = 0\n"
                        "[rate_limits]\nrequests_per_window = 1000000000\n"
                        "tokens_per_window = 1000000000000\n")
    child = subprocess.Popen([sys.executable, "-m", "monitor", "sim", "--seed", "1",
                              "--scenario", str(scenario)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip().removeprefix("listening on ")
    finally:
        child.terminate()
        child.wait(10)


if __name__ == "__main__":
    main()
