"""The daemon: the step function with a fixed clock, quota backoff, the spool through a real
database outage, and `monitor run` as a real subprocess."""

from __future__ import annotations

import itertools
import json
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from monitor.cli import cli
from monitor.daemon import Daemon, limit_malloc_arenas
from monitor.domain import ErrorKind
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store.models import ProbeRow, SlotRow, TargetConfigRow
from monitor.store.records import Recorder
from monitor.store.spool import Spool
from tests.conftest import MakeSettings, empty_postgres, write_config
from tests.proxy import Proxy
from tests.waiting import Lines, wait_until

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def count(engine: Engine, *where: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count(ProbeRow.id)).where(*where)).scalar_one())


def test_tick_probes_each_target_once_per_interval(
    sim: SimClient, engine: Engine, make_daemon: Any
) -> None:
    daemon = make_daemon(engine, {"name": "a", "interval": "1m"}, {"name": "b", "interval": "2m"})
    assert daemon.tick(T0) == 2
    assert daemon.tick(T0 + timedelta(seconds=30)) == 0
    assert daemon.tick(T0 + timedelta(seconds=60)) == 1  # a only
    assert daemon.tick(T0 + timedelta(seconds=120)) == 2
    assert count(engine) == 5


def test_after_a_429_the_target_waits_for_retry_after(
    sim: SimClient, engine: Engine, make_daemon: Any
) -> None:
    daemon = make_daemon(engine, {"name": "limited", "model": "sim-429", "interval": "1s",
                                  "timeout": "1s"})
    assert daemon.tick(T0) == 1
    assert count(engine, ProbeRow.error_kind == ErrorKind.RATE_LIMITED.value) == 1
    # The simulator's retry-after is at least a second; every slot inside it is skipped.
    assert daemon.tick(T0 + timedelta(milliseconds=999)) == 0
    assert daemon.tick(T0 + timedelta(seconds=120)) == 1


def test_a_database_outage_spools_and_drains_without_loss_or_duplicates(
    sim: SimClient, make_daemon: Any, postgres_through_proxy: tuple[str, Proxy]
) -> None:
    url, proxy = postgres_through_proxy
    engine = db.open_store(url)
    daemon = make_daemon(engine, {"name": "a", "interval": "1m"}, {"name": "b", "interval": "1m"})
    assert daemon.tick(T0) == 2
    proxy.cut()
    for minute in range(1, 4):
        assert daemon.tick(T0 + timedelta(minutes=minute)) == 2
    assert daemon.spool.backlog() == 6
    proxy.restore()
    assert daemon.drain() == 6
    assert daemon.spool.backlog() == 0
    assert count(engine) == 8
    daemon.tick(T0 + timedelta(minutes=4))  # and new results go straight to the database again
    assert count(engine) == 10
    engine.dispose()


def test_run_starts_while_the_database_is_down_and_stores_everything_once_it_is_back(
    tmp_path: Path, sim_server: Simulator, sim: SimClient,
    postgres_through_proxy: tuple[str, Proxy],
) -> None:
    url, proxy = postgres_through_proxy
    db.upgrade(url)
    proxy.cut()
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1s", "timeout": "1s"}],
        url,
    )
    run = start(config)
    try:
        run.wait_for("probing anyway and spooling")
        run.wait_for(" ok ")
        run.wait_for(" ok ")  # a second probe spooled as well
        proxy.restore()
        run.wait_for("wrote")  # "database is back: wrote N spooled probes"
    finally:
        assert run.stop() == 0
    sent = sim.stats()["by_path"]["/v1/chat/completions"]
    engine = db.open_store(url)
    with engine.connect() as connection:
        assert count(engine) == sent
        assert connection.execute(select(func.count(func.distinct(ProbeRow.uid)))).scalar() == sent
        # The target's configuration was registered when the database came back, not lost.
        configs = connection.execute(select(TargetConfigRow.config)).scalars().all()
    engine.dispose()
    assert [c["model"] for c in configs] == ["gpt-4o"]


