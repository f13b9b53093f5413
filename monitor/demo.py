"""`monitor demo`: the whole pipeline on the embedded simulator, with no account and no key.

It starts the simulator on a free loopback port, writes a `monitor.toml` for four simulated
targets (OpenAI plain and streaming, Azure, a local OpenAI-compatible server) with warm-ups
short enough for a demo, and runs the daemon's own step for a quarter of an hour of one-minute
slots on a stepped clock (a few seconds of real time) while the simulator changes under it.
Detection runs after every probe, as under `monitor run`; the demo ends with the alerts raised.

The config stays beside the database, with a `.env` holding the simulator's stand-in key (not a
real one), so `monitor alerts`, `report`, `logs` and `serve` work in that folder afterwards.
A second run starts afresh: the demo's own SQLite file is replaced. Any other database (given
with --database) is added to, and the demo says so. Files it did not write are never touched.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import make_url

from monitor import config
from monitor.daemon import Daemon
from monitor.errors import MonitorError
from monitor.render import text
from monitor.sim import SimClient, Simulator
from monitor.store import alert_reads, db, probe_reads
from monitor.store.records import Recorder, count_probes
from monitor.store.spool import Spool

DEFAULT_DATABASE = "sqlite:///monitor-demo.db"
KEY_VARIABLE = "SIM_DEMO_KEY"
DEMO_KEY = "sim-demo-key"  # sent like a real key; the simulator needs none
MARK = "# Written by `monitor demo`"  # how the demo knows a monitor.toml is its own

ROUNDS = 14
INTERVAL = timedelta(minutes=1)

_CONFIG = MARK + """ for its simulator (stopped since): `monitor alerts`, `report`, `logs`,
# `show` and `serve` read what it stored. Probing these targets again needs the simulator
# (`monitor sim`, on the port below); for your own models, write your own monitor.toml.

[database]
url = "{database_url}"

[defaults]
interval = "1m"
timeout = "5s"

# Warm-ups short enough for a demo (the defaults learn from 10 to 60 probes first).
[defaults.detect]
warmup_probes = 3
fingerprint_warmup_probes = 3
latency_baseline_probes = 6
latency_recent_probes = 4
latency_min_samples = 4
latency_p_value = 0.01

[[targets]]
name = "gpt-4o"
provider = "openai"
base_url = "{url}/v1"
api_key_env = "{key}"
model = "gpt-4o"

[[targets]]
name = "gpt-4o-mini-stream"
provider = "openai"
base_url = "{url}/v1"
api_key_env = "{key}"
model = "gpt-4o-mini"
stream = true

[[targets]]
name = "azure-gpt-4o"
provider = "azure"
base_url = "{url}"
api_key_env = "{key}"
deployment = "gpt-4o-prod"
api_version = "2024-10-21"

