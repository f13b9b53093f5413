"""Daemon under load: N targets at one interval against the simulator for a while.

The simulator runs in its own process (so the daemon's CPU is its own), answering after
200 ms +- 50 ms. `monitor run` runs as a real subprocess; every 5 s its RSS and CPU are read
from /proc. Afterwards the slots table says what happened: schedule lag (probe start minus
slot start), slots probed, missed (no row) and duplicated (impossible by constraint, checked
against the probes anyway).

    python bench/daemon_load.py --targets 2000 --interval 60 --minutes 5 --database sqlite
    python bench/daemon_load.py --targets 2000 --interval 60 --minutes 5 \
        --database postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import requests
from sqlalchemy import func, select

from monitor.store import db
from monitor.store.models import ProbeRow, SlotRow

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def proc_sample(pid: int) -> tuple[float, float, float]:
    """(RSS in MB, of which anonymous, CPU seconds so far) of a process. SQLite reads and writes
    its file through a memory map (PRAGMA mmap_size), whose pages count as resident as the
    database grows: the anonymous part is the process's own memory."""
    with open(f"/proc/{pid}/statm") as file:
        pages = file.read().split()
    rss_mb = int(pages[1]) * PAGE / 1e6
    anonymous_mb = (int(pages[1]) - int(pages[2])) * PAGE / 1e6  # resident minus file-backed
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return rss_mb, anonymous_mb, (int(fields[11]) + int(fields[12])) / TICKS


def smaps_mb(pid: int, field: str) -> float:
    """One field of /proc/PID/smaps_rollup in MB: "Pss" (each page shared between processes,
    such as the workers' imported code forked from one parent, counted once in all, as a share
    of it in each) or "Private_Dirty" (the pages only this process has written)."""
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1000
    return 0.0


def instance(pid: int) -> list[int]:
    """The process and its children (`monitor run --workers N` forks N)."""
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        return [pid, *map(int, file.read().split())]


def instance_sample(pid: int) -> tuple[float, float, float, float]:
    """proc_sample() summed over the instance's processes, and their PSS in MB."""
    rss = anonymous = cpu = pss = 0.0
    for member in instance(pid):
        sample = proc_sample(member)
        rss, anonymous, cpu = rss + sample[0], anonymous + sample[1], cpu + sample[2]
        pss += smaps_mb(member, "Pss")
    return rss, anonymous, cpu, pss