def test_slots_skipped_while_the_database_is_down_are_recorded_when_it_is_back(
    sim: SimClient, make_daemon: Any, postgres_through_proxy: tuple[str, Proxy]
) -> None:
    url, proxy = postgres_through_proxy
    engine = db.open_store(url)
    daemon = make_daemon(engine, {"name": "a", "interval": "10s", "timeout": "5s"})
    daemon.tick(T0)
    proxy.cut()
    sim.enqueue({"fault": "rate_limited"})  # retry-after: the window's end, about 60 s away
    daemon.tick(T0 + timedelta(minutes=1))
    for seconds in (10, 20):  # two slots come while backing off
        assert daemon.tick(T0 + timedelta(minutes=1, seconds=seconds)) == 0
    proxy.restore()
    daemon.drain()
    with engine.connect() as connection:
        skipped = connection.execute(
            select(SlotRow.reason_kind, SlotRow.reason).where(SlotRow.state == "skipped")).all()
    engine.dispose()
    assert len(skipped) == 2  # the slots whose time came, not the whole backoff
    assert all(kind == "rate_limited" and reason.startswith("rate limited: HTTP 429")
               for kind, reason in skipped)


@pytest.fixture
def run_config(tmp_path: Path, sim_server: Simulator, database_url: str) -> Path:
    return write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1s", "timeout": "1s"}],
        database_url,
    )


@dataclass
class Run:
    """`monitor run` as a child process, its log (stderr) read on a thread."""

    process: subprocess.Popen[str]
    log: Lines

    def wait_for(self, needle: str) -> str:
        """The next log line containing `needle`; fails if the child exits or goes quiet."""
        return self.log.wait_for(needle)

    def stop(self, *, signal_it: bool = True) -> int:
        """SIGTERM (unless it already had one), wait for the exit, read the log to its end."""
        if signal_it and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.log.close()

    def kill(self) -> None:
        """SIGKILL: no goodbye."""
        self.process.kill()
        self.process.wait(timeout=30)
        self.log.close()


def start(config: Path, *args: str, spool: str = "spool.jsonl") -> Run:
    """`monitor run` on `config`, spooling to `spool` beside it (each instance needs its own)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(config),
         "--spool", str(config.parent / spool), *args],
        stderr=subprocess.PIPE, text=True, cwd=config.parent,
    )
    assert process.stderr is not None
    return Run(process, Lines(process.stderr))


def in_flight(sim: SimClient) -> int:
    """Requests the simulator has received and not yet answered: a probe is mid-flight."""
    return int(sim.stats()["in_flight"])


def probed_slots(engine: Engine, targets: int, after: datetime | None = None) -> int:
    """The fewest probed slots (since `after`) of any of the `targets` targets."""
    query = (select(SlotRow.target_id, func.count()).where(SlotRow.state == "probed")
             .group_by(SlotRow.target_id))
    if after is not None:
        query = query.where(SlotRow.slot_at > after)
    with engine.connect() as connection:
        counts = dict(connection.execute(query).all())
    return min(counts.values()) if len(counts) == targets else 0


def stored(database_url: str) -> int:
    engine = db.open_store(database_url)
    try:
        return count(engine)
    finally:
        engine.dispose()


def test_run_once_probes_and_exits(sim: SimClient, run_config: Path, database_url: str) -> None:
    run = start(run_config, "--once", "--log-format", "json")
    assert run.stop(signal_it=False) == 0
    lines = [json.loads(line) for line in run.log.text().splitlines()]
    assert any(line["message"].startswith("a ") and " ok " in line["message"] for line in lines)
    assert stored(database_url) == 1


def test_sigterm_lets_the_probe_in_flight_finish(
    sim: SimClient, tmp_path: Path, sim_server: Simulator, database_url: str
) -> None:
    # The first probe is answered after 2 s: time for the signal to land while it is in flight
    # (seen in the simulator), with as much again to spare before the 4 s timeout.
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "4s", "timeout": "4s"}],
        database_url,
    )
    sim.enqueue({"latency_ms": 2000})
    run = start(config)
    try:
        run.wait_for("running: 1 targets")
        wait_until(lambda: in_flight(sim), "the first probe to be in flight")
        run.process.send_signal(signal.SIGTERM)
        run.wait_for("finishing in-flight probes")
        finished = run.wait_for("a  ok")  # after the signal, not cut off
        assert "200" in finished
        run.wait_for("stopped")
    finally:
        assert run.stop(signal_it=False) == 0
    # Every probe sent was answered and stored, the one in flight at the signal included.
    assert stored(database_url) == sim.stats()["by_path"]["/v1/chat/completions"] >= 1
    assert "Traceback" not in run.log.text()


def test_sighup_reloads_and_an_invalid_config_is_refused(
    sim: SimClient, run_config: Path, sim_server: Simulator, database_url: str
) -> None:
    run = start(run_config)
    try:
        run.wait_for("running: 1 targets")
        good = run_config.read_text() + (
            f'\n[[targets]]\nname = "b"\nprovider = "openai-compatible"\n'
            f'base_url = "{sim_server.url}/v1"\nmodel = "gpt-4o-mini"\ninterval = "1s"\n'
            'timeout = "1s"\n'
        )
        run_config.write_text(good)
        run.process.send_signal(signal.SIGHUP)
        run.wait_for("reloaded: 2 targets (1 added, 0 removed, 0 changed)")
        run.wait_for("b ")  # the new target is probed
        run_config.write_text(good.replace('interval = "1s"', "interval = 1", 1))
        run.process.send_signal(signal.SIGHUP)
        line = run.wait_for("reload refused")
        assert "targets[0].interval" in line
        run.wait_for("a ")  # still probing with the old config
    finally:
        assert run.stop() == 0


def test_a_second_instance_on_the_same_sqlite_file_is_refused(
    sim: SimClient, tmp_path: Path, sim_server: Simulator
) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    db.upgrade(url)
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1m"}],
        url,
    )
    first = start(config)
    try:
        first.wait_for("running: 1 targets")
        second = start(config, spool="second-spool.jsonl")
        assert second.stop(signal_it=False) == 1
        assert "another `monitor run` is already using" in second.log.text()
    finally:
        assert first.stop() == 0


def test_a_second_instance_on_the_same_spool_is_refused(
    sim: SimClient, tmp_path: Path, sim_server: Simulator, postgres_url: str
) -> None:
    """Two processes draining one spool file would each delete lines the other had not yet
    stored; PostgreSQL takes several instances, so only the spool's own lock stops this."""
    empty_postgres(postgres_url)
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1m"}],
        postgres_url,
    )
    first = start(config, "--workers", "2")
    try:
        first.wait_for("running:")
        second = start(config, "--once")
        assert second.stop(signal_it=False) == 1
        assert (f"another monitor process is spooling to {tmp_path / 'spool.jsonl'}"
                in second.log.text())
        third = start(config, "--once", spool="third-spool.jsonl")
        assert third.stop(signal_it=False) == 0
    finally:
        assert first.stop() == 0