[[targets]]
name = "local-llama"
provider = "openai-compatible"
base_url = "{url}/v1"
model = "llama-3.1-8b-instruct"
"""

_ENV = (f"# Written by `monitor demo`: the simulator's stand-in key, not a real one.\n"
        f"{KEY_VARIABLE}={DEMO_KEY}\n")


@dataclass(frozen=True)
class Twist:
    """What the simulator is told to do before a round, and what the demo says about it."""

    said: str
    scenario: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[dict[str, Any], ...] = ()


_NEW_FINGERPRINT = "fp_b28b39ffa8"
_TWISTS = {
    6: Twist("the gpt-4o alias now points at a new snapshot, gpt-4o-2024-11-20, served with "
             f"system_fingerprint {_NEW_FINGERPRINT}; the other targets are unchanged",
             {"aliases": {"gpt-4o": "gpt-4o-2024-11-20"}},
             ({"model": "gpt-4o", "system_fingerprint": _NEW_FINGERPRINT},) * (ROUNDS - 5)),
    7: Twist("local-llama answers its next 3 requests with HTTP 503",
             overrides=({"model": "llama-3.1-8b-instruct", "fault": "http_503"},) * 3),
    10: Twist("gpt-4o-mini's first token now takes 350 ms instead of about 50 (the streaming "
              "target slows down)",
              overrides=({"model": "gpt-4o-mini", "latency_ms": 350},) * (ROUNDS - 9)),
}


class DemoError(MonitorError):
    """The folder holds a file the demo would have to overwrite."""


def run(database_url: str, echo: Callable[[str], None], folder: Path = Path(".")) -> None:
    """The demo in `folder`: monitor.toml, .env and (by default) monitor-demo.db end up there."""
    config_path, env_path = folder / "monitor.toml", folder / ".env"
    previous = _previous_database(config_path)
    _check_env(env_path)
    _start_afresh(database_url, previous, echo)
    with Simulator(seed=7) as sim, tempfile.TemporaryDirectory() as spool_dir:
        client = SimClient(sim.url)
        client.update(aliases={"gpt-4o-prod": "gpt-4o-2024-08-06"},  # the Azure deployment
                      latency={"base_ms": 50, "jitter_ms": 15},
                      fingerprints=[{"value": "fp_6ec83003ad", "weight": 1}])
        echo(f"Simulator (OpenAI-compatible, built in) listening on {sim.url}")
        config_path.write_text(_CONFIG.format(url=sim.url, database_url=_stored_url(database_url),
                                              key=KEY_VARIABLE))
        if not env_path.exists():
            env_path.write_text(_ENV)
        # The file's URL may have lost a password; the one given is the one to use.
        settings = replace(config.load(str(config_path), environ={}), database_url=database_url)
        db.upgrade(database_url)
        engine = db.open_store(database_url)
        stored_before = count_probes(engine)
        if stored_before:
            echo(f"Adding to the {stored_before} probes already in "
                 f"{db.display_url(database_url)}")
        echo(f"Wrote {config_path} for {len(settings.targets)} targets; storing probes in "
             f"{db.display_url(database_url)}")
        clock = _SteppedClock(datetime.now(UTC).replace(second=0, microsecond=0)
                              - INTERVAL * (ROUNDS - 1))
        echo(f"Probing every minute for {ROUNDS} minutes on a stepped clock (a few seconds "
             "of real time); detection runs after every probe, as under `monitor run`.")
        daemon = Daemon(settings, Recorder(engine), Spool(Path(spool_dir) / "spool.jsonl"),
                        clock=clock)
        try:
            with _detections() as detected:
                for round_number in range(1, ROUNDS + 1):
                    twist = _TWISTS.get(round_number)
                    if twist is not None:
                        echo(f"-- simulator: {twist.said}")
                        if twist.scenario:
                            client.update(**twist.scenario)
                        if twist.overrides:
                            client.enqueue(*twist.overrides)
                    sent = daemon.tick(clock.now)
                    echo(_round_line(engine, round_number, clock.now, sent))
                    for line in detected:
                        echo(f"     detected: {line}")
                    detected.clear()
                    clock.step()
            daemon.roll_up()
            alerts = alert_reads.list_alerts(engine)
        finally:
            daemon.close()
            engine.dispose()
    echo("")
    echo(f"Alerts raised ({len(alerts)}):")
    echo(text.render_alerts(alerts, datetime.now(UTC)))  # the last round was this minute
    echo("")
    echo(f"This folder now holds {config_path.name} and {env_path.name} (the demo's config and "
         "its stand-in key) beside the database, so these work here as they are:")
    for command, what in (("monitor alerts", "the alerts above"),
                          ("monitor logs", "every stored probe, newest first"),
                          ("monitor show ID", "one probe in full: headers, body, what changed"),
                          ("monitor report", "health per target over the last 24 hours"),
                          ("monitor serve", "the dashboard on http://127.0.0.1:8765")):
        echo(f"  {command:<18}{what}")
    echo("For your own models: write a monitor.toml (see README.md), then "
         "`monitor config check && monitor db upgrade && monitor run`.")


def _previous_database(config_path: Path) -> str | None:
    """The database a previous demo's monitor.toml names; DemoError if the file is not one."""
    if not config_path.exists():
        return None
    content = config_path.read_text(errors="replace")
    if not content.startswith(MARK):
        raise DemoError(f"{config_path} exists and was not written by `monitor demo`, which "
                        "would replace it: run the demo in an empty folder")
    for line in content.splitlines():
        if line.startswith("url = "):
            return line.removeprefix("url = ").strip().strip('"')
    return None


def _check_env(env_path: Path) -> None:
    if env_path.exists() and f"{KEY_VARIABLE}=" not in env_path.read_text(errors="replace"):
        raise DemoError(f"{env_path} exists without {KEY_VARIABLE}, which the demo's config "
                        "needs: run the demo in an empty folder")


def _start_afresh(database_url: str, previous: str | None, echo: Callable[[str], None]) -> None:
    """Remove the demo's own SQLite file (the default one, or the one the previous demo's
    config names) so that each run shows one story; any other database is left as it is."""
    path = db.sqlite_path(database_url)
    if path is None or (database_url != DEFAULT_DATABASE and database_url != previous):
        return
    removed = False
    for name in (path, f"{path}-wal", f"{path}-shm"):
        if Path(name).exists():
            Path(name).unlink()
            removed = True
    if removed:
        echo(f"Starting afresh: removed the previous demo's {path}")


def _stored_url(database_url: str) -> str:
    """The URL as the config file holds it: never with a password (set it in
    MONITOR_DATABASE_URL, or in the database client's own way, e.g. PGPASSWORD)."""
    url = make_url(database_url)
    if url.password is None:
        return database_url
    return url.set(password=None).render_as_string(hide_password=False)


class _SteppedClock:
    """The demo's time: one slot per round, so a quarter of an hour passes in seconds."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def step(self) -> None:
        self.now += INTERVAL


def _round_line(engine: Any, number: int, at: datetime, sent: int) -> str:
    probes = probe_reads.list_probes(engine, limit=sent) if sent else []
    failed = [p for p in probes if not p["ok"]]
    line = f"round {number:>2} at {at:%H:%M} UTC: {sent} probes, {sent - len(failed)} ok"
    return line + "".join(f"; {text.safe_text(p['target'])} failed ({p['error_kind']}, HTTP "
                          f"{p['http_status'] or '-'})" for p in failed)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def _detections() -> Iterator[list[str]]:
    """What the daemon logs as worth a warning (detection events above all) while the demo
    runs, collected to be shown under the round that caused it."""
    logger = logging.getLogger("monitor")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
