"""Database outage: probes at a high rate while PostgreSQL is unreachable, then recovery.

`monitor run` (a real subprocess) reaches PostgreSQL through a loopback TCP proxy that this
script cuts for the outage and restores afterwards. Reported: probes sent (the simulator's own
count), probes stored, the spool's peak, the time from restore until the spool is empty, and
the drain rate against the arrival rate meanwhile (probes/s written to the database vs sent).

    python bench/outage.py [--targets 50] [--interval 1] [--outage-minutes 10]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import requests
from sqlalchemy import Engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.proxy

from daemon_load import proc_sample, start_simulator  # bench/ is on sys.path when run as a script

from monitor.store import db
from monitor.store.models import ProbeRow
from monitor.store.spool import Spool
from tests.proxy import Proxy

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--interval", type=int, default=1, help="seconds")
    parser.add_argument("--outage-minutes", type=float, default=10)
    args = parser.parse_args()
    sim, sim_url = start_simulator(base_ms=50, jitter_ms=20)
    name = f"monitor_outage_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    proxy = Proxy("127.0.0.1", 5432)  # ADMIN's server
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}"
    db.upgrade(url)
    workdir = Path(tempfile.mkdtemp(prefix="monitor-outage-"))
    spool = Spool(workdir / "spool.jsonl")
    config = workdir / "monitor.toml"
    config.write_text(f'[database]\nurl = "{url}"\n\n[defaults]\nprovider = "openai-compatible"\n'
                      f'base_url = "{sim_url}/v1"\nmodel = "gpt-4o"\n'
                      f'interval = "{args.interval}s"\ntimeout = "{args.interval}s"\n\n'
                      + "".join(f'[[targets]]\nname = "t{i:04d}"\n\n' for i in range(args.targets)))
    log_file = open(workdir / "daemon.log", "w")  # noqa: SIM115  (outlives this block)
    daemon = subprocess.Popen([sys.executable, "-m", "monitor", "run", "-c", str(config),
                               "--spool", str(spool.path)], stderr=log_file, cwd=workdir)
    time.sleep(10)
    proxy.cut()
    outage_started = time.monotonic()
    peak = 0
    rss_before, _ = proc_sample(daemon.pid)
    rss_samples = []
    while time.monotonic() - outage_started < args.outage_minutes * 60:
        time.sleep(10)
        peak = max(peak, spool.backlog())
        rss_samples.append(proc_sample(daemon.pid)[0])
        print(f"  outage +{time.monotonic() - outage_started:4.0f} s: spool {peak}, "
              f"RSS {rss_samples[-1]:.0f} MB", flush=True)
    # Counted directly, not through the proxy (it is still cut here).
    engine = db.create(f"postgresql://postgres@127.0.0.1:5432/{name}")
    stored_at_restore = count_stored(engine)
    sent_at_restore = sent_so_far(sim_url)
    proxy.restore()
    restored = time.monotonic()
    # (seconds since restore, stored, sent): the drain rate is taken from the first write on,
    # not from the restore (the drain job runs every 5 s).
    samples = [(0.0, stored_at_restore, sent_at_restore)]
    while spool.backlog() > 0 and time.monotonic() - restored < 600:
        time.sleep(0.5)
        samples.append((time.monotonic() - restored, count_stored(engine), sent_so_far(sim_url)))
    drain_s = time.monotonic() - restored
    first = next((i for i, s in enumerate(samples) if s[1] > stored_at_restore), 0)
    began_s, began_stored, began_sent = samples[max(0, first - 1)]
    drain_window_s = max(1e-9, samples[-1][0] - began_s)
    written = samples[-1][1] - began_stored
    arrived = samples[-1][2] - began_sent
    stop_sent = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=120)
    exit_s = time.monotonic() - stop_sent
    log_file.close()
    sent = requests.get(f"{sim_url}/_sim/stats", timeout=10).json()["by_path"].get(
        "/v1/chat/completions", 0)
    sim.terminate()
    sim.wait()
    with engine.connect() as connection:
        stored = connection.execute(select(func.count(ProbeRow.id))).scalar_one()
        distinct = connection.execute(select(func.count(func.distinct(ProbeRow.uid)))).scalar_one()
    engine.dispose()
    proxy.close()
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    print(f"{args.targets} targets every {args.interval}s; PostgreSQL cut for "
          f"{args.outage_minutes:g} min")
    print(f"  spool peak {peak} probes; drained in {drain_s:.1f} s after the database came back")
    print(f"  first write {began_s:.1f} s after the restore; from then until empty "
          f"({drain_window_s:.1f} s): {written / drain_window_s:.0f} probes/s written to the "
          f"database, {arrived / drain_window_s:.0f} probes/s arriving (configured "
          f"{args.targets / args.interval:g}), net {(written - arrived) / drain_window_s:.0f} "
          "probes/s out of the spool")
    print(f"  exited {exit_s:.1f} s after SIGTERM")
    print(f"  daemon RSS {rss_before:.0f} MB before the outage, "
          f"{max(rss_samples, default=0):.0f} MB at most during it")
    print(f"  probes sent {sent}, stored {stored} (distinct uids {distinct}): "
          f"{'equal' if sent == stored == distinct else 'MISMATCH'}")


def count_stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count(ProbeRow.id))).scalar_one())


def sent_so_far(sim_url: str) -> int:
    stats = requests.get(f"{sim_url}/_sim/stats", timeout=10).json()
    return int(stats["by_path"].get("/v1/chat/completions", 0))


if __name__ == "__main__":
    main()