def test_status_reports_history_and_last_probes(
    sim: SimClient, run_config: Path, database_url: str
) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["probe", "-c", str(run_config)]).exit_code == 0
    result = runner.invoke(cli, ["status", "--json", "-c", str(run_config),
                                 "--spool", str(run_config.parent / "spool.jsonl")])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["probes"] == 1 and status["targets"] == 1
    assert status["schema_revision"] == db.head_revision()
    assert status["last_probes"][0]["target"] == "a" and status["last_probes"][0]["ok"]
    assert status["spool_backlog"] == 0
    text = runner.invoke(cli, ["status", "-c", str(run_config)]).output
    assert "1 probes of 1 targets" in text


@pytest.mark.parametrize("instances", [2, 3])
def test_several_instances_on_postgresql_probe_each_slot_exactly_once(
    sim: SimClient, tmp_path: Path, sim_server: Simulator, postgres_url: str, instances: int
) -> None:
    empty_postgres(postgres_url)
    config = write_config(
        tmp_path / "monitor.toml",
        [{"name": name, "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
          "model": "gpt-4o", "interval": "1s", "timeout": "1s"} for name in ("a", "b")],
        postgres_url,
    )
    engine = db.open_store(postgres_url)
    try:
        runs = [start(config, spool=f"spool{index}.jsonl") for index in range(instances)]
        try:
            for run in runs:
                run.wait_for("running: 2 targets")
            wait_until(lambda: probed_slots(engine, 2) >= 3, "3 probed slots of each target")
            killed_at = datetime.now(UTC)
            runs[0].kill()  # SIGKILL: no goodbye; the others must cover its slots
            wait_until(lambda: probed_slots(engine, 2, after=killed_at) >= 3,
                       "3 slots of each target probed by the instances left")
        finally:
            codes = [run.stop() for run in runs[1:]]
            if runs[0].process.poll() is None:
                runs[0].kill()
        assert codes == [0] * (instances - 1)
        with engine.connect() as connection:
            slots = connection.execute(
                select(SlotRow.target_id, SlotRow.slot_at, SlotRow.state, SlotRow.probe_uid)
                .order_by(SlotRow.target_id, SlotRow.slot_at)
            ).all()
            probes = connection.execute(select(ProbeRow.uid)).scalars().all()
    finally:
        engine.dispose()
    probed = [s for s in slots if s.state == "probed"]
    # Every probe belongs to exactly one slot, and every slot was probed at most once.
    assert sorted(s.probe_uid for s in probed) == sorted(probes)
    assert len({(s.target_id, s.slot_at) for s in slots}) == len(slots)
    # All instances claim on one grid: each target's slots are whole seconds apart. (Exactly
    # one second apart only if no scheduler ever ran a slot late: a question for
    # bench/daemon_load.py on a quiet machine, not for a test on a busy one.)
    for target_id in {s.target_id for s in slots}:
        times = [s.slot_at for s in slots if s.target_id == target_id]
        assert len(times) >= 6
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= timedelta(seconds=1) and gap % timedelta(seconds=1) == timedelta(0)
                   for gap in gaps), (target_id, times)


