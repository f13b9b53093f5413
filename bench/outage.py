"""Database outage: probes at a high rate while PostgreSQL is unreachable, then recovery.

`monitor run` (a real subprocess) reaches PostgreSQL through a loopback TCP proxy that this
script cuts for the outage and restores afterwards. Reported: probes sent (the simulator's own
count), probes stored, the spool's peak, and the time from restore until the spool is empty.

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
from sqlalchemy import func, select

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
    proxy.restore()
    restored = time.monotonic()
    while spool.backlog() > 0 and time.monotonic() - restored < 600:
        time.sleep(0.5)
    drain_s = time.monotonic() - restored
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=120)
    log_file.close()
    sent = requests.get(f"{sim_url}/_sim/stats", timeout=10).json()["by_path"].get(
        "/v1/chat/completions", 0)
    sim.terminate()
    sim.wait()
    engine = db.create(url)  # no schema gate: only counting
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
    print(f"  daemon RSS {rss_before:.0f} MB before the outage, "
          f"{max(rss_samples, default=0):.0f} MB at most during it")
    print(f"  probes sent {sent}, stored {stored} (distinct uids {distinct}): "
          f"{'equal' if sent == stored == distinct else 'MISMATCH'}")


if __name__ == "__main__":
    main()