def postgres_cpu_s() -> float:
    """CPU seconds so far of every PostgreSQL server process on this machine (the server's
    share of the daemon's work when the database is local)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            total += proc_sample(int(entry.name))[2]
        except OSError:
            continue  # gone meanwhile
    return total


def new_maintenance(url: str, seen: dict[str, int], at: float) -> list[tuple[float, str]]:
    """The autovacuum and autoanalyze runs PostgreSQL finished on the database's tables since
    the last call (counted in `seen`), as (at, "autoanalyze probes")."""
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"),
                         autocommit=True) as connection:
        rows = connection.execute("SELECT relname, autovacuum_count, autoanalyze_count "
                                  "FROM pg_stat_user_tables").fetchall()
    happened = []
    for table, vacuums, analyzes in rows:
        for kind, count in (("autovacuum", vacuums), ("autoanalyze", analyzes)):
            if count > seen.get(f"{kind} {table}", 0):
                happened.append((at, f"{kind} {table}"))
            seen[f"{kind} {table}"] = count
    return happened


def per_minute_cpu_ms(cpu: list[tuple[float, float]], probes_by_minute: dict[int, int],
                      offset_s: float) -> str:
    """CPU ms a probe in each whole minute of the run: the CPU spent over that minute (from
    (s since start, CPU s so far) samples) over the probes started in it. `offset_s`: the
    first slot's time, in seconds since the samples' start."""
    parts = []
    for minute, count in sorted(probes_by_minute.items()):
        start, end = offset_s + 60 * minute, offset_s + 60 * (minute + 1)
        inside = [(t, c) for t, c in cpu if start <= t <= end]
        if len(inside) >= 2 and count >= 100:
            spent_s = inside[-1][1] - inside[0][1]
            covered = (inside[-1][0] - inside[0][0]) / 60
            parts.append(f"{minute}: {1000 * spent_s / covered / count:.2f}")
    return "  ".join(parts)


def start_simulator(base_ms: int = 200, jitter_ms: int = 50) -> tuple[subprocess.Popen[str], str]:
    """`monitor sim` in its own process, with rate limits out of the way; (process, URL)."""
    process = subprocess.Popen([sys.executable, "-m", "monitor", "sim", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    url = re.sub(r"^listening on ", "", process.stdout.readline().strip())
    requests.post(f"{url}/_sim/scenario", json={
        "latency": {"base_ms": base_ms, "jitter_ms": jitter_ms},
        "rate_limits": {"requests_per_window": 10**9, "tokens_per_window": 10**12},
    }, timeout=10).raise_for_status()
    return process, url


def database_url(choice: str, workdir: Path) -> tuple[str, str | None]:
    if choice == "sqlite":
        return f"sqlite:///{workdir / 'load.db'}", None
    name = f"monitor_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(choice, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{choice.rsplit('/', 1)[0]}/{name}", name


def fleet_config(workdir: Path, url: str, sim_url: str, interval_s: float, targets: int) -> Path:
    """A monitor.toml of `targets` alike canaries of the simulator, every `interval_s`. The
    timeout is 10 s, or the interval when shorter (the config refuses a longer one)."""
    path = workdir / "monitor.toml"
    path.write_text(f'[database]\nurl = "{url}"\n\n[defaults]\nprovider = "openai-compatible"\n'
                    f'base_url = "{sim_url}/v1"\nmodel = "gpt-4o"\ninterval = "{interval_s:g}s"\n'
                    f'timeout = "{min(10.0, interval_s):g}s"\n\n' + "".join(
                        f'[[targets]]\nname = "t{i:05d}"\n\n' for i in range(targets)))
    return path


def every(samples: list[tuple[float, float, float, float, float]], step_s: float
          ) -> list[tuple[float, float, float, float, float]]:
    """The first sample at or after each multiple of `step_s` seconds."""
    picked: list[tuple[float, float, float, float, float]] = []
    for sample in samples:
        if sample[0] >= step_s * len(picked):
            picked.append(sample)
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=60, help="seconds")
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--database", default="sqlite", help="sqlite or a PostgreSQL URL")
    parser.add_argument("--workers", type=int, default=1, help="monitor run --workers")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    sim, sim_url = start_simulator()
    workdir = Path(tempfile.mkdtemp(prefix="monitor-load-"))
    url, pg_name = database_url(args.database, workdir)
    db.upgrade(url)
    config = fleet_config(workdir, url, sim_url, args.interval, args.targets)
    log_file = open(workdir / "daemon.log", "w")  # noqa: SIM115  (outlives this block)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "-c", str(config),
         "--spool", str(workdir / "spool.jsonl"), "--workers", str(args.workers)],
        stderr=log_file, cwd=workdir)
    started, started_wall = time.monotonic(), datetime.now(UTC)
    server_cpu_at_start = postgres_cpu_s()
    samples: list[tuple[float, float, float, float, float]] = []
    server_samples: list[tuple[float, float]] = []  # (s since start, server CPU s so far)
    maintenance: list[tuple[float, str]] = []  # (s since start, "autovacuum probes", ...)
    maintained: dict[str, int] = {}
    while (elapsed := time.monotonic() - started) < args.minutes * 60:
        time.sleep(5)
        rss, anonymous, cpu, pss = instance_sample(daemon.pid)
        at = time.monotonic() - started
        samples.append((at, rss, anonymous, cpu, pss))
        if pg_name is not None:
            server_samples.append((at, postgres_cpu_s() - server_cpu_at_start))
            maintenance += new_maintenance(url, maintained, at)
    server_cpu_s = postgres_cpu_s() - server_cpu_at_start
    # Per worker: worker 0 also rolls up, notifies and prunes, and has held more than the others.
    private_mb = [smaps_mb(member, "Private_Dirty") for member in instance(daemon.pid)]
    simulator_cpu_s = proc_sample(sim.pid)[2]
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=120)
    log_file.close()
    sim.terminate()
    sim.wait()

    engine = db.open_store(url)
    with engine.connect() as connection:
        # Joined here rather than in SQL: probes.uid is stored as 16 bytes (a uuid on
        # PostgreSQL) and slots.probe_uid as its hex text.
        started_at_of = dict(connection.execute(select(ProbeRow.uid, ProbeRow.started_at)).all())
        rows = [(slot_at, started_at_of[uid], target_id) for slot_at, uid, target_id in
                connection.execute(select(SlotRow.slot_at, SlotRow.probe_uid, SlotRow.target_id)
                                   .where(SlotRow.probe_uid.is_not(None)))
                if uid in started_at_of]
        slots = connection.execute(select(func.count(SlotRow.id))).scalar_one()
        probes = connection.execute(select(func.count(ProbeRow.id))).scalar_one()
        failed = connection.execute(
            select(func.count(ProbeRow.id)).where(ProbeRow.ok.is_(False))).scalar_one()
    engine.dispose()
    lags = sorted((started_at - slot).total_seconds() for slot, started_at, _ in rows)
    # Slots that should exist: each target's grid points between the first and last full one.
    first = min(slot for slot, _, _ in rows)
    last = max(slot for slot, _, _ in rows)
    per_target: dict[int, set[object]] = {}
    for slot, _, target_id in rows:
        per_target.setdefault(target_id, set()).add(slot)
    interval = timedelta(seconds=args.interval)
    missed = 0
    for seen in per_target.values():
        ordered = sorted(seen)  # type: ignore[type-var]
        missed += sum(round((b - a) / interval) - 1 for a, b in itertools.pairwise(ordered))
    cpu_s = samples[-1][3]
    after_2 = [rss for t, rss, _, _, _ in samples if t >= 120]
    anonymous_after_2 = [anonymous for t, _, anonymous, _, _ in samples if t >= 120]
    pss_after_2 = [pss for t, _, _, _, pss in samples if t >= 120]
    print(f"{args.targets} targets every {args.interval}s for {args.minutes:g} min on "
          f"{'SQLite' if pg_name is None else 'PostgreSQL'}, {args.workers} worker"
          f"{'s' if args.workers > 1 else ''} ({first:%H:%M:%S}-{last:%H:%M:%S})")
    print(f"  probes stored {probes} (failed {failed}), slots {slots}, "
          f"probed slots {len(rows)}, duplicated {probes - len(rows)}, missed {missed}, "
          f"targets never probed {args.targets - len(per_target)}")
    q = statistics.quantiles(lags, n=100)
    print(f"  schedule lag s: p50 {q[49]:.3f}  p99 {q[98]:.3f}  max {lags[-1]:.3f}")
    by_minute: dict[int, list[float]] = {}
    for slot, started_at, _ in rows:
        by_minute.setdefault(int((slot - first).total_seconds() // 60), []).append(
            (started_at - slot).total_seconds())
    print("  lag p99 s by minute: " + "  ".join(
        f"{minute}: {statistics.quantiles(values, n=100)[98]:.2f}"
        for minute, values in sorted(by_minute.items()) if len(values) >= 100))
    # CPU is spent when a probe runs, which is its slot's time only while on schedule.
    started_by_minute: dict[int, int] = {}
    for _, started_at, _ in rows:
        minute = int((started_at - first).total_seconds() // 60)
        started_by_minute[minute] = started_by_minute.get(minute, 0) + 1
    offset_s = (first - started_wall).total_seconds()
    print("  instance CPU ms a probe by minute: " + per_minute_cpu_ms(
        [(t, cpu) for t, _, _, cpu, _ in samples], started_by_minute, offset_s))
    if pg_name is not None:
        print("  PostgreSQL server CPU ms a probe by minute: " + per_minute_cpu_ms(
            server_samples, started_by_minute, offset_s))
        print("  autovacuum and autoanalyze (minute, table): " + ", ".join(
            f"{(at - offset_s) / 60:.1f} {what}" for at, what in maintenance))
    print(f"  instance CPU {cpu_s:.1f} s over {elapsed:.0f} s = {100 * cpu_s / elapsed:.1f}% of one core"
          f" ({1000 * cpu_s / max(probes, 1):.2f} ms a probe); simulator "
          f"{100 * simulator_cpu_s / elapsed:.1f}%")
    if pg_name is not None:
        with psycopg.connect(args.database, autocommit=True) as admin:
            sessions = admin.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s",
                                     (pg_name,)).fetchone()
        print(f"  PostgreSQL connections opened: {sessions[0] if sessions else '?'}")
        print(f"  PostgreSQL server CPU {server_cpu_s:.1f} s = "
              f"{100 * server_cpu_s / elapsed:.1f}% of one core "
              f"({1000 * server_cpu_s / max(probes, 1):.2f} ms a probe)")
    if len(after_2) >= 2:
        # Flat means no growth with time: the least-squares slope of RSS over the samples.
        times = [t for t, _, _, _, _ in samples if t >= 120]
        for label, values in (("RSS", after_2), ("anonymous RSS", anonymous_after_2),
                              ("PSS", pss_after_2)):
            slope = statistics.linear_regression(times, values).slope
            print(f"  {label} MB: at 2 min {values[0]:.1f}, end {values[-1]:.1f}, "
                  f"max {max(values):.1f}, slope after 2 min {60 * slope:+.2f} MB/min")
        # A long run's shape: whether memory levels off once the detector windows are full.
        step_s = 600 if args.minutes > 30 else 60
        print(f"  RSS / anonymous MB every {step_s // 60} min: " + "  ".join(
            f"{int(t // 60)}: {rss:.0f}/{anonymous:.0f}"
            for (t, rss, anonymous, _, _) in every(samples, step_s)))
    print("  private memory MB by worker at the end: " + "  ".join(
        f"{index}: {mb:.0f}" for index, mb in enumerate(private_mb)))
    print(f"  machine: nproc {os.cpu_count()}, load average at start {load_at_start:.2f}, "
          f"at end {os.getloadavg()[0]:.2f}")
    if pg_name is not None:
        with psycopg.connect(args.database, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{pg_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