def test_sigkill_then_restart_leaves_a_consistent_database(
    sim: SimClient, run_config: Path, database_url: str
) -> None:
    first = start(run_config)
    try:
        first.wait_for("a  ok")
        # The next probe is answered after 0.9 s: killed while it is surely in flight.
        sim.enqueue({"latency_ms": 900})
        wait_until(lambda: in_flight(sim), "a probe in flight")
    finally:
        first.kill()
    before = stored(database_url)
    engine = db.open_store(database_url)
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    engine.dispose()
    second = start(run_config)  # the SQLite instance lock died with the first process
    try:
        second.wait_for("running: 1 targets")
        second.wait_for("a  ok")
    finally:
        assert second.stop() == 0
    assert stored(database_url) > before


@pytest.mark.parametrize(
    ("budget", "reason"),
    [
        pytest.param({"daily_request_budget": 2}, "daily request budget spent (2 of 2", id="requests"),
        pytest.param({"daily_token_budget": 20}, "daily token budget spent (", id="tokens"),
    ],
)
def test_a_spent_daily_budget_skips_slots_until_the_next_utc_day(
    sim: SimClient, engine: Engine, make_daemon: Any, budget: dict[str, int], reason: str
) -> None:
    daemon = make_daemon(engine, {"name": "thrifty", "interval": "1s", "timeout": "1s", **budget})
    sent = [daemon.tick(T0 + timedelta(seconds=s)) for s in range(4)]
    assert sent == [1, 1, 0, 0]  # each canary costs 15 tokens: 2 probes spend 20 tokens too
    with engine.connect() as connection:
        skipped = connection.execute(
            select(SlotRow.reason_kind, SlotRow.reason).where(SlotRow.state == "skipped")).all()
    assert len(skipped) == 2
    assert all(k == "budget_spent" and r.startswith(reason) for k, r in skipped)
    assert daemon.tick(T0 + timedelta(days=1)) == 1


@pytest.mark.parametrize("now", [
    pytest.param(datetime(2019, 3, 1, 0, 0, 0, 123000, tzinfo=UTC), id="past"),
    pytest.param(datetime(2031, 7, 15, 23, 59, 59, 999000, tzinfo=UTC), id="future-midnight"),
])
def test_a_probe_is_stored_at_the_daemons_clock_not_the_wall_clock(
    sim: SimClient, engine: Engine, make_settings: MakeSettings, tmp_path: Path, now: datetime
) -> None:
    """One clock governs a slot, its probe's stored time and the budget day: tick(now), and
    a scheduled probe_target that reads the daemon's clock, both store `now` as started_at."""
    settings = make_settings({"name": "a", "interval": "1m"}, {"name": "b", "interval": "1m"})
    daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"),
                    clock=lambda: now + timedelta(minutes=1))
    daemon.prober.register(settings.targets)
    try:
        assert daemon.tick(now) == 2
        assert daemon.probe_target(settings.targets[0]) is not None  # the next slot, by clock
    finally:
        daemon.close()
    with engine.connect() as connection:
        stored = connection.execute(select(ProbeRow.started_at).order_by(ProbeRow.id)).all()
    assert [row.started_at for row in stored] == [now, now, now + timedelta(minutes=1)]


def test_the_daemon_limits_mallocs_arenas_where_the_c_library_is_glibc() -> None:
    # glibc takes the setting (mallopt says so); elsewhere the call says it did nothing.
    assert limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc")
