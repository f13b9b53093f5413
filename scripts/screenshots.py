"""Screenshots of the dashboard for the README, taken from a store anyone can rebuild.

Builds a fresh SQLite store with ten minutes of history at 2 s intervals: three targets are
probed for real, over loopback, by the daemon's own step (`Daemon.tick`) against the built-in
simulator, on a stepped clock (each tick is the next 2 s slot, so ten minutes take about two,
most of it the slow probes after the latency step). Through the simulator's controls, gpt-4o's
alias moves to a new snapshot with a new fingerprint at minute 5, every answer gets 1.2 s
slower at minute 8, and a few probes get a 503. Then it serves the dashboard on that store with
the clock stopped at the end, and headless Chromium takes a PNG of each page.

    python scripts/screenshots.py [--out docs/screenshots] [--page NAME=PATH ...]
        [--width 1200] [--height 1000] [--minutes 10] [--keep DIR]

Default pages: overview=/ target=/?target=gpt-4o probe=/probes/{probe}; `{probe}` is the
first gpt-4o probe that answered with the new fingerprint. A page the server does not have
(404) is reported and skipped, so the script is simply rerun once it has it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, select

from monitor import config
from monitor.daemon.steps import Daemon
from monitor.domain import Settings
from monitor.sim import SimClient, Simulator
from monitor.store import db, rollups
from monitor.store.models import ProbeRow, TargetRow
from monitor.store.records import Recorder
from monitor.store.spool import Spool
from monitor.web.app import WebServer
from monitor.web.serving import build_app

START = datetime(2026, 11, 26, 11, 50, tzinfo=UTC)  # fixed, so every run looks the same
INTERVAL = timedelta(seconds=2)
NEW_FINGERPRINT = "fp_b28b39ffa8"
PAGES = ("overview=/", "target=/?target=gpt-4o", "probe=/probes/{probe}")

CONFIG = """\
[database]
url = "{database_url}"

[defaults]
interval = "2s"
timeout = "2s"

[[targets]]
name = "gpt-4o"
provider = "openai"
base_url = "{url}/v1"
api_key_env = "SIM_KEY"
model = "gpt-4o"

[[targets]]
name = "gpt-4o-mini-stream"
provider = "openai"
base_url = "{url}/v1"
api_key_env = "SIM_KEY"
model = "gpt-4o-mini"
stream = true

[[targets]]
name = "azure-gpt-4o"
provider = "azure"
base_url = "{url}"
api_key_env = "SIM_KEY"
deployment = "gpt-4o-prod"
api_version = "2024-10-21"
"""


def build_history(workdir: Path, minutes: int) -> tuple[Engine, Settings, datetime]:
    """Probe the simulator every 2 s of a stepped clock; returns the store, the settings and the end."""
    now = START

    def clock() -> datetime:
        return now

    with Simulator(seed=7, clock=lambda: now.timestamp()) as sim:
        control = SimClient(sim.url)
        control.update(aliases={"gpt-4o-prod": "gpt-4o-2024-08-06"},
                       latency={"base_ms": 150, "jitter_ms": 30, "ttft_ms": 150,
                                "per_token_ms": 5},
                       fingerprints=[{"value": "fp_6ec83003ad", "weight": 1}])
        url = f"sqlite:///{workdir / 'monitor.db'}"
        path = workdir / "monitor.toml"
        path.write_text(CONFIG.format(url=sim.url, database_url=url))
        settings = config.load(str(path), environ={"SIM_KEY": "sim-screenshot-key"})
        db.upgrade(url)
        engine = db.open_store(url)
        daemon = Daemon(settings, Recorder(engine), Spool(workdir / "spool.jsonl"), clock=clock)
        ticks = minutes * 60 // int(INTERVAL.total_seconds())
        try:
            for tick in range(ticks):
                if tick == ticks // 2:
                    print(f"  minute {tick * 2 / 60:.0f}: gpt-4o moves to a new snapshot with "
                          "a new fingerprint", flush=True)
                    control.update(aliases={"gpt-4o": "gpt-4o-2024-11-20"},
                                   fingerprints=[{"value": NEW_FINGERPRINT, "weight": 1}])
                if tick == ticks * 8 // 10:
                    print(f"  minute {tick * 2 / 60:.0f}: every answer 1.2 s slower",
                          flush=True)
                    control.update(latency={"base_ms": 1350, "ttft_ms": 1350})
                if tick % 37 == 20:
                    control.enqueue({"fault": "http_503", "model": "gpt-4o"})
                daemon.tick(now)
                now += INTERVAL
            rollups.catch_up(engine)
        finally:
            daemon.close()
    return engine, settings, now


def first_probe_with(engine: Engine, target: str, fingerprint: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(
            select(ProbeRow.id).join(TargetRow, TargetRow.id == ProbeRow.target_id)
            .where(TargetRow.name == target, ProbeRow.system_fingerprint == fingerprint)
            .order_by(ProbeRow.started_at).limit(1)).scalar_one())


def screenshot(chromium: str, url: str, out: Path, width: int, height: int,
               profile: Path) -> None:
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", f"--user-data-dir={profile}", "--force-device-scale-factor=1",
         f"--window-size={width},{height}", f"--screenshot={out}", url],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/screenshots", type=Path)
    parser.add_argument("--page", dest="pages", action="append", metavar="NAME=PATH",
                        help=f"a page to take (repeatable); default {' '.join(PAGES)}")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build the store in DIR and keep it (default: a temporary one)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (Debian: apt-get install chromium)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.keep or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"probing the simulator for {args.minutes} minutes of 2 s slots", flush=True)
        engine, settings, end = build_history(workdir, args.minutes)
        probe = first_probe_with(engine, "gpt-4o", NEW_FINGERPRINT)
        missing = 0
        with WebServer(build_app(engine, None, lambda: settings, clock=lambda: end)) as server:
            for page in args.pages or PAGES:
                name, _, path = page.partition("=")
                url = server.url + path.format(probe=probe)
                status = status_of(url)
                if status != 200:
                    print(f"  {name}: {url} answered {status}; skipped", file=sys.stderr)
                    missing += 1
                    continue
                target = args.out / f"{name}.png"
                screenshot(chromium, url, target, args.width, args.height,
                           Path(scratch) / "chromium")
                print(f"  {name}: {target}")
        engine.dispose()
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
