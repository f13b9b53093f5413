"""The daemon's memory and CPU per probe, in process: `Daemon.tick` over N targets against the
simulator (its own process, answering at once), with a fixed clock one interval apart per round.

Prints, per round, the CPU this process spent per probe and its anonymous RSS; with
--tracemalloc, the Python allocations held after the last round and what grew from round 2 to
the last (the 15 biggest sites). With --profile, a cProfile of every probe thread by its own
CPU time, rounds 2 on, goes to the given file. malloc is limited to 2 arenas as `monitor run`
does it, unless --default-arenas.

    python bench/daemon_rounds.py --targets 2000 --rounds 6 --database sqlite
    python bench/daemon_rounds.py --targets 2000 --rounds 6 \
        --database postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import tempfile
import threading
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from daemon_load import PAGE, database_url, fleet_config, start_simulator  # bench/ is on sys.path

from monitor import config
from monitor.daemon import limit_malloc_arenas
from monitor.daemon.steps import Daemon
from monitor.domain import ProbeResult, Target
from monitor.store import db
from monitor.store.records import Recorder
from monitor.store.spool import Spool


def anonymous_mb() -> float:
    with open("/proc/self/statm") as file:
        pages = file.read().split()
    return (int(pages[1]) - int(pages[2])) * PAGE / 1e6


profiling = [False]  # whether the probe threads profile now (rounds 2..)


def profile_probes(daemon: Daemon, profilers: list[cProfile.Profile]) -> None:
    """cProfile sees one thread: each probe thread gets a profiler of its own (timed by the thread's CPU), enabled around
    each probe of the rounds being profiled."""
    local = threading.local()
    probe_target = daemon.probe_target

    def profiled(target: Target, now: datetime | None = None) -> ProbeResult | None:
        if not profiling[0]:
            return probe_target(target, now)
        profiler = getattr(local, "profiler", None)
        if profiler is None:
            profiler = local.profiler = cProfile.Profile(time.thread_time)
            profilers.append(profiler)
        profiler.enable()
        try:
            return probe_target(target, now)
        finally:
            profiler.disable()

    daemon.probe_target = profiled  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--database", default="sqlite", help="sqlite or a PostgreSQL URL")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--default-arenas", action="store_true",
                        help="leave glibc's malloc arenas as they are (`monitor run` limits them)")
    parser.add_argument("--profile", help="write a cProfile of rounds 2.. here (text; "
                        "and FILE.pstats for pstats)")
    args = parser.parse_args()
    if not args.default_arenas:
        limit_malloc_arenas()  # as `monitor run` does, before any thread
    sim, sim_url = start_simulator(base_ms=0, jitter_ms=0)
    workdir = Path(tempfile.mkdtemp(prefix="monitor-rounds-"))
    url, pg_name = database_url(args.database, workdir)
    try:
        db.upgrade(url)
        path = fleet_config(workdir, url, sim_url, 60, args.targets)
        settings = config.load(str(path), environ={})
        now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
        clock_now = [now]
        engine = db.open_store(url)
        daemon = Daemon(settings, Recorder(engine), Spool(workdir / "spool.jsonl"),
                        clock=lambda: clock_now[0])
        daemon.register()
        print(f"{args.targets} targets, {'SQLite' if pg_name is None else 'PostgreSQL'}; "
              f"anonymous RSS before the first round {anonymous_mb():.1f} MB")
        profilers: list[cProfile.Profile] = []
        if args.profile:
            profile_probes(daemon, profilers)
        first: tracemalloc.Snapshot | None = None
        for round_ in range(1, args.rounds + 1):
            if args.tracemalloc and round_ == 1:
                tracemalloc.start(12)
            profiling[0] = bool(args.profile) and round_ >= 2
            cpu, wall = time.process_time(), time.monotonic()
            sent = daemon.tick(clock_now[0])
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            gc.collect()
            print(f"round {round_}: {sent} probes, CPU {1000 * cpu / max(1, sent):.2f} ms a "
                  f"probe, wall {wall:.1f} s, anonymous RSS {anonymous_mb():.1f} MB"
                  + (f", traced {tracemalloc.get_traced_memory()[0] / 1e6:.1f} MB"
                     if args.tracemalloc else ""))
            if args.tracemalloc and round_ == 2:
                first = tracemalloc.take_snapshot()
            clock_now[0] += timedelta(seconds=60)
        if profilers:
            with open(args.profile, "w") as out:
                stats = pstats.Stats(*profilers, stream=out)
                stats.sort_stats("tottime").print_stats(60)
                stats.sort_stats("cumulative").print_stats(80)
                stats.dump_stats(f"{args.profile}.pstats")  # for callers and callees
        if args.tracemalloc:
            last = tracemalloc.take_snapshot()
            assert first is not None
            print("held after the last round, by file and line (top 25):")
            for stat in last.statistics("lineno")[:25]:
                print(f"  {stat.size / 1e6:8.2f} MB {stat.count:8d}  {stat.traceback[0]}")
            print("grown from round 2 to the last (top 15):")
            for diff in last.compare_to(first, "traceback")[:15]:
                print(f"  {diff.size_diff / 1e6:+8.2f} MB {diff.count_diff:+8d}")
                for frame in diff.traceback.format()[-12:]:
                    print(f"      {frame}")
        daemon.close()
        engine.dispose()
    finally:
        sim.terminate()
        sim.wait()
        if pg_name is not None:
            with psycopg.connect(args.database, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{pg_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
